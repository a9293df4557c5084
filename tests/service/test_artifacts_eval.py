"""An evaluation picked up on another host continues from the batches already attacked: each
finished (eps, batch)'s verdicts (lipcore.batch_results) go to the artifact store as the batch
finishes (worker.artifacts), the next host pulls them and attacks only the batches without one.
On both backends (a local folder is the shared file system of one host or many; S3 is the
loopback server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipcore.checkpoint import save_model
from lipcore.evaluate import evaluate_robustness
from lipcore.models import build
from lipcore.spec import ExperimentSpec
from worker.artifacts import eval_state_pusher, pull_eval_state

JOB = "job_evalresume"
SPEC = {
    "model": "KWL",
    "layer": "Plain",
    "dataset": "image_folder",
    "data_path": "colours",
    "in_channels": 3,
    "img_size": 32,
    "num_classes": 2,
}


def _colours(root: Path, per_class: int = 8) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate(([220, 30, 30], [30, 30, 220])):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = root / "colours" / "train" / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


def _two_hosts(tmp_path: Path, settings_for, backend: str, **shared):
    """Hosts A and B with the colours dataset, and a saved model's weights. S3: another host,
    sharing only the bucket (and `shared`); local: the same folder (one host, or a shared mount)."""
    host_a = settings_for(tmp_path / "a", **shared)
    host_b = host_a if backend == "local" else settings_for(tmp_path / "b", artifacts=host_a.artifacts, **shared)
    for host in (host_a, host_b):
        _colours(host.datasets_dir)
    es = ExperimentSpec.model_validate(SPEC)
    torch.manual_seed(0)
    weights = tmp_path / "model.safetensors"
    save_model(weights, build(es), es)
    return host_a, host_b, weights


def _evaluate(model: Path, settings, **kw):
    return evaluate_robustness(
        model,
        data_dir=settings.datasets_dir,
        eps=(36, 72),
        version="custom",
        attacks=["apgd-ce"],
        n_examples=4,
        device="cpu",
        batch_size=1,  # one input a batch: two batches per eps
        **kw,
    )


@pytest.mark.artifacts
def test_an_evaluation_continues_on_another_host_from_the_stored_batches(tmp_path, settings_for, artifact_backend):
    host_a, host_b, model = _two_hosts(tmp_path, settings_for, artifact_backend)

    store_a, out_a = host_a.artifact_store(), host_a.job_dir(JOB)
    out_a.mkdir(parents=True)
    push = eval_state_pusher(store_a, JOB, out_a, owned=lambda: None)
    stored: list[list[str]] = []

    def after_batch(_progress) -> None:
        push()
        stored.append(sorted(a.name for a in store_a.list(JOB)))

    first = _evaluate(model, host_a, state_dir=out_a, on_progress=after_batch)
    # each batch's state was in the store as soon as that batch was done, before the run ended
    assert stored[0] == ["autoattack36-0.json"]
    assert stored[-1] == sorted(f"autoattack{e}-{i}.json" for e in (36, 72) for i in (0, 1))

    out_b = host_b.job_dir(JOB)
    assert pull_eval_state(host_b.artifact_store(), JOB, out_b) == (4 if artifact_backend == "s3" else 0)
    assert sorted(p.name for p in out_b.glob("*.json")) == stored[-1]
    (out_b / "autoattack72-1.json").unlink()  # as if the first host died during that last batch
    kept = {p.name: p.stat().st_mtime_ns for p in out_b.glob("*.json")}
    again = _evaluate(model, host_b, state_dir=out_b)
    # only the missing batch was attacked again (a batch attacked writes its file anew)
    assert {name: (out_b / name).stat().st_mtime_ns for name in kept} == kept
    assert (out_b / "autoattack72-1.json").is_file()
    assert again["autoattack_acc"] == first["autoattack_acc"] and again["clean_acc"] == first["clean_acc"]


@pytest.mark.artifacts
def test_the_worker_of_another_host_pulls_the_batches_of_a_dead_one(
    tmp_path, settings_for, artifact_backend, own_pg_url
):
    """worker.tasks' evaluation body: host A attacked both batches, pushed them and died before
    finishing (its lease ran out); host B's worker takes the job, pulls the batches and finishes."""
    from core.states import JobKind
    from core.store import init_db, jobs, leases, transaction
    from worker.context import TaskContext
    from worker.tasks import run_evaluate

    host_a, host_b, weights = _two_hosts(
        tmp_path, settings_for, artifact_backend, database_url=own_pg_url, lipschitz_restarts=0
    )
    worker_b = TaskContext(host_b)
    init_db(worker_b.engine)
    params = {"eps": [36, 72], "version": "custom", "attacks": ["apgd-ce"], "n_examples": 4}
    with transaction(worker_b.sessions()) as s:
        model = jobs.create_job(s, tenant="local", kind=JobKind.train, spec=SPEC)[0].id
        job = jobs.create_job(s, tenant="local", kind=JobKind.evaluate, spec=SPEC, params=params, model_id=model)[0].id
        leases.acquire(s, job, "host-a", lease_s=-1)  # A's lease, run out
    store_a = host_a.artifact_store()
    store_a.put(model, "model.safetensors", weights)

    out_a = host_a.job_dir(job)  # what A did before it died: both batches, each pushed as it ended
    out_a.mkdir(parents=True, exist_ok=True)
    push = eval_state_pusher(store_a, job, out_a, owned=lambda: None)
    on_a = evaluate_robustness(
        weights, data_dir=host_a.datasets_dir, eps=(36, 72), version="custom", attacks=["apgd-ce"], n_examples=4,
        device="cpu", state_dir=out_a, on_progress=lambda _p: push(),
    )  # fmt: skip

    assert run_evaluate(worker_b, job) == "succeeded"
    with worker_b.sessions()() as s:
        done, lines = jobs.get_job(s, None, job), jobs.log_lines(s, job)
    assert done.attempt == 2 and done.result["autoattack_acc"] == on_a["autoattack_acc"]
    pulled = [line for line in lines if line.startswith("continuing after")]
    # S3: B pulled A's two batches; local: they were in the shared folder already
    assert pulled == (
        ["continuing after 2 batch(es) of inputs an earlier attempt attacked"] if host_b is not host_a else []
    )
