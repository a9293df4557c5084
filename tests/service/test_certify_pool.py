"""Certify runs in processes of its own (api.certify_pool): niced, replaced when one dies, gone with
the API. Real processes, real signals; every wait is on an event (a pid gone, a request answered)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.service.conftest import make_settings, save_trained_model, settings_env
from tests.waiting import wait_until

TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "epochs": 1}
ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


PRODUCTION_NICE = Settings.model_fields["certify_nice"].default


@pytest.fixture
def settings(tmp_path: Path, backend_overrides: dict[str, str]) -> Settings:
    """The `client` of this file runs certify processes at the production nice (the other service
    tests run them at the API's priority, see make_settings)."""
    return make_settings(tmp_path, **backend_overrides, certify_nice=PRODUCTION_NICE)


def test_certify_processes_are_niced_and_replaced_when_killed(client, trained_model):
    model = trained_model(client.app, "local", TOY)
    body = {"inputs": [[0.5], [-1.0]], "scale": "model"}
    first = client.post(f"/v1/models/{model}/certify", json=body)
    assert first.status_code == 200, first.text
    pool = client.app.state.services.certify_pool
    assert pool.nice == PRODUCTION_NICE > 0
    pids = set(pool._executor._processes)
    assert 1 <= len(pids) <= client.app.state.services.settings.certify_concurrency  # started on demand
    for pid in pids:
        assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + pool.nice

    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would
    wait_until("the killed certify process reaped", lambda: not _alive(victim))
    again = client.post(f"/v1/models/{model}/certify", json=body)
    assert again.status_code == 200, again.text  # replaced, and the request tried once more
    assert again.json()["results"] == first.json()["results"]
    assert victim not in set(pool._executor._processes)


def test_certify_processes_exit_with_the_api_even_on_kill9(tmp_path):
    settings = make_settings(tmp_path)
    env = settings_env(settings)
    # a trained Toy model in the store the API will serve
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings)) as c:
        model = save_trained_model(c.app, "local", TOY)
    log = tmp_path / "api.log"
    with log.open("ab") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_until("the API's address in its log", lambda: _listening(log))
        r = wait_until(
            "a certificate", lambda: _post(f"{url}/v1/models/{model}/certify", {"inputs": [[0.5]], "scale": "model"})
        )
        assert r.status_code == 200, r.text
        pool = wait_until("the certify processes", lambda: _children(api.pid))
        api.kill()  # SIGKILL: no shutdown code runs; the parent-death signal ends them
        api.wait()
        wait_until("every certify process gone", lambda: not any(_alive(p) for p in pool))
    finally:
        if api.poll() is None:
            api.kill()


def _listening(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "Uvicorn running on http://" in line:
            return line.split("running on ")[1].split()[0]
    return None


def _post(url: str, body: dict) -> httpx.Response | None:
    try:
        return httpx.post(url, json=body, timeout=60)
    except httpx.HTTPError:
        return None
