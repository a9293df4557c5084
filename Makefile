# The two commands of the README: `make serve` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-fast lint serve install bench clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch from local disk first, so the project's torch range is already met.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[service,attack,test,export]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard's browser test drives Debian's chromium + chromium-driver (never a downloaded
# browser). CI runs as root on a fresh machine, so it installs them here; elsewhere, without root,
# the test is skipped with a message (and fails when CI is set).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "make: chromium/chromium-driver missing (install: apt-get install chromium chromium-driver); the browser test will skip"; fi

# ruff (lint + format) and mypy (strict on api, worker, core; see pyproject.toml): seconds, run first
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

# Two pytest workers: the service tests wait on processes and events much of the time, so the two
# cores stay busy. One torch thread per process (OpenMP threads of two processes spin against each
# other on two cores). --dist loadgroup takes the scheduler of tests/conftest.py: a file's tests are
# one unit of work, run on one worker in order, so module fixtures (a trained run shared by its
# tests) are made once, as with loadfile; only test_cli's paper-command tests (one per distinct
# experiment, up to minutes each) are units of their own, so both workers share them. conftest.py
# puts those first, costliest first, and --no-loadscope-reorder keeps that order (by default xdist
# sends the units with the most tests first, and these single tests would start last).
# --durations: CI's log shows where the time goes.
test: $(STAMP) browser lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=30

# The edit loop: the library's tests without servers or long runs (about 2 minutes here).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not service"

serve: $(STAMP)
	$(VENV)/bin/lbdn serve

bench: $(STAMP)
	$(PY) bench/layers.py

clean:
	rm -rf $(VENV) .pytest_cache
