"""`lbdn paper report` states its budget beside the paper's and marks runs that collapsed, diverged or
stayed at chance instead of printing them as numbers beside the paper's.

The sweep is a real one (`lbdn paper run` against a real service); its jobs are finished in the
service's store the way a worker finishes them (leases.acquire / finish with a training summary),
so the report reads real rows through the real API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.service.test_client import client_env, lbdn


def _finish_jobs(db_url: str, jobs: list[dict], result_of) -> None:
    """Play the worker: take each job's lease and end it succeeded with result_of(spec)."""
    from core.store import leases, make_engine, session_factory, transaction

    engine = make_engine(db_url)
    try:
        factory = session_factory(engine)
        for j in jobs:
            with transaction(factory) as s:
                assert leases.acquire(s, j["job_id"], "test-worker", 60)
                assert leases.finish(s, j["job_id"], "test-worker", "succeeded", result=result_of(j["spec"]))
    finally:
        engine.dispose()


def test_table1_report_states_budget_and_marks_collapsed_runs(service_factory, tmp_path: Path) -> None:
    svc = service_factory("embedded", "sqlite")
    # `paper run --follow` waits while this test plays the worker, then ends with the report's command
    follow = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "paper", "run", "table1", "--epochs", "20", "--follow", "--poll", "0.2"],
        env=client_env(svc.url),
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert follow.stdout is not None
    first = follow.stdout.readline()  # "sweep ID: 12 training jobs of table1": the sweep exists
    sweep = httpx.get(f"{svc.url}/v1/sweeps/{first.split()[1].rstrip(':')}").json()
    assert len(sweep["jobs"]) == 12

    def summary(spec: dict) -> dict:
        # AOL at gamma 5 collapsed to a constant output: its Lipschitz lower bound is 0
        tight = 0.0 if (spec["layer"], spec["gamma"]) == ("Aol", 5.0) else 0.9
        return {"epochs": 20, "gamma": spec["gamma"], "test_loss": 0.1, "tightness": tight, "classes": None}

    _finish_jobs(svc.settings.db_url, sweep["jobs"], summary)
    tail = follow.communicate(timeout=120)[0].strip().splitlines()
    assert follow.returncode == 0, tail
    assert (
        tail[-1]
        == f"sweep {sweep['id']} succeeded (12 succeeded); the report: lbdn paper report table1 --sweep {sweep['id']}"
    )
    out = tmp_path / "report"
    rep = lbdn(svc.url, "paper", "report", "table1", "--out", str(out))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out / "report.md").read_text()
    assert "20 of the paper's 200 epochs, 1 of the paper's 1 seed" in md
    assert "shorter budget than the paper's" in md
    aol = next(line for line in md.splitlines() if line.startswith("| AOL |"))
    assert aol == "| AOL | 90.00 (77.2) | **collapsed** (45.2) | 90.00 (47.9) |", aol
    assert "| 0.00" not in aol  # never a number beside the paper's
    left_out = [line for line in md.splitlines() if line.startswith("- `")]
    assert len(left_out) == 1 and "Toy-Aol-small g=5" in left_out[0] and "**collapsed**" in left_out[0]
    assert rep.stdout.count("collapsed") >= 2  # the terminal shows the same report


def test_flags_of_diverged_and_chance_runs() -> None:
    """The rules the report applies, on records as client.results.runs makes them."""
    from client.results import cell, flag

    def rec(train: dict, spec: dict | None = None) -> dict:
        return {"job_id": "j", "spec": spec or {"num_classes": 10}, "train": train, "history": [], "eval": None}

    assert flag(rec({"test_acc": 55.0})) is None
    assert flag(rec({"test_acc": 10.3})) == "chance accuracy"  # 10 classes: 10 % is a guess
    assert flag(rec({"test_acc": 2.0}, {"num_classes": 100})) is None
    assert flag(rec({"test_loss": float("nan")})) == "diverged"
    assert flag(rec({"tightness": 0.00001, "test_loss": 0.2}, {})) == "collapsed"
    ok, bad = rec({"test_acc": 50.0}), rec({"test_acc": 10.0})
    ok["flag"], bad["flag"] = flag(ok), flag(bad)
    assert cell(50.0, 60.0, [ok, bad]) == "50.0 (60.0)*"  # the mean of the healthy run, marked
    assert cell(None, 60.0, [bad]) == "**chance accuracy** (60.0)"
