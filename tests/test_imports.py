"""lipcore stays a library: torch, einops and numpy only; no web or service packages. The service's
packages depend one way: `api` and `worker` on `core`, `core` on neither (and of lipcore only on the
torch-free spec and model cards)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = (
    "fastapi",
    "starlette",
    "celery",
    "sqlalchemy",
    "uvicorn",
    "redis",
    "api",
    "worker",
    "kombu",
    "core",
    "alembic",
)


def test_lipcore_imports_no_web_library() -> None:
    code = (
        "import sys\n"
        "import lipcore, lipcore.layers, lipcore.models, lipcore.certify, lipcore.attack, lipcore.losses\n"
        "import lipcore.train, lipcore.checkpoint, lipcore.evaluate, lipcore.data, lipcore.cli\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_needs_only_torch_einops_numpy() -> None:
    code = (
        "import sys\n"
        "import lipcore, lipcore.layers, lipcore.models, lipcore.certify\n"
        "third = {m.split('.')[0] for m in sys.modules if not m.startswith('__')}\n"
        "third -= set(sys.stdlib_module_names)\n"
        "extra = third - {'lipcore', 'torch', 'einops', 'numpy', 'typing_extensions', 'sympy', 'mpmath',\n"
        "                 'networkx', 'jinja2', 'markupsafe', 'fsspec', 'filelock', '_distutils_hack',\n"
        "                 'torchgen'}\n"
        "assert not extra, sorted(extra)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the service's arrows: api -> core <- worker, core -> lipcore's descriptions (CORE_MAY_USE) --
ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> list[tuple[str, int, str]]:
    """(file, line, module) for every import in `package`'s sources, lazy ones inside functions too."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(str(path.relative_to(ROOT)), node.lineno, name) for name in names]
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


# the torch-free descriptions of experiments: the schema and the model cards it is derived from
# core.submit / core.sweep_submit (the one submission path) also resolve image folders, estimate a
# spec's memory and expand the paper's presets: each imported inside the function that needs it
CORE_MAY_USE = (
    "lipcore.spec",
    "lipcore.models.cards",
    "lipcore.paper",
    "lipcore.data",
    "lipcore.data.image_folder",
    "lipcore.cost",
)


def test_core_imports_neither_api_nor_worker_and_of_lipcore_only_the_spec() -> None:
    bad = [
        (f, line, m)
        for f, line, m in _imports("core")
        if _top(m) in ("api", "worker", "client") or (_top(m) == "lipcore" and m not in CORE_MAY_USE)
    ]
    assert not bad, bad


def test_worker_imports_no_api_and_api_no_worker() -> None:
    assert not [(f, line, m) for f, line, m in _imports("worker") if _top(m) in ("api", "client")]
    # `lbdn worker` (api/cli.py run_worker) starts the worker's Celery app: the one allowed import
    api_to_worker = [(f, m) for f, _, m in _imports("api") if _top(m) == "worker"]
    assert api_to_worker == [("api/cli.py", "worker.app")], api_to_worker


def test_importing_core_loads_no_torch_api_or_worker() -> None:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("celery")
    pytest.importorskip("alembic")
    code = (
        "import sys\n"
        "import core, core.settings, core.states, core.queue, core.store, core.store.migrate, core.reaper\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('api', 'worker', 'client', 'torch')\n"
        "       or (m.startswith('lipcore.') and m != 'lipcore.spec')]\n"
        "assert not bad, sorted(bad)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
