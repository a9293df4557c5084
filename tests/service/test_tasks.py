"""The worker's job runner in-process: evaluation jobs (lipcore's AutoAttack run replaced by a stub, as
it takes minutes on a CPU), failures, and duplicate deliveries."""

from __future__ import annotations

import json

import pytest

import lipcore.evaluate
from worker.store import init_db, jobs, leases, make_engine, session_factory, transaction


@pytest.fixture
def tasks(tmp_path, settings_for, monkeypatch):
    import worker.tasks as tasks

    settings = settings_for(tmp_path)
    monkeypatch.setattr(tasks, "settings", settings)
    engine = make_engine(settings.db_url)
    init_db(engine)
    monkeypatch.setattr(
        tasks, "_store", {"pid": __import__("os").getpid(), "engine": engine, "sessions": session_factory(engine)}
    )
    return tasks


def _job(tasks, **kw):
    with transaction(tasks.sessions()) as s:
        return jobs.create_job(s, tenant="local", spec={"model": "KWL"}, **kw)[0]


def test_evaluate_job_runs_lipcore_and_stores_results(tasks, monkeypatch):
    model = _job(tasks, kind="train")
    weights = tasks.settings.job_dir(model.id) / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stub")
    seen = {}

    def fake_evaluate(path, **kw):
        seen.update(kw, path=path)
        kw["on_log"]("eps 36/255: AutoAttack 50.00%")
        assert kw["should_stop"]() is False
        return {"n": 4, "clean_acc": 75.0, "autoattack_acc": {"36": 50.0}, "certified_acc": {"36": 25.0}}

    monkeypatch.setattr(lipcore.evaluate, "evaluate_robustness", fake_evaluate)
    params = {"eps": [36], "version": "custom", "n_examples": 4, "attacks": ["apgd-ce"]}
    job = _job(tasks, kind="evaluate", params=params, model_id=model.id)
    assert tasks.evaluate_job(job.id) == "succeeded"
    assert seen["path"] == weights and seen["eps"] == (36,) and seen["attacks"] == ["apgd-ce"]
    assert seen["state_dir"] == tasks.settings.job_dir(job.id)
    with tasks.sessions()() as s:
        done = jobs.get_job(s, None, job.id)
        assert done.status == "succeeded" and done.result["autoattack_acc"] == {"36": 50.0}
        assert jobs.log_lines(s, job.id) == ["eps 36/255: AutoAttack 50.00%"]
    saved = json.loads((tasks.settings.job_dir(job.id) / "eval.json").read_text())
    assert saved["clean_acc"] == 75.0
    assert tasks.evaluate_job(job.id) == "skipped"  # a second delivery of a finished job does nothing


def test_failures_are_reported_on_the_job(tasks, monkeypatch):
    job = _job(tasks, kind="evaluate", params={}, model_id="job_gone")
    assert tasks.evaluate_job(job.id) == "failed"
    with tasks.sessions()() as s:
        assert "no weights file" in jobs.get_job(s, None, job.id).error

    def broken(path, **kw):
        raise RuntimeError("CUDA out of memory")

    model = _job(tasks, kind="train")
    (tasks.settings.job_dir(model.id)).mkdir(parents=True)
    (tasks.settings.job_dir(model.id) / "model.safetensors").write_bytes(b"stub")
    monkeypatch.setattr(lipcore.evaluate, "evaluate_robustness", broken)
    job = _job(tasks, kind="evaluate", params={}, model_id=model.id)
    assert tasks.evaluate_job(job.id) == "failed"
    with tasks.sessions()() as s:
        failed = jobs.get_job(s, None, job.id)
    assert failed.error == "RuntimeError: CUDA out of memory" and failed.lease_owner is None


def test_a_job_leased_elsewhere_is_left_alone(tasks):
    job = _job(tasks, kind="train")
    with transaction(tasks.sessions()) as s:
        leases.acquire(s, job.id, "other-worker", 60)
    assert tasks.train_job(job.id) == "skipped"
    with tasks.sessions()() as s:
        assert jobs.get_job(s, None, job.id).attempt == 1
