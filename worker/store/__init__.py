"""The job store: the source of truth for jobs, leases, progress, metrics, events, logs and API keys.

Imported by the API and the worker alike (never by lipcore). SQLite by default, PostgreSQL by URL.
"""

from worker.store import jobs, keys, leases, sweeps
from worker.store.engine import (
    ReleasingSession,
    init_db,
    make_engine,
    ping,
    releasing_session_factory,
    session_factory,
    transaction,
)
from worker.store.tables import FINISHED, JOB_STATES, ApiKey, Job, JobEvent, JobMetric, Sweep, SweepJob, utcnow

__all__ = [
    "FINISHED",
    "JOB_STATES",
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
]
