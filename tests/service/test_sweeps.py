"""Sweeps (/v1/sweeps) and the paper's presets: validation, the store, and `lbdn paper run/report`
end to end against a real service with tiny fake data in the real formats."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from tests.fakedata import write_cifar10
from tests.service.test_client import lbdn

PNG = b"\x89PNG\r\n\x1a\n"


def test_sweep_requests_are_validated_and_stored(client, add_key) -> None:
    both = client.post("/v1/sweeps", json={"preset": "table1", "spec": {"model": "Toy"}})
    assert both.status_code == 422 and "either 'preset'" in both.json()["detail"]
    assert "no preset 'nope'" in client.post("/v1/sweeps", json={"preset": "nope"}).json()["detail"]
    grid = client.post("/v1/sweeps", json={"spec": {"model": "Toy"}, "grid": {"depth": [1]}})
    assert grid.status_code == 422 and "unknown keys ['depth']" in grid.json()["detail"]
    point = client.post(
        "/v1/sweeps", json={"spec": {"model": "KWL", "dataset": "cifar10"}, "grid": {"layer": ["Sandwich", "SLL"]}}
    )
    assert point.status_code == 422
    assert point.json()["detail"].startswith("spec at layer=SLL: layer 'SLL' is not defined for model KWL")
    huge = client.post("/v1/sweeps", json={"spec": {"model": "Toy"}, "grid": {"seed": list(range(501))}})
    assert huge.status_code == 422 and "at most 500" in huge.json()["detail"]
    form = client.post("/v1/sweeps", data={"preset": "table1"})
    assert form.status_code == 415 and "application/json" in form.json()["detail"]
    field = client.post("/v1/sweeps", json={"preset": "table1", "only": {"depth": [3]}})
    assert field.status_code == 422 and "only.depth: not a spec field" in field.json()["detail"]
    none = client.post("/v1/sweeps", json={"preset": "table1", "only": {"layer": ["Plain"]}})
    assert none.status_code == 422 and "no job of the sweep matches" in none.json()["detail"]

    # a Plain network has no gamma: the gamma grid collapses to one Plain job
    made = client.post(
        "/v1/sweeps",
        json={
            "name": "mine",
            "spec": {"model": "KWL", "dataset": "cifar10"},
            "grid": {"layer": ["Sandwich", "Plain"], "gamma": [1, 2]},
            "epochs": 3,
        },
    )
    assert made.status_code == 201, made.text
    sw = made.json()
    assert sw["status"] == "running" and sw["counts"] == {"queued": 3} and sw["evaluate"] is None
    assert [(j["point"]["layer"], j["point"]["gamma"]) for j in sw["jobs"]] == [
        ("Sandwich", 1.0),
        ("Plain", None),
        ("Sandwich", 2.0),
    ]
    assert all(j["spec"]["epochs"] == 3 and j["role"] == "train" for j in sw["jobs"])
    # its jobs are ordinary jobs
    assert {j["id"] for j in client.get("/v1/jobs").json()["items"]} == {j["job_id"] for j in sw["jobs"]}

    fig = client.post(
        "/v1/sweeps",
        json={
            "preset": "fig4-cifar10",
            "epochs": 1,
            "seeds": [5],
            "only": {"layer": ["Sandwich", "Plain"], "gamma": ["1", "none"]},
            "evaluate": {"n_examples": 2, "eps": [36]},
        },
    )
    assert fig.status_code == 201, fig.text
    fsw = fig.json()
    assert [(j["spec"]["layer"], j["spec"]["gamma"], j["spec"]["seed"]) for j in fsw["jobs"]] == [
        ("Sandwich", 1.0, 5),
        ("Plain", None, 5),
    ]
    assert fsw["evaluate"]["n_examples"] == 2 and fsw["preset"] == "fig4-cifar10"
    table1 = client.post("/v1/sweeps", json={"preset": "table1"}).json()
    assert table1["evaluate"] is None  # Toy: train only
    client.post(f"/v1/sweeps/{table1['id']}/cancel")  # its 12 jobs leave room in the quota of 20 active jobs
    assert client.post("/v1/sweeps", json={"preset": "fig4-cifar10", "evaluate": False}).json()["evaluate"] is None

    listed = client.get("/v1/sweeps", params={"preset": "fig4-cifar10"}).json()["items"]
    assert [s["id"] for s in listed][-1] == fsw["id"] and listed[-1]["jobs"] is None
    cancelled = client.post(f"/v1/sweeps/{sw['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"] == {"cancelled": 3}
    assert client.get("/v1/sweeps/swp_nope").status_code == 404

    # tenants: once a key exists, another tenant's sweep is not found
    secret = add_key(client.app, "other")
    assert client.get(f"/v1/sweeps/{sw['id']}", headers={"Authorization": f"Bearer {secret}"}).status_code == 404


def test_a_sweep_retried_with_its_idempotency_key_is_made_once(client) -> None:
    body = {"name": "retry", "spec": {"model": "Toy", "layer": "Sandwich"}, "grid": {"gamma": [1, 2]}}
    h = {"Idempotency-Key": "sweep-retry-1"}
    first, again = (client.post("/v1/sweeps", json=body, headers=h) for _ in range(2))
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["jobs"] == first.json()["jobs"]
    assert len(client.get("/v1/sweeps").json()["items"]) == 1
    assert len(client.get("/v1/jobs").json()["items"]) == 2
    other = client.post("/v1/sweeps", json={**body, "grid": {"gamma": [3]}}, headers=h)
    assert other.status_code == 422 and "different request body" in other.json()["detail"]
    ours = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-eval:x"})
    assert ours.status_code == 422 and "the service's own" in ours.json()["detail"]
    fresh = client.post("/v1/sweeps", json=body, headers={"Idempotency-Key": "sweep-retry-2"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 4


def test_presets_carry_the_papers_commands_and_numbers(client) -> None:
    items = {p["name"]: p for p in client.get("/v1/paper/presets").json()["items"]}
    assert set(items) == {
        "table1",
        "fig4-cifar10",
        "fig4-cifar100",
        "fig5-cifar10",
        "fig5-cifar100",
        "table2-cifar100",
        "table2-tiny",
        "table3-cifar100",
        "table3-tiny",
    }
    # job counts of ../shared/paper-commands.txt (Plain lines have no gamma grid)
    assert {n: p["jobs"] for n, p in items.items()} == {
        "table1": 12,
        "fig4-cifar10": 13,
        "fig4-cifar100": 13,
        "fig5-cifar10": 25,
        "fig5-cifar100": 25,
        "table2-cifar100": 36,
        "table2-tiny": 36,
        "table3-cifar100": 3,
        "table3-tiny": 3,
    }
    # published values as printed in the paper (../shared/paper-results.md)
    assert items["table1"]["published"]["tightness"]["Sandwich"] == {"1": 99.9, "5": 99.3, "10": 94.0}
    assert items["table1"]["published"]["tightness"]["Aol"]["5"] == 45.2
    assert items["table2-cifar100"]["published"]["table2"]["Sandwich"]["large"] == {
        "clean": 57.5,
        "aa_36": 48.5,
        "aa_72": 40.2,
        "aa_108": 32.9,
    }
    assert items["table3-tiny"]["published"]["table3"]["Sandwich (DNN)"] == {"clean": 33.4, "cert_36": 24.7}
    assert client.get("/v1/paper/presets/fig9").status_code == 404


@pytest.mark.slow
def test_table1_run_and_report(service_factory, tmp_path: Path) -> None:
    """`lbdn paper run table1` on a short budget, then `lbdn paper report table1`: both columns."""
    svc = service_factory("embedded", "sqlite", lipschitz_restarts=1)
    svc.worker()
    run = lbdn(svc.url, "paper", "run", "table1", "--epochs", "1", "--follow", timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 training jobs of table1" in run.stdout
    out = tmp_path / "report"
    rep = lbdn(svc.url, "paper", "report", "table1", "--out", str(out))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out / "report.md").read_text()
    assert "12 trained models used" in md and "1 of the paper's 200 epochs" in md
    for layer, paper in (("Sandwich", "99.9"), ("SLL", "67.9"), ("Orthogonal (Cayley)", "74.1"), ("AOL", "45.2")):
        row = next(line for line in md.splitlines() if line.startswith(f"| {layer} |"))
        # ours beside the paper's; after one epoch AOL's output is constant (tightness 0): flagged, not compared
        ours = re.search(r"\| \d+\.\d\d\*? \(", row) or (layer == "AOL" and "| **collapsed** (" in row)
        assert f"({paper})" in row and ours, row
    assert (out / "table1.png").read_bytes().startswith(PNG)
    assert "![table1](table1.png)" in md


@pytest.mark.slow
def test_figure_presets_make_their_plots(service_factory, tmp_path: Path) -> None:
    """Fig. 4 (accuracy vs eps per gamma, evaluated with AutoAttack) and Fig. 5 (learning curves
    over seeds) from a few jobs each on fake CIFAR-10 pickles; the CIFAR-100 variants of both figures
    and Tables 2-3 render from the same kind of sweep data."""
    svc = service_factory("embedded", "sqlite")
    write_cifar10(svc.settings.data_dir)
    svc.worker()
    url = svc.url
    run = lbdn(
        url,
        "paper",
        "run",
        "fig4-cifar10",
        "--epochs",
        "1",
        "--only",
        "layer=Sandwich,Plain",
        "gamma=1,none",
        "--n-examples",
        "2",
        "--attacks",
        "apgd-ce",
        "--set",
        "train_batch_size=8",
        "test_batch_size=4",
        "--follow",
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 training jobs of fig4-cifar10 (each evaluated once trained)" in run.stdout
    newest = json.loads(lbdn(url, "sweeps", "--json").stdout)[0]["id"]
    sw = json.loads(lbdn(url, "sweeps", newest, "--json").stdout)
    assert sw["status"] == "succeeded" and sw["counts"] == {"succeeded": 4}
    assert sorted(j["role"] for j in sw["jobs"]) == ["evaluate", "evaluate", "train", "train"]
    assert "fig4-cifar10" in lbdn(url, "sweeps").stdout and "evaluate" in lbdn(url, "sweeps", newest).stdout
    assert "fig5-cifar100" in lbdn(url, "paper", "list").stdout

    # `lbdn evaluate` of one of these models, followed to its summary
    sandwich = next(j["job_id"] for j in sw["jobs"] if j["role"] == "train" and j["spec"]["layer"] == "Sandwich")
    ev = lbdn(
        url,
        "evaluate",
        sandwich,
        "--eps",
        "36",
        "--n-examples",
        "2",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "--follow",
        timeout=900,
    )
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "succeeded" in ev.stdout and "clean accuracy" in ev.stdout and "eps 36/255: AutoAttack" in ev.stdout

    out4 = tmp_path / "fig4"
    rep = lbdn(url, "paper", "report", "fig4-cifar10", "--out", str(out4))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out4 / "report.md").read_text()
    assert "| Sandwich | 1 |" in md and "| CNN (Plain) | - |" in md and "no published column" in md
    assert (out4 / "fig4-cifar10.png").read_bytes().startswith(PNG)

    run = lbdn(
        url,
        "paper",
        "run",
        "fig5-cifar10",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "2",
        "--only",
        "layer=Sandwich",
        "--set",
        "train_batch_size=8",
        "--follow",
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out5 = tmp_path / "fig5"
    rep = lbdn(url, "paper", "report", "fig5-cifar10", "--out", str(out5))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "| Sandwich |" in (out5 / "report.md").read_text() and "| 2 |" in (out5 / "report.md").read_text()
    assert (out5 / "fig5-cifar10.png").read_bytes().startswith(PNG)

    # the other presets' layouts, from these sweeps' real job data (their own data sets are large)
    from client import Client
    from client.report import write_report

    with Client(url) as c:
        fig4 = c.sweep(c.sweeps(preset="fig4-cifar10")[0]["id"], history=True)
        fig5 = c.sweep(c.sweeps(preset="fig5-cifar10")[0]["id"], history=True)
        for name, data in (
            ("fig4-cifar100", fig4),
            ("fig5-cifar100", fig5),
            ("table2-cifar100", fig4),
            ("table2-tiny", fig4),
            ("table3-cifar100", fig5),
            ("table3-tiny", fig5),
        ):
            files = write_report(c.preset(name), data, tmp_path / name)
            assert [f.name for f in files] == ["report.md", f"{name}.png"]
            assert files[1].read_bytes().startswith(PNG)
    t2 = (tmp_path / "table2-cifar100" / "report.md").read_text()
    assert "| Sandwich | large | 0 | - (57.5) | - (48.5) | - (40.2) | - (32.9) |" in t2
    assert "| Sandwich | small | 1 |" in t2  # the fig4 Sandwich-small model, beside the paper's small
    t3 = (tmp_path / "table3-tiny" / "report.md").read_text()
    assert "| SLL Small (paper only) | 0 | - (26.6) | - (19.5) |" in t3


def test_sweep_store_on_sqlite_and_postgres(store, settings) -> None:
    """Evaluation jobs are made once per trained model, even when two passes advance a sweep."""
    from core.store import leases, sweeps, transaction
    from core.submit import submit, submit_all

    toy = {"model": "Toy", "layer": "Sandwich", "dataset": "square_wave", "gamma": 1.0}
    kwl = {"model": "KWL", "layer": "Sandwich", "dataset": "cifar10", "gamma": 1.0}
    tenant = f"t1-{secrets.token_hex(4)}"  # PostgreSQL's rows are shared by the session's tests
    with transaction(store) as s:
        made = submit_all(s, tenant=tenant, settings=settings, specs=[toy, kwl])
        trained_points = [(job, {"gamma": 1.0}) for job in made]
        sweep = sweeps.create_sweep(
            s,
            tenant=tenant,
            name="mix",
            preset=None,
            request={},
            evaluate={"eps": [36], "n_examples": 2},
            trained=trained_points,
        )
    for job in made:
        with transaction(store) as s:
            leases.acquire(s, job.id, "w", 60)
            leases.finish(s, job.id, "w", "succeeded", result={"test_acc": 10.0})

    def evaluate(s, link, trained):  # what core.sweep_submit.advance_sweeps does for one model
        key = sweeps.evaluation_key(sweep, trained)
        job, created = submit(
            s, tenant=tenant, settings=settings, kind="evaluate", spec=trained.spec, params=sweep.evaluate,
            model_id=trained.id, idempotency_key=key, req_hash=key, internal=True,
        )  # fmt: skip
        return job, created and sweeps.link_evaluation(s, sweep, link, job)

    with transaction(store) as s:
        pending = sweeps.pending_evaluations(s, sweeps.get_sweep(s, tenant, sweep.id))
        assert [job.id for _, job in pending] == [made[1].id]  # the Toy regression is never attacked
        link, trained = pending[0]
        first, linked = evaluate(s, link, trained)
        assert linked and first.kind == "evaluate" and first.model_id == made[1].id
    with transaction(store) as s:  # a second pass that saw the same pending list
        again, linked = evaluate(s, link, trained)
        assert again.id == first.id and not linked
        assert sweeps.pending_evaluations(s, sweep) == []
        rows = sweeps.sweep_jobs(s, sweep.id)
        assert [(link.role, job.kind) for link, job in rows] == [
            ("train", "train"),
            ("train", "train"),
            ("evaluate", "evaluate"),
        ]
        assert sweeps.get_sweep(s, "t2", sweep.id) is None
        assert [sw.id for sw in sweeps.list_sweeps(s, tenant)][:1] == [sweep.id]
