"""GET /v1/jobs/{id}/sweep: the sweep a job belongs to, so the dashboard's job page can link to it.

A job row has no sweep column (sweeps link their jobs through lbdn_sweep_jobs), so this one small
read answers the question from the job's side; `sweep` is null for a job submitted on its own.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import SessionDep, TenantJob
from core.store.tables import Sweep, SweepJob

router = APIRouter(prefix="/v1/jobs", tags=["sweeps"])


@router.get("/{job_id}/sweep", summary="The sweep a job belongs to (null when none): id, name, preset, grid point")
def job_sweep(job: TenantJob, session: SessionDep) -> dict[str, Any]:
    q = (
        select(SweepJob, Sweep)
        .join(Sweep, Sweep.id == SweepJob.sweep_id)
        .where(SweepJob.job_id == job.id, Sweep.tenant == job.tenant)
    )
    row = session.execute(q.limit(1)).first()
    if row is None:
        return {"job_id": job.id, "sweep": None}
    link, sweep = row
    return {
        "job_id": job.id,
        "sweep": {
            "id": sweep.id,
            "name": sweep.name,
            "preset": sweep.preset,
            "role": link.role,
            "point": link.point,
            "train_job_id": link.train_job_id,
        },
    }
