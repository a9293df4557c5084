"""GET /v1/jobs as a query: a tenant's jobs filtered by state, labels and spec fields, sorted by
creation or by a final metric, one page at a time.

Pages are keyset pages, so a job finished or submitted between two requests never shifts a page:
- sorted by creation the cursor is the pk of the page's last job (as before revision 0004);
- sorted by a metric it is that job's (metric value, pk): `"<pk>:<value>"`, or `"<pk>:null"` once
  the jobs without the metric (always last, whatever the direction) are reached. Ties on the value
  go newest first.
A job's metric is its final summary's (`result`, a finished training or evaluation) and otherwise
its latest epoch's (`latest_metrics`), read as a float.

Tags match exactly (every `tag` given must be on the job); `name` matches a substring, any case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from core.states import JobKind, JobState
from core.store.tables import Job, SweepJob

CREATED = "created"


@dataclass(frozen=True)
class JobQuery:
    """What a list asks for; None (or empty) filters nothing. `sort` is `created`, `-created`
    (newest first, the default) or a metric key with an optional `-` for largest first."""

    status: JobState | None = None
    kind: JobKind | None = None
    tags: tuple[str, ...] = ()
    name: str | None = None
    model: str | None = None
    layer: str | None = None
    dataset: str | None = None
    gamma: float | None = None
    seed: int | None = None
    sweep: str | None = None
    sort: str = "-created"

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    @property
    def key(self) -> str:
        return self.sort.removeprefix("-")


def _filters(q: JobQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if q.status:
        where.append(Job.status == q.status)
    if q.kind:
        where.append(Job.kind == q.kind)
    # tags are stored as a JSON list of strings whose charset (core.labels) has no quote or backslash,
    # so '"tag"' occurs in the stored text exactly when the tag is one of its elements
    where += [cast(Job.tags, Text).contains(f'"{tag}"', autoescape=True) for tag in q.tags]
    if q.name:
        where.append(Job.name.icontains(q.name, autoescape=True))
    for field in ("model", "layer", "dataset"):
        if (value := getattr(q, field)) is not None:
            where.append(Job.spec[field].as_string() == value)
    if q.gamma is not None:
        where.append(Job.spec["gamma"].as_float() == q.gamma)
    if q.seed is not None:
        where.append(Job.spec["seed"].as_integer() == q.seed)
    if q.sweep:
        where.append(Job.id.in_(select(SweepJob.job_id).where(SweepJob.sweep_id == q.sweep)))
    return where


def metric_value(key: str) -> ColumnElement[float]:
    """A job's final value of metric `key` (summary first, else its latest epoch), as a float."""
    return func.coalesce(Job.result[key].as_float(), Job.latest_metrics[key].as_float())


def _after(q: JobQuery, value: ColumnElement[float], cursor: str) -> ColumnElement[bool]:
    """The rows after the cursor's row in the metric order (nulls last, ties by pk descending)."""
    pk_text, _, last = cursor.partition(":")
    pk = int(pk_text)
    if last in ("", "null"):  # already among the jobs without the metric
        return and_(value.is_(None), Job.pk < pk)
    v = float(last)
    beyond = value < v if q.descending else value > v
    return or_(beyond, and_(value == v, Job.pk < pk), value.is_(None))


def _sorted(q: JobQuery, stmt: Select[Job], cursor: str | None) -> Select[Job]:
    if q.key == CREATED:
        if cursor is not None:
            pk = int(cursor.partition(":")[0])
            stmt = stmt.where(Job.pk < pk if q.descending else Job.pk > pk)
        return stmt.order_by(Job.pk.desc() if q.descending else Job.pk.asc())
    value = metric_value(q.key)
    if cursor is not None:
        stmt = stmt.where(_after(q, value, cursor))
    return stmt.order_by(value.is_(None), value.desc() if q.descending else value.asc(), Job.pk.desc())


def cursor_of(q: JobQuery, job: Job) -> str:
    """The cursor that continues a page after `job` (see the module's docstring)."""
    if q.key == CREATED:
        return str(job.pk)
    value = _final(job, q.key)
    return f"{job.pk}:{'null' if value is None else repr(value)}"


def _final(job: Job, key: str) -> float | None:
    for source in (job.result, job.latest_metrics):
        raw: Any = (source or {}).get(key)
        if raw is not None:
            try:
                return float(raw)
            except (TypeError, ValueError):
                return None
    return None


def search_jobs(s: Session, tenant: str, q: JobQuery, *, limit: int = 50, cursor: str | None = None) -> list[Job]:
    """One page of the tenant's jobs matching `q`, in its order, after `cursor` (None: the first)."""
    stmt = select(Job).where(Job.tenant == tenant, *_filters(q))
    return list(s.scalars(_sorted(q, stmt, cursor).limit(limit)))
