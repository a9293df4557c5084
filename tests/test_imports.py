"""lipcore stays a library: torch, einops and numpy only; no web or service packages. Inside it, no
import cycle, the layers import nothing above them, and the description layer (lipcore.catalog)
imports no torch. The service's packages depend one way: `api` and `worker` on `core`, `core` on
neither (and of lipcore only on the torch-free catalog and the few entry points named below)."""

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


# the torch-free descriptions of experiments (lipcore.catalog: the spec, model cards, presets);
# core.submit (the one submission path) also resolves image folders and estimates a spec's memory:
# each imported inside the function that needs it
CORE_MAY_USE = (
    "lipcore.spec",
    "lipcore.catalog",
    "lipcore.catalog.presets",
    "lipcore.data",
    "lipcore.data.image_folder",
    "lipcore.data.download",  # the known datasets' folders and URLs, for a missing-data message
    "lipcore.cost",
)


def test_core_imports_neither_api_nor_worker_and_of_lipcore_only_descriptions() -> None:
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
        "       or (m.startswith('lipcore.') and m != 'lipcore.spec' and not m.startswith('lipcore.catalog'))]\n"
        "assert not bad, sorted(bad)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---- inside lipcore: the import graph ---------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _lipcore_graph() -> dict[str, set[str]]:
    """module -> the lipcore modules it imports, at the top or inside functions. `from a import b`
    is an edge to the module a.b when there is one (else to a); `import a.b` is an edge to a.b only
    (its parents' __init__ run too, but they are the parents' own edges)."""
    files = {_module_name(p): p for p in sorted((ROOT / "lipcore").rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_lipcore() -> None:
    graph = _lipcore_graph()
    assert "lipcore.catalog.spec" in graph["lipcore.spec"]  # the graph sees imports at all
    cycles = _cycles(graph)
    assert not cycles, "import cycles (each a set of modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


# Modules above the layers: what builds, trains, certifies, exports or loads whole networks.
ABOVE_LAYERS = (
    "lipcore.models",
    "lipcore.export",
    "lipcore.export_check",
    "lipcore.checkpoint",
    "lipcore.paper_checkpoint",
    "lipcore.certify",
    "lipcore.attack",
    "lipcore.train",
    "lipcore.evaluate",
    "lipcore.distributed",
    "lipcore.data",
    "lipcore.cli",
)


def _is_under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_layers_import_nothing_above_them() -> None:
    graph = _lipcore_graph()
    bad = sorted(
        (m, t)
        for m, targets in graph.items()
        if _is_under(m, ("lipcore.layers",))
        for t in targets
        if _is_under(t, ABOVE_LAYERS)
    )
    assert not bad, bad


def test_the_catalog_imports_only_itself_pydantic_and_the_standard_library() -> None:
    allowed = {"pydantic", "pydantic_core", "lipcore", "__future__"}
    bad = [
        (f, line, m)
        for f, line, m in _imports("lipcore/catalog")
        if _top(m) not in allowed | set(sys.stdlib_module_names)
        or (_top(m) == "lipcore" and not _is_under(m, ("lipcore.catalog",)))
    ]
    assert not bad, bad


def test_importing_the_catalog_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "import lipcore.catalog, lipcore.catalog.flags, lipcore.catalog.presets, lipcore.spec\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'einops')\n"
        "       or (m.startswith('lipcore.') and m != 'lipcore.spec' and not m.startswith('lipcore.catalog'))]\n"
        "assert not bad, sorted(bad)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
