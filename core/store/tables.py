"""The job store's tables (SQLAlchemy 2 declarative). SQLite and PostgreSQL alike.

Jobs carry their own lease (lease_owner, lease_expires_at) and attempt counter: the database, not the
broker, decides which worker runs a job. Events (state, progress, metrics, log lines) are numbered
per job by `jobs.event_seq`, so an event stream can resume from a sequence number.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.states import FINISHED, EventKind, JobKind, JobState, SweepRole

__all__ = ["FINISHED", "ApiKey", "Base", "Job", "JobEvent", "JobMetric", "Sweep", "SweepJob", "Worker", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use utcnow()")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class StrEnumType(TypeDecorator[Any]):
    """A StrEnum stored as its plain string value in VARCHAR(20) (the schema of the first release:
    no database enum type, no CHECK), read back as the enum member."""

    impl = String(20)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value  # an unknown value fails here, not later

    def process_result_value(self, value: str | None, dialect: Any) -> StrEnum | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
        JobState: StrEnumType(JobState),
        JobKind: StrEnumType(JobKind),
        EventKind: StrEnumType(EventKind),
        SweepRole: StrEnumType(SweepRole),
    }


_RUNNING, _QUEUED = text("status = 'running'"), text("status = 'queued'")


class Job(Base):
    __tablename__ = "lbdn_jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_lbdn_jobs_idempotency"),
        Index("ix_lbdn_jobs_tenant_pk", "tenant", "pk"),
        Index("ix_lbdn_jobs_status", "status"),
        Index("ix_lbdn_jobs_tenant_name", "tenant", "name"),  # revision 0004
        # the reaper's scans (revision 0003): only unfinished rows, so finished jobs cost them nothing
        Index("ix_lbdn_jobs_running_lease", "lease_expires_at", postgresql_where=_RUNNING, sqlite_where=_RUNNING),
        Index("ix_lbdn_jobs_queued_sent", "enqueued_at", postgresql_where=_QUEUED, sqlite_where=_QUEUED),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # list order
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100))
    kind: Mapped[JobKind] = mapped_column()
    status: Mapped[JobState] = mapped_column(default=JobState.queued)
    spec: Mapped[dict[str, Any]] = mapped_column()  # the ExperimentSpec (resolved once trained)
    params: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # evaluate: attack settings
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # evaluate: the trained job
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)  # last message sent
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    progress: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # training summary / eval
    resumed_from: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # starts so far
    event_seq: Mapped[int] = mapped_column(Integer, default=0)  # last event number used
    # where the job runs or ran (revision 0002): e.g. "cuda:1" or "cpu:0,cpu:1", the host, the worker
    resources: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # asked for: {"devices": 2}
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # what the user calls the run (revision 0004; core.labels checks them): set at submission or by PATCH
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tags: Mapped[list[Any] | None] = mapped_column(nullable=True)  # lowercase strings, see core.labels
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class Worker(Base):
    """A running `lbdn worker` and the devices it owns (revision 0002), seen every reap interval:
    the API refuses a job asking for more devices than any worker seen lately owns."""

    __tablename__ = "lbdn_workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery node name
    host: Mapped[str] = mapped_column(String(200))
    devices: Mapped[list[Any]] = mapped_column()  # ["cuda:0", "cuda:1"] or ["cpu:0", ...]
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """One numbered event of a job: kind state | progress | metrics | log."""

    __tablename__ = "lbdn_job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_lbdn_job_events_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("lbdn_jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[EventKind] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    """One epoch's metrics; (job_id, epoch) is unique, so a resumed run cannot record an epoch twice."""

    __tablename__ = "lbdn_job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("lbdn_jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column()


class ApiKey(Base):
    """A bearer key of a tenant; only its SHA-256 is stored."""

    __tablename__ = "lbdn_api_keys"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)  # public handle, "key_..."
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Sweep(Base):
    """A group of jobs made from one request: a base spec with a grid, or one of the paper's presets.

    Its jobs are ordinary rows of lbdn_jobs, linked through lbdn_sweep_jobs (no column is added to
    the jobs table). `evaluate` holds the attack settings of the evaluation job that follows each
    succeeded training job (None: training only).
    """

    __tablename__ = "lbdn_sweeps"
    __table_args__ = (
        Index("ix_lbdn_sweeps_tenant_pk", "tenant", "pk"),
        Index("uq_lbdn_sweeps_idempotency", "tenant", "idempotency_key", unique=True),  # revision 0006
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # list order
    id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column()  # what was asked for (base spec + grid, or preset)
    evaluate: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)  # as a job's
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SweepJob(Base):
    """One job of a sweep: its grid point, and for an evaluation job the training job it evaluates.

    job_id is deliberately not a foreign key: a user may delete a finished job, and the sweep then
    reports it as deleted instead of losing the row.
    """

    __tablename__ = "lbdn_sweep_jobs"
    # which sweep a job is in (every job read asks): the key (sweep_id, job_id) cannot answer it
    __table_args__ = (Index("ix_lbdn_sweep_jobs_job_id", "job_id"),)  # revision 0005

    sweep_id: Mapped[str] = mapped_column(ForeignKey("lbdn_sweeps.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    role: Mapped[SweepRole] = mapped_column()
    position: Mapped[int] = mapped_column(Integer)  # order of the grid
    point: Mapped[dict[str, Any]] = mapped_column()  # the grid values of this job (gamma, layer, ...)
    train_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # evaluate: the trained job
