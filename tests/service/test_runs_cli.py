"""The `lbdn` commands of issue 23 against a real `lbdn api` process (no worker: jobs are finished
through the store as a worker finishes them): labels, jobs filters and sort, the 80-column table in
a pipe, show, compare, pull --csv, sweeps create / results / cancel, and import."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from core.store import jobs, leases, make_engine, session_factory, transaction
from tests.service.test_client import ROOT, client_env, lbdn

TOY = ["--model", "Toy", "--dataset", "square_wave", "--layer", "Sandwich", "--epochs", "3"]


def run(url: str, *args: str) -> str:
    r = lbdn(url, *args)
    assert r.returncode == 0, f"lbdn {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def finish(sessions, job_id: str, result: dict, epochs: list[dict]) -> None:
    with transaction(sessions) as s:
        leases.acquire(s, job_id, "test", 60)
        for row in epochs:
            jobs.record_metrics(s, job_id, row)
        leases.finish(s, job_id, "test", "succeeded", result=result)


def submit(url: str, *args: str) -> str:
    return json.loads(run(url, "--json", "submit", *TOY, *args))["id"]


def test_runs_from_the_command_line(service_factory, tmp_path: Path) -> None:
    svc = service_factory("embedded", "sqlite")
    url = svc.url
    engine = make_engine(svc.settings.db_url)
    sessions = session_factory(engine)
    a = submit(url, "--gamma", "1", "--seed", "1", "--name", "alpha", "--tag", "paper", "--note", "the first")
    b = submit(url, "--gamma", "2", "--seed", "1", "--name", "beta", "--tag", "paper")
    c = submit(url, "--gamma", "2", "--seed", "2")
    epochs = [{"epoch": 1, "train_loss": 0.5, "test_loss": 0.2}, {"epoch": 2, "train_loss": 0.25, "test_loss": 0.1}]
    finish(sessions, a, {"test_loss": 0.1, "tightness": 0.5}, epochs)
    finish(sessions, b, {"test_loss": 0.3, "tightness": 0.9}, epochs[:1])

    # filters and metric sort
    listed = lambda *f: [j["id"] for j in json.loads(run(url, "--json", "jobs", *f))]  # noqa: E731
    assert listed("--tag", "paper") == [b, a]
    assert listed("--gamma", "2") == [c, b]
    assert listed("--name", "ALP") == [a]
    assert listed("--sort=-tightness") == [b, a, c]
    assert listed("--sort", "tightness", "--status", "succeeded") == [a, b]

    # the label command (PATCH)
    out = run(url, "label", c, "--name", "gamma two", "--tag", "Extra")
    assert "name gamma two; tags extra" in out
    assert "name -" in run(url, "label", c, "--clear", "name")

    # 80 columns in a pipe: the id, status and progress columns are whole
    piped = subprocess.run(
        [sys.executable, "-m", "api.cli", "jobs"],
        env={**client_env(url), "COLUMNS": "80"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert max(len(line) for line in piped.splitlines()) <= 80
    for job_id, status in ((a, "succeeded"), (b, "succeeded"), (c, "queued")):
        assert any(job_id in line and status in line for line in piped.splitlines()), piped
    assert "…" not in piped and "..." not in piped

    # show: labels, and the latest epoch as a table (no raw dict)
    shown = run(url, "show", a)
    assert "name: alpha [paper]" in shown and "note: the first" in shown
    assert "train_loss" in shown and "0.2500" in shown and "{" not in shown

    # compare: the spec fields that differ and the final metrics
    table = run(url, "compare", a, b, c)
    header = next(line for line in table.splitlines() if "gamma" in line)
    assert "seed" in header and "tightness" in header and "test_loss" in header and "epochs" not in header
    row_a = next(line for line in table.splitlines() if line.strip().startswith(a))
    assert "0.50" in row_a and "alpha" in row_a

    # pull --csv
    run(url, "pull", a, "--csv", "--dir", str(tmp_path / "pulled"))
    rows = list(csv.DictReader((tmp_path / "pulled" / "metrics.csv").open()))
    assert [r["train_loss"] for r in rows] == ["0.5", "0.25"]

    _sweeps(url)
    _import(url, tmp_path)
    engine.dispose()


def _sweeps(url: str) -> None:
    made = json.loads(
        run(url, "--json", "sweeps", "create", "--set", "model=Toy", "--set", "dataset=square_wave", "--set",
            "layer=Sandwich", "--grid", "gamma=1,2", "--epochs", "2", "--name", "grid", "--tag", "cli")
    )  # fmt: skip
    assert [j["point"]["gamma"] for j in made["jobs"]] == [1.0, 2.0] and made["request"]["epochs"] == 2
    ids = [j["job_id"] for j in made["jobs"]]
    shown = run(url, "sweeps", made["id"])
    assert f"sweep {made['id']} (grid)" in shown and "gamma=1.0" in shown and "queued" in shown
    assert sorted(json.loads(run(url, "--json", "jobs", "--sweep", made["id"], "--tag", "cli")), key=str) != []
    cancelled = json.loads(run(url, "--json", "sweeps", "cancel", made["id"]))
    assert cancelled["status"] == "cancelled", cancelled
    assert {j["status"] for j in json.loads(run(url, "--json", "jobs", "--sweep", made["id"]))} == {"cancelled"}
    assert {j["id"] for j in json.loads(run(url, "--json", "jobs", "--sweep", made["id"]))} == set(ids)
    bad = lbdn(url, "sweeps", "create", "--grid", "gamma=1")
    assert bad.returncode == 2 and "--set FIELD=VALUE" in bad.stderr


def _import(url: str, tmp_path: Path) -> None:
    import torch

    from lipcore.checkpoint import save_model
    from lipcore.models import build
    from lipcore.spec import ExperimentSpec

    spec = {"model": "Toy", "layer": "Sandwich", "gamma": 1.0, "dataset": "square_wave"}
    torch.manual_seed(0)
    es = ExperimentSpec.model_validate(spec)
    save_model(tmp_path / "toy.safetensors", build(es), es)
    out = run(url, "import", str(tmp_path / "toy.safetensors"), "--spec", json.dumps(spec), "--name", "mine")
    model_id = out.split(" as ")[1].split(";")[0]
    job = json.loads(run(url, "--json", "show", model_id))
    assert (job["kind"], job["name"], job["model_id"]) == ("import", "mine", model_id)
    assert job["spec"]["layer"] == "Sandwich" and "epochs" not in job["spec"] and "seed" not in job["spec"]
    shown = run(url, "show", model_id)
    assert "import Toy-Sandwich" in shown and "from toy.safetensors" in shown
    assert "None" not in shown and "100ep" not in shown and "123" not in shown
