"""The job store: the source of truth for jobs, leases, progress, metrics, events, logs and API keys.

Imported by the API and the worker alike (never by lipcore). SQLite by default, PostgreSQL by URL.
"""

from core.states import FINISHED
from core.store import jobs, keys, leases, sweeps, workers
from core.store.engine import (
    ReleasingSession,
    init_db,
    make_engine,
    ping,
    releasing_session_factory,
    session_factory,
    transaction,
)
from core.store.tables import ApiKey, Job, JobEvent, JobMetric, Sweep, SweepJob, Worker, utcnow

__all__ = [
    "FINISHED",
    "ApiKey",
    "Job",
    "JobEvent",
    "JobMetric",
    "ReleasingSession",
    "init_db",
    "jobs",
    "keys",
    "leases",
    "make_engine",
    "ping",
    "releasing_session_factory",
    "Sweep",
    "SweepJob",
    "sweeps",
    "session_factory",
    "transaction",
    "utcnow",
    "Worker",
    "workers",
]
