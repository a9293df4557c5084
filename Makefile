# The two commands of the README: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test serve install bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch from local disk first, so the project's torch range is already met.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[service,attack,test,export]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

serve: $(STAMP)
	$(VENV)/bin/lbdn serve

bench: $(STAMP)
	$(PY) bench/layers.py

clean:
	rm -rf $(VENV) .pytest_cache
