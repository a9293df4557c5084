"""The one way jobs are made: every path that creates a job (POST /v1/jobs, sweeps, a sweep's
evaluation jobs, the paper's presets, imports) goes through these checks, in this order:

1. the spec is valid (ExperimentSpec; finite numbers only) and its image folder, if any, lies inside
   the server's data dir (`resolve_image_folder`: the folder checked is the folder read);
2. training it fits a worker (`check_cost`: lipcore.cost's estimate against LBDN_MAX_JOB_MEMORY_GB);
3. the tenant stays within LBDN_MAX_ACTIVE_JOBS_PER_TENANT queued + running jobs (`check_quota`,
   counting every job a request would add, so a sweep is refused whole);
4. the Idempotency-Key is the tenant's own (`check_idempotency_key`: keys under INTERNAL_KEY_PREFIX
   are the service's) and replays the job it made before (`submit`).

Nothing here knows HTTP: a refusal is a `Refused` (status, detail, headers) that the API turns into a
problem document, so these rules are tested without a server (tests/service/test_limits.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.settings import Settings
from core.states import ACTIVE, JobKind
from core.store import Job, jobs, workers
from lipcore.spec import IMAGE_FOLDER, ExperimentSpec

log = logging.getLogger("lbdn.submit")
# Idempotency keys the service gives its own jobs (a sweep's evaluations) start with this; a tenant's
# key that does too is refused, so a tenant can never occupy (and break) one of them.
INTERNAL_KEY_PREFIX = "sweep-eval:"


class Refused(Exception):
    """A submission the rules refuse: the HTTP status, a detail naming what was wrong and what was
    expected, and headers (Retry-After for 429)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def errors_text(errors: Sequence[Mapping[str, Any]]) -> str:
    """A pydantic error list as one line: 'field: message; ...' (a whole-spec error has no field)."""
    msgs = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        msgs.append(f"{where}: {msg}" if where else msg)
    return "; ".join(msgs) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")


def resolve_image_folder(spec: ExperimentSpec, settings: Settings) -> ExperimentSpec:
    """Check a user's image folder (it must lie inside the server's data dir: jobs never read
    elsewhere) and fill in its shape and classes from the image headers (lipcore.data, no torch).
    Every spec that names a `data_path` passes here: jobs, sweep points and imported models."""
    if spec.dataset != IMAGE_FOLDER or spec.data_path is None:
        return spec
    from lipcore.data import resolve_spec
    from lipcore.data.image_folder import folder_root

    root = settings.datasets_dir
    try:  # lipcore's own resolution (no `~` expansion), so the folder checked is the folder read
        folder = folder_root(spec.data_path, root, confine=True)
        is_dir = folder.is_dir()
    except (ValueError, OSError) as e:  # OSError: e.g. a name too long for the file system
        raise Refused(422, f"spec.data_path: {e}") from None
    if not is_dir:
        raise Refused(422, f"spec.data_path: no folder {spec.data_path!r} in the server's data dir")
    try:
        return resolve_spec(spec, root)
    except (OSError, ValueError) as e:  # DatasetNotFoundError is an OSError
        raise Refused(422, f"spec.data_path: {e}") from None


def check_cost(spec: ExperimentSpec, settings: Settings, where: str = "spec") -> None:
    """422 naming the estimate and the limit when training `spec` would not fit a worker."""
    if not spec.resolved:
        return
    # torch is imported lazily, on the first training spec checked (the estimate is cached per shape)
    from lipcore.cost import estimate_memory

    try:
        estimate = estimate_memory(spec)
    except Exception:  # an estimate that fails must not fail the request (the worker will tell)
        log.exception("memory estimate failed for %s", spec.run_name())
        return
    if estimate.total_bytes > settings.max_job_memory_gb * 2**30:
        raise Refused(
            422,
            f"{where}: training needs about {estimate.describe()}, over LBDN_MAX_JOB_MEMORY_GB "
            f"({settings.max_job_memory_gb:g} GiB); use a smaller train_batch_size or scale",
        )


def active_jobs(session: Session, tenant: str) -> int:
    """The tenant's queued + running jobs."""
    q = select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(ACTIVE))
    return int(session.scalar(q) or 0)


