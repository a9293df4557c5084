"""Job states, job kinds, event kinds and sweep roles: one definition for the tables, the API's
schemas and every comparison in the code. `StrEnum`, so each member is its own string value in
JSON, in SQL and in comparisons with plain strings."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Life of a job: queued -> running -> succeeded | failed | cancelled (running -> queued when
    its worker is lost or shuts down)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE = frozenset({JobState.queued, JobState.running})


class JobKind(StrEnum):
    """What a job does. `import_` ("import") is a model uploaded by a user: born succeeded, never run."""

    train = "train"
    evaluate = "evaluate"
    import_ = "import"


RUNNABLE_KINDS = (JobKind.train, JobKind.evaluate)  # the kinds a worker runs (core.queue.TASKS)
MODEL_KINDS = (JobKind.train, JobKind.import_)  # kinds whose folder holds a model.safetensors once succeeded


class EventKind(StrEnum):
    """Kinds of a job's numbered events (lbdn_job_events.kind; the `event:` of an event stream)."""

    state = "state"
    progress = "progress"
    metrics = "metrics"
    log = "log"


class SweepRole(StrEnum):
    """What a job does within a sweep (lbdn_sweep_jobs.role)."""

    train = "train"
    evaluate = "evaluate"
