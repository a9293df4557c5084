"""The `lbdn` client commands against a real service (`lbdn api` + a Celery worker), run as the user
runs them: `python -m api.cli <command>` subprocesses talking HTTP to LBDN_URL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def lbdn(url: str, *args: str, tty: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `lbdn ARGS` against `url`. tty=True makes rich draw as on a terminal (its documented
    TTY_COMPATIBLE / TTY_INTERACTIVE switches), so the live progress bar is in the output."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=client_env(url, tty),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def client_env(url: str, tty: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBDN_")}
    env.update(LBDN_URL=url, COLUMNS="160", PYTHONUNBUFFERED="1")
    if tty:
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    return env


def test_client_imports_no_server_code() -> None:
    code = (
        "import sys\n"
        "import client, client.cli, client.http, client.flags, client.follow, client.render, client.report\n"
        "bad = [m for m in ('api', 'worker', 'core', 'fastapi', 'starlette', 'sqlalchemy', 'celery', 'torch', 'numpy')\n"
        "       if m in sys.modules]\n"
        "bad += [m for m in sys.modules if m.startswith('lipcore.') and m != 'lipcore.spec'\n"
        "        and not m.startswith('lipcore.catalog')]  # the torch-free catalog builds the flags\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


SUBMIT_ARGVS = [
    [],
    [
        "--model",
        "Toy",
        "--gamma",
        "5",
        "--layer",
        "Sandwich",
        "--scale",
        "small",
        "--dataset",
        "square_wave",
        "--epochs",
        "200",
    ],
    [
        "--model",
        "KWL",
        "--layer",
        "Sandwich",
        "--scale",
        "small",
        "--gamma",
        "1",
        "--dataset",
        "cifar10",
        "--loss",
        "multimargin",
    ],
    ["-m", "KWL", "--layer", "Plain", "-d", "cifar100", "--loss", "xent", "-e", "3", "-s", "7", "--lr", "0.05"],
    ["--model", "DNN", "--dataset", "cifar100", "--cert_acc", "--seed", "43"],
    [
        "--model",
        "Resnet",
        "--layer",
        "SLL",
        "--scale",
        "small",
        "--LLN",
        "--normalized",
        "--train_batch_size",
        "64",
        "--test_batch_size",
        "32",
        "-g",
        "2",
        "-d",
        "tiny_imagenet",
    ],
    ["--model", "KWL", "--dataset", "image_folder", "--data_path", "mine", "--layer", "Aol", "--gamma", "10"],
]


@pytest.mark.parametrize("argv", SUBMIT_ARGVS, ids=lambda a: " ".join(a[:4]) or "defaults")
def test_submit_flags_build_the_spec_python_m_lipcore_builds(argv: list[str]) -> None:
    """The client's experiment flags are generated from the spec as lipcore's are: the same
    command line must give the same ExperimentSpec as `python -m lipcore`."""
    from client import flags
    from client.cli import parser as client_parser
    from lipcore.cli import parser as lipcore_parser
    from lipcore.cli import spec_from_args
    from lipcore.spec import ExperimentSpec

    ours = client_parser().parse_args(["submit", *argv])
    theirs = lipcore_parser().parse_args(argv)
    assert ExperimentSpec(**flags.spec_fields(ours)) == spec_from_args(theirs)


def test_submit_flags_are_lipcores_flags() -> None:
    """Every flag of `python -m lipcore` that feeds the spec exists in the client with the same
    names and default (the machine-local ones, e.g. --device, have no meaning for a server job)."""
    import argparse

    from client.flags import add_spec_flags
    from lipcore.cli import parser as lipcore_parser

    local = {
        "mode",
        "root_dir",
        "num_workers",
        "data_dir",
        "device",
        "resume",
        "download",
        "checkpoint_every",
        "lip_restarts",
        "threads",
        "attack_version",
        "attacks",
        "n_examples",
        "eps",
        "help",
    }
    ours = argparse.ArgumentParser(add_help=False)
    add_spec_flags(ours)
    mine = {a.dest: a for a in ours._actions}
    for action in lipcore_parser()._actions:
        if action.dest in local:
            continue
        assert action.dest in mine, f"lbdn submit lacks {action.option_strings}"
        assert mine[action.dest].option_strings == action.option_strings
        assert mine[action.dest].default == action.default, action.dest
        assert type(mine[action.dest]) is type(action), action.dest
    assert set(mine) - {a.dest for a in lipcore_parser()._actions} == set()


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_output(proc: subprocess.Popen, path: Path, needle: str, timeout: float = 300) -> str:
    def text_if_seen() -> str | None:
        text = path.read_text(errors="replace")
        if needle in text:
            return text
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{text[-3000:]}"
        return None

    return wait_until(repr(needle), text_if_seen, bound=timeout, every=0.2, details=lambda: path.read_text()[-3000:])


@pytest.mark.slow
def test_every_client_command_against_a_real_service(service_factory, tmp_path: Path) -> None:
    svc = service_factory("embedded", "sqlite", lipschitz_restarts=2)
    svc.worker()
    url = svc.url

    # submit --follow: a live progress bar, then the summary of the finished job
    r = lbdn(
        url,
        "submit",
        "--model",
        "Toy",
        "--layer",
        "Sandwich",
        "--gamma",
        "1",
        "--dataset",
        "square_wave",
        "--epochs",
        "4",
        "--follow",
        tty=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    job = re.search(r"job_[0-9a-f]+", r.stdout).group(0)
    assert "━" in r.stdout and "epoch" in r.stdout and "ETA" in r.stdout  # rich's bar and our columns
    assert f"job {job} succeeded" in r.stdout and "Lipschitz bound gamma=1" in r.stdout and "tightness" in r.stdout

    # jobs, show, logs, pull (text and --json)
    listed = json.loads(lbdn(url, "jobs", "--json").stdout)
    assert [j["id"] for j in listed] == [job] and listed[0]["status"] == "succeeded"
    assert job in lbdn(url, "jobs", "--status", "succeeded").stdout
    assert lbdn(url, "jobs", "--status", "running").stdout.strip() == "no jobs"
    shown = lbdn(url, "show", job)
    assert shown.returncode == 0 and "test loss" in shown.stdout and "certify inputs: lbdn certify" in shown.stdout
    assert json.loads(lbdn(url, "--json", "show", job).stdout)["result"]["epochs"] == 4
    logs = lbdn(url, "logs", job)
    assert logs.returncode == 0 and "epoch" in logs.stdout.lower()
    assert lbdn(url, "logs", job, "-f").stdout == logs.stdout  # a finished job: -f ends by itself
    out = tmp_path / "pulled"
    pulled = lbdn(url, "pull", job, "--dir", str(out))
    assert pulled.returncode == 0, pulled.stderr
    assert {"model.safetensors", "spec.json", "metrics.json", "summary.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "spec.json").read_text())["model"] == "Toy"
    assert job in lbdn(url, "models").stdout

    # certify: the table of file, output, margin, certified and attacked radius (the Toy: x's own units)
    inputs = tmp_path / "points.npy"
    np.save(inputs, np.array([[0.3], [-1.2]], dtype=np.float32))
    cert = lbdn(url, "certify", job, str(inputs), "--attack")
    assert cert.returncode == 0, cert.stderr
    for header in ("file", "output f(x)", "margin", "certified radius (in x)", "attacked radius (in x)"):
        assert header in cert.stdout
    assert "points.npy[0]" in cert.stdout and "points.npy[1]" in cert.stdout
    answer = json.loads(lbdn(url, "certify", job, str(inputs), "--json").stdout)
    assert len(answer["results"]) == 2 and answer["lipschitz_bound"]["gamma"] == 1.0

    # a spec file, with an idempotency key: the retry answers the same job
    spec = tmp_path / "spec.json"
    # long enough never to end by itself: the test cancels it (and never depends on the machine's speed)
    spec.write_text(json.dumps({"model": "Toy", "layer": "Aol", "gamma": 2.0, "epochs": 100_000}))
    first = json.loads(lbdn(url, "submit", str(spec), "--idempotency-key", "k1", "--json").stdout)
    again = json.loads(lbdn(url, "submit", str(spec), "--idempotency-key", "k1", "--json").stdout)
    assert first["id"] == again["id"] and first["spec"]["layer"] == "Aol"

    # Ctrl-C detaches from --follow without cancelling the job
    log = tmp_path / "follow.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "submit", str(spec), "--idempotency-key", "k1", "--follow"],
            env=client_env(url, tty=True),
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            # as at a terminal: a test suite started in the background (`cmd &`, nohup) inherits
            # SIGINT ignored, and Python keeps an inherited SIG_IGN, so Ctrl-C would never arrive
            preexec_fn=_sigint_default,
        )
        _wait_output(proc, log, "/100000 ")  # the bar is live
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    assert "detached" in log.read_text()
    state = json.loads(lbdn(url, "show", first["id"], "--json").stdout)
    assert state["status"] == "running" and not state["cancel_requested"]

    # logs -f of the running job prints lines as they come and ends by itself once it is cancelled
    tail_log = tmp_path / "tail.log"
    with tail_log.open("w") as f:
        tail = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "logs", first["id"], "-f"],
            env=client_env(url),
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        _wait_output(tail, tail_log, "Epoch")

        # cancel, then problem+json as exit codes: 409 -> 4, 404 -> 3, 422 -> 2, unreachable -> 6
        cancelled = lbdn(url, "cancel", first["id"])
        assert cancelled.returncode == 0 and first["id"] in cancelled.stdout
        assert tail.wait(timeout=300) == 0
    assert tail_log.read_text().splitlines() == lbdn(url, "logs", first["id"]).stdout.splitlines()
    wait_until(
        "the cancelled job stopped",
        lambda: json.loads(lbdn(url, "show", first["id"], "--json").stdout)["status"] == "cancelled",
        every=0.5,
    )
    again = lbdn(url, "cancel", first["id"])
    assert again.returncode == 4 and "409 Conflict" in again.stderr and "nothing to cancel" in again.stderr
    bad = lbdn(url, "submit", "--model", "Toy", "--layer", "Aol", "--gamma", "-1")
    assert bad.returncode == 2 and "422" in bad.stderr and "spec.gamma" in bad.stderr
    problem = json.loads(lbdn(url, "submit", "--model", "KWL", "--layer", "SLL", "--json").stdout)
    assert problem["status"] == 422 and "layer 'SLL' is not defined for model KWL" in problem["detail"]
    toy_eval = lbdn(url, "evaluate", job)
    assert toy_eval.returncode == 2 and "no classes to attack" in toy_eval.stderr
    mixed = lbdn(url, "submit", str(spec), "--model", "KWL")
    assert mixed.returncode == 2 and "not both" in mixed.stderr
    assert lbdn(url, "delete", first["id"]).returncode == 0
    gone = lbdn(url, "show", first["id"])
    assert gone.returncode == 3 and "404 Not Found" in gone.stderr
    assert lbdn("http://127.0.0.1:9", "jobs").returncode == 6

    # API keys: LBDN_API_KEY is sent as a bearer token; without it a keyed server answers 401 -> 5
    made = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "--tenant", "acme"],
        env=svc.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    secret = made.stdout.strip().splitlines()[-1]
    refused = lbdn(url, "jobs")
    assert refused.returncode == 5 and "401" in refused.stderr and "API key" in refused.stderr
    keyed = subprocess.run(
        [sys.executable, "-m", "api.cli", "jobs", "--json"],
        env={**client_env(url), "LBDN_API_KEY": secret},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert keyed.returncode == 0 and json.loads(keyed.stdout) == []  # tenant acme has no jobs yet
