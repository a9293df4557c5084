"""The worker's job runner in-process, with the real lipcore: a training job, then an evaluation
job with a real AutoAttack run (a small unconstrained KWL and APGD-CE on a few images keep it to
seconds on a CPU), failures, and duplicate deliveries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.states import JobKind
from core.store import init_db, jobs, leases, transaction
from worker.context import TaskContext
from worker.tasks import run_evaluate, run_train


@pytest.fixture
def ctx(tmp_path, settings_for) -> TaskContext:
    """The context a worker started with these settings gives its tasks (no Celery involved)."""
    context = TaskContext(settings_for(tmp_path, lipschitz_restarts=0))
    init_db(context.engine)
    return context


def _job(ctx, spec=None, **kw):
    with transaction(ctx.sessions()) as s:
        return jobs.create_job(s, tenant="local", spec=spec or {"model": "KWL"}, **kw)[0]


def _write_folder(root, per_class: int = 8) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate(([220, 30, 30], [30, 30, 220])):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = root / "train" / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


@pytest.mark.artifacts
def test_train_then_evaluate_jobs_run_lipcore_and_store_results(ctx):
    _write_folder(ctx.settings.datasets_dir / "colours")
    spec = {
        "model": "KWL",
        "layer": "Plain",
        "dataset": "image_folder",
        "data_path": "colours",
        "loss": "multimargin",
        "epochs": 2,
        "train_batch_size": 8,
        "test_batch_size": 8,
        "in_channels": 3,
        "img_size": 32,
        "num_classes": 2,
    }
    model = _job(ctx, spec=spec, kind=JobKind.train)
    assert run_train(ctx, model.id) == "succeeded"
    params = {"eps": [36], "version": "custom", "n_examples": 4, "attacks": ["apgd-ce"]}
    job = _job(ctx, kind=JobKind.evaluate, params=params, model_id=model.id)
    assert run_evaluate(ctx, job.id) == "succeeded"
    with ctx.sessions()() as s:
        done = jobs.get_job(s, None, job.id)
        assert done.status == "succeeded" and done.progress["fraction"] == 1.0
        result = done.result
        assert any(line.startswith("eps 36/255: AutoAttack") for line in jobs.log_lines(s, job.id))
    assert result["n"] == 2 and result["attacks"] == ["apgd-ce"]  # two held-out images exist
    assert 0 <= result["autoattack_acc"]["36"] <= result["clean_acc"]
    assert result["certified_acc"] == {}  # an unconstrained network has no certificate
    saved = json.loads(ctx.artifacts.local_path(job.id, "eval.json").read_text())
    assert saved == result
    assert run_evaluate(ctx, job.id) == "skipped"  # a second delivery of a finished job does nothing


@pytest.mark.artifacts
def test_failures_are_reported_on_the_job(ctx, tmp_path):
    job = _job(ctx, kind=JobKind.evaluate, params={}, model_id="job_gone")
    assert run_evaluate(ctx, job.id) == "failed"
    with ctx.sessions()() as s:
        assert "no weights file" in jobs.get_job(s, None, job.id).error
    model = _job(ctx, kind=JobKind.train)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file")
    ctx.artifacts.put(model.id, "model.safetensors", bad)
    job = _job(ctx, kind=JobKind.evaluate, params={}, model_id=model.id)
    assert run_evaluate(ctx, job.id) == "failed"
    with ctx.sessions()() as s:
        failed = jobs.get_job(s, None, job.id)
    assert failed.error.startswith("CheckpointError:") and "not a readable safetensors file" in failed.error
    assert failed.lease_owner is None


def test_a_job_leased_elsewhere_is_left_alone(ctx):
    job = _job(ctx, kind=JobKind.train)
    with transaction(ctx.sessions()) as s:
        leases.acquire(s, job.id, "other-worker", 60)
    assert run_train(ctx, job.id) == "skipped"
    with ctx.sessions()() as s:
        assert jobs.get_job(s, None, job.id).attempt == 1
