"""Runs you can name, filter, sort and compare (issue 23): labels on jobs, GET /v1/jobs filters and
metric sort with keyset pages, metrics as CSV, links to models and sweeps. The real app on a real
store (SQLite and PostgreSQL); jobs are finished through the store as a worker finishes them."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from core.store import jobs, leases, transaction

TOY = {"model": "Toy", "dataset": "square_wave", "epochs": 2}


@pytest.fixture
def api(settings_for, tmp_path, db_url) -> Iterator[TestClient]:
    """The real app on a fresh SQLite file or on PostgreSQL (a database of its own)."""
    from api.main import create_app

    settings = settings_for(tmp_path, database_url=db_url if db_url.startswith("postgresql") else None)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    # one fresh database per test: the pages below must see only this test's jobs
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.sqlite'}"
    return request.getfixturevalue("own_pg_url")


def submit(c: TestClient, **fields) -> dict:
    spec = {**TOY, **fields.pop("spec", {})}
    r = c.post("/v1/jobs", json={"kind": "train", "spec": spec, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def finish(c: TestClient, job_id: str, result: dict, epochs: list[dict] | None = None) -> None:
    """End a job as a worker does: its epochs recorded, then succeeded with `result`."""
    with transaction(c.app.state.services.sessions) as s:
        leases.acquire(s, job_id, "test", 60)
        for row in epochs or []:
            jobs.record_metrics(s, job_id, row)
        leases.finish(s, job_id, "test", "succeeded", result=result)


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_labels_are_set_at_submission_shown_and_patched(api: TestClient) -> None:
    job = submit(api, name="  baseline run ", tags=["Paper", "toy", "paper"], note="first try\nwith notes")
    assert (job["name"], job["tags"], job["note"]) == ("baseline run", ["paper", "toy"], "first try\nwith notes")
    assert job["sweep_id"] is None and job["model_id"] is None
    plain = submit(api)
    assert (plain["name"], plain["tags"], plain["note"]) == (None, [], None)

    r = api.patch(f"/v1/jobs/{job['id']}", json={"tags": ["final"], "note": None})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["tags"], r.json()["note"]) == ("baseline run", ["final"], None)
    shown = api.get(f"/v1/jobs/{job['id']}").json()
    assert (shown["name"], shown["tags"], shown["note"]) == ("baseline run", ["final"], None)
    listed = {j["id"]: j for j in api.get("/v1/jobs").json()["items"]}
    assert listed[job["id"]]["tags"] == ["final"]
    # cancelled and finished jobs can be labelled too
    api.post(f"/v1/jobs/{plain['id']}/cancel")
    assert api.patch(f"/v1/jobs/{plain['id']}", json={"name": "gave up"}).json()["name"] == "gave up"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"tags": ["no spaces"]}, "tags"),
        ({"tags": ["ok", 'quote"']}, "tags"),
        ({"tags": [f"t{i}" for i in range(21)]}, "tags"),
        ({"tags": ["x" * 41]}, "tags"),
        ({"note": "x" * 10_001}, "note"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_labels_are_refused_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    job = submit(client)
    for r in (
        client.patch(f"/v1/jobs/{job['id']}", json=body),
        client.post("/v1/jobs", json={"kind": "train", "spec": TOY, **body}),
    ):
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"], r.json()["detail"]
    assert client.patch("/v1/jobs/job_nope", json={"name": "x"}).status_code == 404
    assert client.patch(f"/v1/jobs/{job['id']}", content=b"name=x").status_code == 415


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_filters_by_state_labels_spec_and_sweep(api: TestClient) -> None:
    a = submit(api, name="Alpha one", tags=["paper", "seed-sweep"], spec={"layer": "Sandwich", "gamma": 1.0, "seed": 1})
    b = submit(api, name="alpha two", tags=["paper"], spec={"layer": "Sandwich", "gamma": 2.0, "seed": 2})
    c = submit(api, name="beta", spec={"gamma": 2.0, "seed": 1, "layer": "Orthogon"})
    finish(api, a["id"], {"test_acc": 90.0})
    sw = api.post("/v1/sweeps", json={"name": "grid", "spec": TOY, "grid": {"seed": [7, 8]}, "tags": ["Swept"]})
    assert sw.status_code == 201, sw.text
    swept = [j["job_id"] for j in sw.json()["jobs"]]

    def ids(**params) -> set[str]:
        r = api.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["items"]}

    assert ids(status="succeeded") == {a["id"]}
    assert ids(kind="evaluate") == set()
    assert ids(tag="paper") == {a["id"], b["id"]}
    assert ids(tag=["paper", "seed-sweep"]) == {a["id"]}  # every tag given
    assert ids(tag="PAPER") == {a["id"], b["id"]}  # tags are kept lowercase
    assert ids(tag="pape") == set()  # a tag matches whole, never a part
    assert ids(tag="swept") == set(swept)
    assert ids(name="ALPHA") == {a["id"], b["id"]}  # a substring, any case
    assert ids(name="%") == set()  # no wildcards
    assert ids(name="grid seed=7") == {swept[0]}  # a sweep's jobs are named after it and their point
    assert ids(gamma=2.0) == {b["id"], c["id"]}
    assert ids(gamma=2) == {b["id"], c["id"]}
    assert ids(seed=1) == {a["id"], c["id"]}
    assert ids(layer="Orthogon") == {c["id"]}
    assert ids(model="Toy", dataset="square_wave", seed=8) == {swept[1]}
    assert ids(model="KWL") == set()
    assert ids(sweep=sw.json()["id"]) == set(swept)
    assert ids(sweep="swp_nope") == set()
    job = api.get(f"/v1/jobs/{swept[0]}").json()
    assert job["sweep_id"] == sw.json()["id"] and job["tags"] == ["swept"]
    assert {j["sweep_id"] for j in api.get("/v1/jobs", params={"tag": "swept"}).json()["items"]} == {sw.json()["id"]}


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_metric_sort_pages_in_order_with_missing_values_last(api: TestClient) -> None:
    # values with ties, a job whose summary lacks the metric (its last epoch has it), and jobs with none
    values = [5.0, 3.5, None, 5.0, 0.1, None, 3.5, 9.25, None]
    made = []
    for i, v in enumerate(values):
        job = submit(api, name=f"run {i}")
        made.append((job["id"], v))
        if v is not None and i % 2:
            finish(api, job["id"], {"test_acc": 50.0}, epochs=[{"epoch": 1, "cert_acc_36": v}])
        elif v is not None:
            finish(api, job["id"], {"cert_acc_36": v})
    newest_first = [job_id for job_id, _ in reversed(made)]
    for sort, reverse in (("-cert_acc_36", True), ("cert_acc_36", False)):
        known = sorted(
            ((v, newest_first.index(i)) for i, v in made if v is not None),
            key=lambda t: (-t[0], t[1]) if reverse else (t[0], t[1]),
        )
        want = [newest_first[pos] for _, pos in known] + [i for i in newest_first if dict(made)[i] is None]
        assert pages(api, {"sort": sort}, limit=2) == want, sort
        assert pages(api, {"sort": sort}, limit=50) == want
    assert pages(api, {}, limit=4) == newest_first  # -created, the default
    assert pages(api, {"sort": "created"}, limit=4) == newest_first[::-1]
    assert pages(api, {"sort": "-tightness"}, limit=3) == newest_first  # nobody has it: all last, newest first
    bad = api.get("/v1/jobs", params={"sort": "cert_acc_36", "cursor": "12:1.2.3"})
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]
    assert api.get("/v1/jobs", params={"sort": "drop table"}).status_code == 422


def pages(c: TestClient, params: dict, *, limit: int) -> list[str]:
    """Every job id of a list, page after page."""
    seen: list[str] = []
    cursor = None
    while True:
        r = c.get("/v1/jobs", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [j["id"] for j in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return seen


def test_metrics_as_csv(client: TestClient) -> None:
    job = submit(client)
    epochs = [
        {"epoch": 1, "train_loss": 0.5, "test_acc": 60.0},
        {"epoch": 2, "train_loss": 0.25, "test_acc": 70.5, "cert_acc_36": 12.0, "lr": [0.1]},
    ]
    finish(client, job["id"], {"test_acc": 70.5}, epochs=epochs)
    r = client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["epoch", "train_loss", "test_acc", "cert_acc_36", "lr"]
    assert rows[0] == {"epoch": "1", "train_loss": "0.5", "test_acc": "60.0", "cert_acc_36": "", "lr": ""}
    assert rows[1]["cert_acc_36"] == "12.0" and rows[1]["lr"] == "[0.1]"
    since = client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv", "since_epoch": 1}).text
    assert since.splitlines()[1].startswith("2,")
    assert client.get(f"/v1/jobs/{job['id']}/metrics").json()["items"] == epochs
    assert client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "xml"}).status_code == 422


def test_an_evaluation_links_to_its_model(client: TestClient, trained_model) -> None:
    model = trained_model(client.app, "local", {"model": "KWL", "dataset": "cifar10", "epochs": 1})
    ev = client.post("/v1/jobs", json={"kind": "evaluate", "model_id": model, "name": "attack it", "tags": ["eval"]})
    assert ev.status_code == 201, ev.text
    assert (ev.json()["model_id"], ev.json()["name"], ev.json()["tags"]) == (model, "attack it", ["eval"])
    assert client.get(f"/v1/jobs/{model}").json()["model_id"] is None  # a training job is the model itself
