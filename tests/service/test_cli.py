"""The `lbdn` command: `serve` brings up API + worker with zero set-up and stops both on Ctrl-C;
keys; the refusal to listen beyond loopback without a key."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.waiting import wait_until


def lbdn(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
    env.update(LBDN_HOME=str(tmp_path / "var"), LBDN_DATA_DIR=str(tmp_path / "data"), LBDN_LIPSCHITZ_RESTARTS="0")
    return env


def test_keys_and_loopback_rule(tmp_path):
    env = _env(tmp_path)
    refused = lbdn(env, "api", "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode != 0 and "no API key exists" in refused.stderr
    created = lbdn(env, "keys", "create", "--tenant", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"created (key_\w+)", created.stdout).group(1)
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("lbdn_")
    listed = lbdn(env, "keys", "list").stdout
    assert key_id in listed and "tenant=acme" in listed and secret not in listed
    assert lbdn(env, "keys", "revoke", key_id).returncode == 0
    assert "revoked" in lbdn(env, "keys", "list").stdout
    assert lbdn(env, "keys", "revoke", key_id).returncode != 0
    bad = lbdn({**env, "LBDN_ENV": "production"}, "keys", "list")
    assert bad.returncode != 0 and "LBDN_DATABASE_URL" in bad.stderr


@pytest.mark.slow
def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def test_serve_runs_a_job_and_stops_on_ctrl_c(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        env=_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=url, timeout=30)
        wait_until("lbdn serve ready", lambda: _ready(client), every=0.2)
        job = client.post(
            "/v1/jobs", json={"kind": "train", "spec": {"model": "Toy", "layer": "Sandwich", "epochs": 1}}
        ).json()

        def finished() -> str | None:
            status = client.get(f"/v1/jobs/{job['id']}").json()["status"]
            return None if status in ("queued", "running") else status

        assert wait_until("the job finished", finished, every=0.2) == "succeeded"
        assert (tmp_path / "var" / "jobs" / job["id"] / "model.safetensors").is_file()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=300)  # the worker's warm shutdown takes 5-7 s on an idle machine
        log.seek(0)
        out = log.read()
    assert f"http://127.0.0.1:{port}" in out and "lbdn: stopped" in out
    worker_pid = int(re.search(r"worker pid (\d+)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # the worker is gone too
