"""The one way jobs are made: every job row is inserted here, after these checks, in this order.
`submit_job` is POST /v1/jobs; sweeps and the paper's presets (core.sweep_submit.submit_sweep) insert
their training jobs with `submit_all`, and their evaluation jobs with `submit`; an import is
`record_import` (born succeeded: nothing to queue, so no quota; its spec passes rule 1).

1. the spec is valid (ExperimentSpec; finite numbers only) and its image folder, if any, lies inside
   the server's data dir (`resolve_image_folder`: the folder checked is the folder read);
2. training it fits a worker (`check_cost`: lipcore.cost's estimate against LBDN_MAX_JOB_MEMORY_GB;
   `check_devices`: some live worker owns the devices it asks for);
3. the tenant stays within LBDN_MAX_ACTIVE_JOBS_PER_TENANT queued + running jobs (`check_quota`,
   counting every job a request would add, so a sweep is refused whole);
4. the Idempotency-Key is the tenant's own (`check_idempotency_key`: keys under INTERNAL_KEY_PREFIX
   are the service's) and replays the job it made before (`submit`).

Every way in may give the job its labels (core.labels: name, tags, note; already checked, they pass
no rule and change nothing that runs).

Nothing here knows HTTP: a refusal is a `Refused` (status, detail, headers) that the API turns into a
problem document, so these rules are tested without a server (tests/service/test_submit.py, test_limits.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.labels import NONE, Labels
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
    labels: Labels = NONE,
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
            labels=labels,
        )
    except jobs.IdempotencyConflict as e:
        raise Refused(422, str(e)) from None


def submit_all(
    session: Session,
    *,
    tenant: str,
    settings: Settings,
    specs: Sequence[dict[str, Any]],
    labels: Sequence[Labels] | None = None,
) -> list[Job]:
    """Insert one queued training job per stored spec (from `prepare_training`; `labels` one per
    spec) after the quota for all of them, so a sweep is refused whole; not committed."""
    check_quota(session, tenant, settings, adding=len(specs))
    each = labels if labels is not None else [NONE] * len(specs)
    return [
        jobs.create_job(session, tenant=tenant, kind=JobKind.train, spec=spec, labels=label)[0]
        for spec, label in zip(specs, each, strict=True)
    ]


@dataclass(frozen=True)
class JobAsk:
    """One job as a tenant asks for it (api.schemas.JobRequest without HTTP): a training `spec`, or
    the evaluation (attack `params`) of `model`, a model of the tenant's (a succeeded training job
    or an import, found by the caller)."""

    spec: ExperimentSpec | None = None
    model: Job | None = None
    params: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    idempotency_key: str | None = None
    req_hash: str | None = None
    labels: Labels = NONE


def submit_job(session: Session, *, tenant: str, settings: Settings, ask: JobAsk) -> tuple[Job, bool]:
    """POST /v1/jobs without HTTP: every rule (see the module's docstring), then `submit`;
    (job, created), not committed."""
    check_idempotency_key(ask.idempotency_key)
    if ask.model is not None:
        spec, kind = ask.model.spec, JobKind.evaluate
        # torch-free: a model's task is on its card
        from lipcore.catalog import get_card

        if get_card(str(spec.get("model"))).task != "classifier":
            raise Refused(
                422,
                f"model_id: the {spec.get('model')} regression has no classes to attack; evaluate an image classifier",
            )
        check_dataset(spec, settings)  # its test data must be there: say so now, not after the queue
    elif ask.spec is not None:
        spec, kind = prepare_training(ask.spec, settings), JobKind.train
        check_devices(session, settings, int((ask.resources or {}).get("devices", 1)))
    else:
        raise ValueError("a JobAsk names a training spec or a model to evaluate")
    return submit(
        session,
        tenant=tenant,
        settings=settings,
        kind=kind,
        spec=spec,
        params=ask.params,
        model_id=ask.model.id if ask.model is not None else None,
        idempotency_key=ask.idempotency_key,
        req_hash=ask.req_hash,
        resources=ask.resources if kind == JobKind.train else None,
        labels=ask.labels,
    )


def record_import(
    session: Session, *, tenant: str, spec: ExperimentSpec, result: dict[str, Any], labels: Labels = NONE
) -> Job:
    """An imported model's job, born succeeded (`spec` from `resolve_image_folder`: the data-path
    rule); not committed. Imports have limits of their own (api.import_limits: rate, stored bytes)
    and never take a place in the active-jobs quota: they never run."""
    return jobs.create_succeeded_job(
        session, tenant=tenant, kind=JobKind.import_, spec=spec.model_dump(mode="json"), result=result, labels=labels
    )


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
