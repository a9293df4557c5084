"""End to end with real processes: `lbdn api` (uvicorn) and `lbdn worker` (Celery prefork), over Redis
and over the embedded SQLite broker, with PostgreSQL and SQLite job stores."""

from __future__ import annotations

import io
import math
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.waiting import follow, wait_until

TOY = {"model": "Toy", "layer": "Sandwich", "gamma": 2.0, "epochs": 5}


def image_folder(root, n_per_class=34, classes=("cat", "dog", "eel")) -> str:
    """~100 random 32x32 PNGs in the layout lipcore.data reads: <root>/tiny/train/<class>/."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        folder = root / "tiny" / "train" / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            pixels[..., label] = pixels[..., label] // 2 + 128  # a learnable colour cue per class
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return "tiny"


def wait_for(client: httpx.Client, job_id: str, check, timeout: float = 240, what: str = "") -> dict:
    """The job once `check(job)` holds (wait_until); a job that fails first ends the wait."""

    def job_if_seen() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if check(job):
            return job
        if job["status"] == "failed":
            raise AssertionError(f"job failed: {job['error']}")
        return None

    return wait_until(what or f"job {job_id}", job_if_seen, bound=timeout, every=0.2)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize(
    "broker,db,with_kwl",
    [("redis", "postgres", False), ("embedded", "sqlite", True)],
    ids=["redis-postgres", "embedded-sqlite"],
)
def test_end_to_end(service_factory, tmp_path, broker, db, with_kwl):
    """Toy on both stacks; the image classifier (slow on a CPU) on the zero-set-up stack only."""
    svc = service_factory(broker, db)
    folder = image_folder(svc.settings.datasets_dir)
    svc.worker()
    client = httpx.Client(base_url=svc.url, timeout=60)
    t0 = time.monotonic()
    toy = client.post("/v1/jobs", json={"kind": "train", "spec": TOY})
    assert toy.status_code == 201 and toy.json()["status"] == "queued"
    kwl_spec = {
        "model": "KWL",
        "layer": "Sandwich",
        "scale": "small",
        "dataset": "image_folder",
        "data_path": folder,
        "loss": "multimargin",
        "epochs": 1,
        "train_batch_size": 32,
        "test_batch_size": 64,
        "cert_acc": True,
    }
    toy_id, kwl_id = toy.json()["id"], None
    if with_kwl:
        kwl = client.post("/v1/jobs", json={"kind": "train", "spec": kwl_spec})
        assert kwl.status_code == 201, kwl.text
        assert kwl.json()["spec"]["num_classes"] == 3  # resolved from the folder at submission
        kwl_id = kwl.json()["id"]

    events = follow(svc.url, toy_id)
    states = [d["status"] for k, d in events if k == "state"]
    assert states[0] == "queued" and states[-1] == "succeeded" and states.count("succeeded") == 1
    assert [d["epoch"] for k, d in events if k == "metrics"] == [1, 2, 3, 4, 5]
    assert any(k == "progress" for k, _ in events) and any(k == "log" for k, _ in events)
    print(f"[{broker}/{db}] toy job: submit -> succeeded in {time.monotonic() - t0:.1f}s")

    job = client.get(f"/v1/jobs/{toy_id}").json()
    assert job["progress"]["fraction"] == 1.0 and job["finished_at"] and job["attempt"] == 1
    metrics = client.get(f"/v1/jobs/{toy_id}/metrics").json()["items"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5] and all(math.isfinite(m["test_loss"]) for m in metrics)
    assert [
        m["epoch"] for m in client.get(f"/v1/jobs/{toy_id}/metrics", params={"since_epoch": 3}).json()["items"]
    ] == [4, 5]
    assert "Epoch:" in "\n".join(client.get(f"/v1/jobs/{toy_id}/logs").json()["lines"])
    names = {a["name"] for a in client.get(f"/v1/jobs/{toy_id}/artifacts").json()["items"]}
    assert {"model.safetensors", "spec.json", "metrics.json", "checkpoint.safetensors"} <= names
    weights = client.get(f"/v1/jobs/{toy_id}/artifacts/model.safetensors")
    assert weights.status_code == 200 and len(weights.content) > 1000
    (tmp_path / "downloaded.safetensors").write_bytes(weights.content)
    from lipcore.checkpoint import load_model

    assert load_model(tmp_path / "downloaded.safetensors").spec.gamma == 2.0

    xs = [[-0.8], [0.1], [0.9]]  # the Toy regression's 1-D inputs (model space)
    cert = client.post(f"/v1/models/{toy_id}/certify", json={"inputs": xs, "scale": "model"}).json()
    bound = cert["lipschitz_bound"]
    assert (bound["gamma"], bound["kind"]) == (2.0, "gamma (single output)")
    assert bound["verified"] <= 2.0 * (1 + 1e-9) and bound["used"] == max(2.0, bound["verified"])
    for r in cert["results"]:
        # margin / used, less the float64 forward's rounding allowance (lipcore.certify: ~1e-11
        # absolute here, a few 1e-9 relative at small margins), never more than the plain ratio
        assert 0 <= r["margin"] / bound["used"] - r["radius"] <= 1e-6

    assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    if not with_kwl:
        return
    wait_for(client, kwl_id, lambda j: j["status"] == "succeeded", what="the KWL job")
    model = client.get(f"/v1/models/{kwl_id}").json()
    assert model["classes"] == ["cat", "dog", "eel"] and model["clean_acc"] is not None
    assert set(model["certified_acc"]) == {"36", "72", "108"}
    rng = np.random.default_rng(1)
    images = [
        ("files", (f"{i}.png", png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "image/png")) for i in range(3)
    ]
    cert = client.post(f"/v1/models/{kwl_id}/certify", files=images)
    assert cert.status_code == 200, cert.text
    bound = cert.json()["lipschitz_bound"]
    assert bound["kind"] == "sqrt2*gamma" and bound["gamma"] == 1.0
    assert bound["verified"] <= 1.0 + 1e-9 and bound["used"] == max(1.0, bound["verified"])
    for r in cert.json()["results"]:
        assert r["class_name"] in model["classes"]
        # less the rounding allowance, as for the Toy above (~1e-8 absolute for a KWL)
        assert 0 <= r["margin"] / (math.sqrt(2) * bound["used"]) - r["radius"] <= 1e-6
    assert {m["id"] for m in client.get("/v1/models").json()["items"]} == {toy_id, kwl_id}


def _epochs_done(client, job_id) -> int:
    return len(client.get(f"/v1/jobs/{job_id}/metrics").json()["items"])


@pytest.mark.slow
@pytest.mark.parametrize("broker,db", [("redis", "postgres"), ("embedded", "sqlite")])
def test_worker_killed_mid_training_resumes_from_checkpoint(service_factory, broker, db):
    """kill -9 of the worker (and its pool child): the lease runs out, the reaper re-queues the job,
    a new worker resumes it from its last checkpoint; a duplicate delivery meanwhile is dropped.

    Every step waits on an event, never on the machine's speed: the run is far too long to end by
    itself (it could finish before the kill on an idle machine with a short one, and be killed late
    on a busy one), so the test watches it resume and then cancels it."""
    svc = service_factory(broker, db)
    first = svc.worker()
    client = httpx.Client(base_url=svc.url, timeout=60)
    job_id = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 100_000}}).json()["id"]
    wait_for(client, job_id, lambda j: _epochs_done(client, job_id) >= 2, what="two epochs")

    second = svc.worker()  # a redelivery while the job runs (as Redis does after its visibility timeout)
    from core.queue import CeleryQueue
    from core.states import JobKind

    CeleryQueue(svc.settings).enqueue(job_id, JobKind.train)
    second.wait_for(f"job {job_id} is not runnable here")
    assert client.get(f"/v1/jobs/{job_id}").json()["attempt"] == 1  # no second copy started

    done_before = _epochs_done(client, job_id)
    first.kill9()
    t_kill = time.monotonic()
    job = wait_for(client, job_id, lambda j: j["attempt"] == 2 and j["resumed_from"], what="the resumed job")
    resumed_at = job["resumed_from"]["epoch"]
    assert resumed_at >= done_before >= 2  # not restarted from epoch 0
    wait_for(client, job_id, lambda j: _epochs_done(client, job_id) >= resumed_at + 2, what="epochs after the resume")
    print(
        f"killed after {done_before} epochs; resumed at {resumed_at}, {time.monotonic() - t_kill:.1f}s after the kill"
    )
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_for(client, job_id, lambda j: j["status"] == "cancelled", what="the cancelled job")
    assert job["attempt"] == 2
    epochs = [m["epoch"] for m in client.get(f"/v1/jobs/{job_id}/metrics").json()["items"]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= resumed_at + 2  # each epoch once
    states = [e for e in follow(svc.url, job_id) if e[0] == "state"]
    assert [d["status"] for _, d in states].count("cancelled") == 1  # exactly one final state
    assert not any(d["status"] in ("succeeded", "failed") for _, d in states)
    assert any(d.get("requeued") for _, d in states)
    assert "Resumed from checkpoint" in "\n".join(client.get(f"/v1/jobs/{job_id}/logs").json()["lines"])


@pytest.mark.slow
def test_cancel_running_job_keeps_its_checkpoint(service_factory):
    svc = service_factory("embedded", "sqlite")
    svc.worker()
    client = httpx.Client(base_url=svc.url, timeout=60)
    # a run too long to end by itself, whatever the machine's speed
    job_id = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 100_000}}).json()["id"]
    wait_for(client, job_id, lambda j: _epochs_done(client, job_id) >= 1, what="one epoch")
    t0 = time.monotonic()
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    job = wait_for(client, job_id, lambda j: j["status"] == "cancelled", what="cancelled")
    print(f"cancel -> cancelled in {time.monotonic() - t0:.2f}s")
    assert job["progress"]["epoch"] < 100_000 and job["finished_at"]
    names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    assert "checkpoint.safetensors" in names  # the last checkpoint is kept
    assert client.get(f"/v1/models/{job_id}").status_code == 404  # a cancelled run is not a model
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not svc.settings.job_dir(job_id).exists()
    assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_jobs_lost_by_the_broker_are_resent_when_the_api_restarts(service_factory):
    """Redis restarted without persistence: the queue is gone, the database still has the job."""
    import redis

    svc = service_factory("redis", "sqlite")
    client = httpx.Client(base_url=svc.url, timeout=60)
    job_id = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 2}}).json()["id"]
    r = redis.Redis.from_url(svc.settings.broker)
    assert r.llen(svc.settings.gpu_queue) == 1
    r.delete(svc.settings.gpu_queue)  # what a Redis restart without persistence does to it
    svc.api.stop()
    svc.api = svc._start(["api", "--host", "127.0.0.1", "--port", svc.url.rsplit(":", 1)[1]], "api")
    svc.api.wait_for("Uvicorn running on")  # (bound: uvicorn logs "startup complete" before it listens)
    svc.worker()
    job = wait_for(client, job_id, lambda j: j["status"] == "succeeded", what="the re-sent job")
    assert job["attempt"] == 1


@pytest.mark.slow
def test_jobs_lost_by_the_broker_are_resent_by_a_running_worker(service_factory):
    """Redis restarted under a running service: its messages and its marker key go together, and
    the worker's next reaper pass re-sends every queued job (without waiting the 10 minutes of
    LBDN_RESEND_QUEUED_AFTER_S for a stale message)."""
    import redis

    svc = service_factory("redis", "sqlite", resend_queued_after_s=600)
    svc.worker()
    client = httpx.Client(base_url=svc.url, timeout=60)
    busy = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 100_000}}).json()["id"]
    wait_for(client, busy, lambda j: j["status"] == "running", what="the first job running")
    waiting = client.post("/v1/jobs", json={"kind": "train", "spec": {**TOY, "epochs": 2}}).json()["id"]
    r = redis.Redis.from_url(svc.settings.broker)
    marker = f"{svc.settings.queue_prefix}lbdn.broker-marker"
    assert r.exists(marker) and r.llen(svc.settings.gpu_queue) == 1  # set at start; the job's message
    r.delete(svc.settings.gpu_queue, marker)  # in one command, as a restart without persistence does
    assert client.post(f"/v1/jobs/{busy}/cancel").status_code == 200
    wait_for(client, busy, lambda j: j["status"] == "cancelled", what="the first job cancelled")
    job = wait_for(client, waiting, lambda j: j["status"] == "succeeded", timeout=300, what="the re-sent job")
    assert job["attempt"] == 1
    assert r.exists(marker)
