"""Rows of the job store -> response models."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.schemas import JobOut, ModelOut, ProgressOut
from core.states import JobKind
from core.store import Job, sweeps


def job_views(session: Session, rows: list[Job]) -> list[JobOut]:
    """The jobs as JobOut, with the sweep of each (one query for all of them)."""
    of = sweeps.sweeps_of(session, [j.id for j in rows])
    return [job_out(j, of.get(j.id)) for j in rows]


# JobOut fields read from the job's column of the same name
_JOB_COLUMNS = (
    "id kind status created_at started_at finished_at updated_at name note spec result error attempt "
    "cancel_requested resumed_from resources device host worker"
).split()


# spec fields only training sets: an import never trained, so the defaults stored for them (epochs
# 100, seed 123) were never used and are left out of its view (the stored spec keeps them)
_TRAINING_ONLY = frozenset(
    "epochs seed lr loss train_batch_size test_batch_size compile precision cert_acc offset".split()
)


def job_out(job: Job, sweep_id: str | None = None) -> JobOut:
    """`sweep_id`: the sweep the job belongs to (core.store.sweeps.sweeps_of), if the caller looked."""
    spec = job.spec
    if job.kind == JobKind.import_:
        spec = {k: v for k, v in spec.items() if k not in _TRAINING_ONLY}
    return JobOut(
        **{name: getattr(job, name) for name in _JOB_COLUMNS if name != "spec"},
        spec=spec,
        tags=job.tags or [],
        # an import is itself a model: it links to its own id, as an evaluation links to its model's
        model_id=job.id if job.kind == JobKind.import_ else job.model_id,
        sweep_id=sweep_id,
        attack=job.params,
        progress=ProgressOut(**job.progress) if job.progress else None,
        metrics=job.latest_metrics,
    )


def model_out(job: Job) -> ModelOut:
    """A succeeded training job as a model: accuracies from its summary, else its last epoch."""
    summary: dict[str, Any] = job.result or {}
    last: dict[str, Any] = job.latest_metrics or {}

    def pick(key: str) -> Any:
        return summary.get(key, last.get(key))

    certified = {k.removeprefix("cert_acc_"): pick(k) for k in sorted({*summary, *last}) if k.startswith("cert_acc_")}
    return ModelOut(
        id=job.id,
        spec=job.spec,
        gamma=job.spec.get("gamma"),
        classes=summary.get("classes"),
        clean_acc=pick("test_acc"),
        certified_acc=certified,
        lipschitz_lower_bound=summary.get("lipschitz_lower_bound"),
        created_at=job.created_at,
        finished_at=job.finished_at,
    )