def check_quota(session: Session, tenant: str, settings: Settings, adding: int = 1) -> None:
    """429 when `adding` more jobs would take the tenant past LBDN_MAX_ACTIVE_JOBS_PER_TENANT queued +
    running jobs. Two requests at the same instant may both pass, so the limit can be exceeded by
    the jobs of parallel submits."""
    active, limit = active_jobs(session, tenant), settings.max_active_jobs_per_tenant
    if active + adding > limit:
        what = "a job" if adding == 1 else f"{adding} jobs"
        raise Refused(
            429,
            f"LBDN_MAX_ACTIVE_JOBS_PER_TENANT: your tenant has {active} jobs queued or running, {what} more "
            f"would pass the limit of {limit}; wait for jobs to finish or cancel some",
            headers={"Retry-After": "60"},
        )


def check_idempotency_key(key: str | None) -> None:
    """422 for a tenant's key in the service's own namespace (INTERNAL_KEY_PREFIX)."""
    if key is not None and key.startswith(INTERNAL_KEY_PREFIX):
        raise Refused(422, f"Idempotency-Key: keys starting with {INTERNAL_KEY_PREFIX!r} are the service's own")


def check_devices(session: Session, settings: Settings, asked: int) -> None:
    """422 when a job asks for more devices than any live worker owns (the store's worker registry,
    core.store.workers: workers report what they own; the API imports no training code for it)."""
    if asked <= 1:
        return
    largest = workers.most_devices(session, settings.worker_seen_s)
    if largest is None or largest["devices"] < asked:
        owned = (
            f"the largest worker seen in the last {settings.worker_seen_s:g} s, {largest['name']}, owns "
            f"{largest['devices']}"
            if largest
            else f"no worker has reported its devices in the last {settings.worker_seen_s:g} s"
        )
        raise Refused(
            422,
            f"resources.devices: {asked} devices asked for one job, but {owned}; ask for fewer or start a "
            "worker with more (lbdn worker --devices, LBDN_WORKER_DEVICES)",
        )


def prepare_training(spec: ExperimentSpec, settings: Settings, where: str = "spec") -> dict[str, Any]:
    """Rules 1-2 for a training spec: its data folder checked and resolved, its cost checked; the
    spec as stored (JSON)."""
    resolved = resolve_image_folder(spec, settings)
    check_cost(resolved, settings, where)
    return resolved.model_dump(mode="json")


def submit(
    session: Session,
    *,
    tenant: str,
    settings: Settings,
    kind: JobKind,
    spec: dict[str, Any],
    params: dict[str, Any] | None = None,
    model_id: str | None = None,
    idempotency_key: str | None = None,
    req_hash: str | None = None,
    internal: bool = False,
    resources: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Insert one queued job after the quota and idempotency rules; (job, created), not committed.

    `spec` is as stored (a training spec from `prepare_training`, an evaluation its model's spec).
    A replay of an earlier request by its Idempotency-Key creates nothing, so passes the quota;
    `internal` keys (the service's own, under INTERNAL_KEY_PREFIX) skip the namespace rule.
    """
    if not internal:
        check_idempotency_key(idempotency_key)
    replay = idempotency_key is not None and session.scalar(
        select(Job.id).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key)
    )
    if not replay:
        check_quota(session, tenant, settings)
    try:
        return jobs.create_job(
            session,
            tenant=tenant,
            kind=kind,
            spec=spec,
            params=params,
            model_id=model_id,
            idempotency_key=idempotency_key,
            req_hash=req_hash,
            resources=resources,
        )
    except jobs.IdempotencyConflict as e:
        raise Refused(422, str(e)) from None


def missing_dataset(dataset: str | None, data_dir: Path) -> str | None:
    """Why a model's known dataset (cifar10, cifar100, tiny_imagenet) cannot be read from `data_dir`,
    naming the directory and the command that fetches it; None when its folder is there (or the
    dataset is generated, or a user's folder checked elsewhere). Used at submission and by workers."""
    from lipcore.data.download import SOURCES

    source = SOURCES.get(dataset or "")
    if source is None or (data_dir / source.folder).is_dir():
        return None
    return (
        f"dataset {dataset} is not in the data directory {data_dir.absolute()} (LBDN_DATA_DIR; expected its "
        f"folder {source.folder}/): on the worker's machine run `lbdn download {dataset}`, or copy the "
        f"folder there ({source.url}, unpacked)"
    )


def check_dataset(spec: Mapping[str, Any], settings: Settings, where: str = "model_id") -> None:
    """422 when the data an evaluation reads is missing from the server's data dir. An API without
    a data dir at all (e.g. its volume not mounted) cannot know: the worker says so when it runs."""
    data_dir = settings.datasets_dir
    if not data_dir.is_dir():
        return
    why = missing_dataset(spec.get("dataset"), data_dir)
    if why:
        raise Refused(422, f"{where}: {why}")
