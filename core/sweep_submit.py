"""Sweeps through the submission rules (core.submit): counted before anything is expanded, every
point validated and costed, the whole sweep refused when it would pass a limit; and the sweep's
evaluation jobs, made by the worker that finishes a training job (and by the reaper, as a backstop),
never by a read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Text, and_, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from core.labels import MAX_NAME, Labels
from core.queue import JobQueue, send_jobs
from core.settings import Settings
from core.states import JobKind, JobState, SweepRole
from core.store import Job, Sweep, SweepJob, jobs, sweeps, transaction
from core.submit import (
    Refused,
    check_cost,
    check_idempotency_key,
    check_quota,
    errors_text,
    resolve_image_folder,
    submit,
    submit_all,
)
from lipcore.spec import ExperimentSpec

log = logging.getLogger("lbdn.sweeps")


@dataclass(frozen=True)
class SweepAsk:
    """What a sweep request asks for (api.schemas.SweepRequest without HTTP): a preset, or a base
    spec with a grid; `overrides` are set on every job, `only` keeps the matching jobs."""

    preset: str | None = None
    spec: dict[str, Any] | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    epochs: int | None = None
    seeds: list[int] | None = None
    overrides: dict[str, Any] | None = None
    only: dict[str, list[Any]] | None = None


def grid_size(grid: dict[str, list[Any]]) -> int:
    """The number of points of `grid` (the product of its value lists' lengths), without expanding
    it; 422 for a key other than GRID_KEYS or an empty list."""
    from lipcore.catalog.presets import GRID_KEYS  # torch-free, but only the API and the tests need the presets

    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise Refused(422, f"grid: unknown keys {sorted(unknown)}; expected some of {list(GRID_KEYS)}")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise Refused(422, f"grid.{k}: expected a non-empty list of values")
    return math.prod(len(v) for v in grid.values())


def count_jobs(ask: SweepAsk) -> int:
    """An upper bound of the sweep's training jobs (equal specs collapse later), from sizes alone."""
    from lipcore.catalog.presets import PRESETS

    seeds = {"seed": ask.seeds} if ask.seeds is not None else {}
    if ask.preset is not None:
        preset = PRESETS.get(ask.preset)
        if preset is None:
            raise Refused(422, f"preset: no preset {ask.preset!r}; expected one of {sorted(PRESETS)}")
        return sum(grid_size({**line.grid, **seeds}) for line in preset.lines)
    return grid_size({**ask.grid, **seeds})


def _raw_points(ask: SweepAsk) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    from lipcore.catalog.presets import PRESETS, dedupe, expand

    if ask.preset is not None:
        made = PRESETS[ask.preset].specs(ask.epochs, ask.seeds)
    else:
        base, grid = dict(ask.spec or {}), dict(ask.grid)
        if ask.epochs is not None:
            base["epochs"] = ask.epochs
        if ask.seeds is not None:
            base.pop("seed", None)
            grid["seed"] = list(ask.seeds)
        made = dedupe(expand(base, grid))
    if ask.overrides:
        made = [({**spec, **ask.overrides}, point) for spec, point in made]
    return made


def plan_sweep(
    session: Session, tenant: str, settings: Settings, ask: SweepAsk
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (stored spec, grid point) of every training job of the sweep, after every rule: at most
    LBDN_MAX_JOBS_PER_SWEEP points (counted before expanding), each spec valid with its data folder
    inside the data dir and within the cost ceiling (overrides included), and the tenant's quota
    room for all of them. Raises Refused for the whole sweep; creates nothing."""
    bound, most = count_jobs(ask), settings.max_jobs_per_sweep
    if bound > most:
        raise Refused(422, f"grid: {bound} jobs; a sweep holds at most {most} (LBDN_MAX_JOBS_PER_SWEEP)")
    resolved = []
    for fields, point in _raw_points(ask):
        where = ", ".join(f"{k}={v}" for k, v in point.items()) or "the base spec"
        try:
            spec = ExperimentSpec.model_validate(fields)
        except ValidationError as e:
            raise Refused(422, f"spec at {where}: {errors_text(e.errors())}") from None
        done = resolve_image_folder(spec, settings)
        # the point as resolved (a Plain network has no gamma), so equal specs collapse to one job
        fields = done.model_dump()
        resolved.append((done, {k: fields.get(k, v) for k, v in point.items()}))
    resolved = dedupe_specs(resolved)
    if ask.only:
        resolved = [(spec, point) for spec, point in resolved if _matches(spec.model_dump(), ask.only)]
        if not resolved:
            raise Refused(422, f"only: no job of the sweep matches {ask.only}")
    check_quota(session, tenant, settings, adding=len(resolved))  # before the costs: no torch for a refusal
    out = []
    for spec, point in resolved:
        check_cost(
            spec, settings, where="spec at " + (", ".join(f"{k}={v}" for k, v in point.items()) or "the base spec")
        )
        out.append((spec.model_dump(mode="json"), point))
    return out


def dedupe_specs(
    items: list[tuple[ExperimentSpec, dict[str, Any]]],
) -> list[tuple[ExperimentSpec, dict[str, Any]]]:
    """Drop repeated specs (ExperimentSpec is frozen, so hashable), keeping the first's point."""
    seen: set[ExperimentSpec] = set()
    out = []
    for spec, point in items:
        if spec not in seen:
            seen.add(spec)
            out.append((spec, point))
    return out


def _matches(spec: dict[str, Any], only: dict[str, list[Any]]) -> bool:
    """True when every field named in `only` has one of its values (numbers compared as numbers,
    "none" matching an unset field such as a Plain network's gamma)."""
    for key, values in only.items():
        if key not in spec:
            raise Refused(422, f"only.{key}: not a spec field")
        have = spec[key]
        if not any(
            have == v
            or (isinstance(have, (int, float)) and _number(v) == have)
            or (have is None and str(v).lower() in ("none", "null"))
            for v in values
        ):
            return False
    return True


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return None


def sweeps_to_advance(s: Session, job_id: str | None = None) -> list[int]:
    """Primary keys of sweeps with a succeeded training job (`job_id`, or any) not yet evaluated."""
    ev = aliased(SweepJob)
    # a JSON column stores None as JSON null, not SQL NULL (cancel_sweep sets it so)
    _evaluates = cast(Sweep.evaluate, Text) != "null"
    q = (
        select(Sweep.pk)
        .join(SweepJob, and_(SweepJob.sweep_id == Sweep.id, SweepJob.role == SweepRole.train))
        .join(Job, Job.id == SweepJob.job_id)
        .outerjoin(ev, and_(ev.sweep_id == Sweep.id, ev.train_job_id == Job.id))
        .where(_evaluates, Job.status == JobState.succeeded, ev.job_id.is_(None))
        .distinct()
    )
    if job_id is not None:
        q = q.where(Job.id == job_id)
    return list(s.scalars(q))


def submit_sweep(
    session: Session,
    *,
    tenant: str,
    settings: Settings,
    ask: SweepAsk,
    name: str,
    request: dict[str, Any],
    evaluate: dict[str, Any] | None,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
    req_hash: str | None = None,
) -> tuple[Sweep, list[Job]]:
    """POST /v1/sweeps without HTTP: the sweep planned under every rule (`plan_sweep`), then its
    training jobs made (core.submit.submit_all) and recorded in grid order; not committed.
    `request` is stored as asked; `evaluate` holds the attack settings of its evaluation jobs.
    Each job is named after the sweep and its grid point ("name gamma=1.0 layer=SLL") and has `tags`.

    With an `idempotency_key` the tenant already gave a sweep, that sweep is returned with no jobs
    made (a sweep always has at least one, so an empty list means a replay), whether it was made
    before or by a concurrent retry; with another `req_hash` (another body) it is a 422."""
    check_idempotency_key(idempotency_key)
    if idempotency_key is not None and (earlier := sweeps.by_idempotency_key(session, tenant, idempotency_key)):
        return _replay(earlier, req_hash), []
    planned = plan_sweep(session, tenant, settings, ask)
    labels = [Labels(name=point_name(name, point), tags=tags) for _, point in planned]
    try:
        with session.begin_nested():  # a concurrent retry with the same key may win: undo our jobs too
            made = submit_all(
                session, tenant=tenant, settings=settings, specs=[spec for spec, _ in planned], labels=labels
            )
            sweep = sweeps.create_sweep(
                session,
                tenant=tenant,
                name=name,
                preset=ask.preset,
                request=request,
                evaluate=evaluate,
                trained=[(job, point) for job, (_, point) in zip(made, planned, strict=True)],
                idempotency_key=idempotency_key,
                req_hash=req_hash,
            )
    except IntegrityError:
        earlier = sweeps.by_idempotency_key(session, tenant, idempotency_key) if idempotency_key else None
        if earlier is None:
            raise
        return _replay(earlier, req_hash), []
    return sweep, made


def _replay(sweep: Sweep, req_hash: str | None) -> Sweep:
    try:
        return jobs.replay(sweep, req_hash)  # the rule of POST /v1/jobs
    except jobs.IdempotencyConflict as e:
        raise Refused(422, str(e)) from None


def point_name(sweep_name: str, point: dict[str, Any]) -> str:
    """A sweep job's name: the sweep's, then its grid values (within core.labels.MAX_NAME)."""
    values = " ".join(f"{k}={v}" for k, v in sorted(point.items()) if v is not None)
    return f"{sweep_name} {values}".strip()[:MAX_NAME]


def _add_evaluations(s: Session, settings: Settings, sweep: Sweep) -> list[str]:
    """Ids of the sweep's evaluation jobs made now (core.submit.submit, under the tenant's quota:
    those it has no room for wait for a later pass)."""
    made = []
    for link, trained in sweeps.pending_evaluations(s, sweep):
        try:
            job, created = submit(
                s,
                tenant=sweep.tenant,
                settings=settings,
                kind=JobKind.evaluate,
                spec=trained.spec,
                params=sweep.evaluate,
                model_id=trained.id,
                idempotency_key=sweeps.evaluation_key(sweep, trained),
                req_hash=f"sweep-eval:{trained.id}",
                internal=True,
                labels=Labels(name=trained.name, tags=trained.tags),
            )
        except Refused as e:
            if e.status == 429:
                log.info("sweep %s: tenant %s is at its job quota; evaluations wait", sweep.id, sweep.tenant)
                break
            continue  # the key held by a tenant's job from before the namespace was reserved
        if created and sweeps.link_evaluation(s, sweep, link, job):
            made.append(job.id)
    return made


def advance_sweeps(
    sessions: sessionmaker[Session], queue: JobQueue, settings: Settings, job_id: str | None = None
) -> list[str]:
    """Make and send the evaluation jobs of succeeded training jobs (of `job_id` only, or of every
    sweep); idempotent (each evaluation's key derives from its trained job). An evaluation the
    tenant's quota has no room for now waits for a later pass. Returns the ids of the jobs made."""
    made: list[str] = []
    with transaction(sessions) as s:
        for pk in sweeps_to_advance(s, job_id):
            sweep = s.get(Sweep, pk)
            if sweep is not None:
                made += _add_evaluations(s, settings, sweep)
    send_jobs(queue, sessions, [(m, JobKind.evaluate) for m in made])
    return made
