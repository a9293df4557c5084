"""lipcore stays a library: torch, einops and numpy only; no web or service packages."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("fastapi", "starlette", "celery", "sqlalchemy", "uvicorn", "redis", "api", "worker", "kombu")


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
