"""What makes the service tests cheaper without changing what they check: settings every test's
services get (make_settings), and one app per artifact backend shared by a module's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

QUICK: dict[str, Any] = dict(
    # Certify processes at the API's own priority. Niced (the production default, which
    # test_certify_pool checks), under `make test` they get a tenth of a core against the other
    # xdist worker's training, and each test waited on their spawn (a torch import), answer and
    # exit: test_certify_crafted_api's first test took 105 s + 173 s teardown niced, 20 s + 4 s
    # not, side by side on a loaded machine.
    certify_nice=0,
    # `auto` counts GPUs in a child process that imports torch (1.5 s of CPU) at every worker
    # start; here it finds none and means `cpu` (test_devices checks `auto` itself).
    worker_devices="cpu",
)


@pytest.fixture(scope="module")
def module_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, dict[str, str]], Any]]:
    """module_apps(backend, overrides) -> a TestClient of the real app (lifespan included), made on
    the module's first call for that artifact backend and shared by its later tests (closed after
    the module): its certify process is spawned once, not once per test."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from tests.service.conftest import make_settings

    clients: dict[str, Any] = {}
    with ExitStack() as stack:

        def get(backend: str, overrides: dict[str, str]) -> Any:
            if backend not in clients:
                settings = make_settings(tmp_path_factory.mktemp(f"app-{backend}"), **overrides)
                clients[backend] = stack.enter_context(TestClient(create_app(settings)))
            return clients[backend]

        yield get


@pytest.fixture
def shared_client(module_apps, artifact_backend: str, backend_overrides: dict[str, str]) -> Any:
    """`client` for tests that need no store of their own (they look up only what they made):
    the module's app on this test's artifact backend, no worker consuming its queue."""
    return module_apps(artifact_backend, backend_overrides)
