"""Rows of the job store -> response models."""

from __future__ import annotations

from typing import Any

from api.schemas import JobOut, ModelOut, ProgressOut
from core.store import Job

# JobOut fields read from the job's column of the same name
_JOB_COLUMNS = (
    "id kind status created_at started_at finished_at updated_at spec model_id result error attempt "
    "cancel_requested resumed_from resources device host worker"
).split()


def job_out(job: Job) -> JobOut:
    return JobOut(
        **{name: getattr(job, name) for name in _JOB_COLUMNS},
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
