"""The job queue: how the service asks a worker to run a job. Light enough for the API to import:
messages go out by task name, so no task (and no training code) is imported here.

Broker messages only carry work ("run job X"); the job store holds everything else, so a message
may be lost or delivered twice without harm (see core.store.leases). The Celery settings are those
of long GPU jobs, each explained where `configure_celery` sets it. The Celery app that consumes these messages, and
its tasks, are the worker's (worker.app, worker.tasks); both sides configure Celery with
`configure_celery`, so producer and consumer agree on queues and routes.

Embedded default broker: kombu's SQLAlchemy transport on a SQLite file (`sqla+sqlite:///`), chosen
over `filesystem://` because it needs no folder layout shared by name between processes, takes
messages with BEGIN IMMEDIATE (one consumer per message), and Celery 5.7 runs it as is. Its limits
(at-most-once: a SIGKILLed worker's message is not redelivered; no revoke/inspect) do not matter
here: crash recovery comes from our leases and reaper, and cancellation from the jobs table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from celery import Celery
from kombu import Queue
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from core.states import JobKind
from core.store import leases, transaction

log = logging.getLogger("lbdn.queue")

TASKS = {JobKind.train: "lbdn.train", JobKind.evaluate: "lbdn.evaluate"}  # job kind -> task name


def configure_celery(app: Celery, settings: Settings) -> None:
    """Give `app` the service's Celery settings (broker options, queues, routes, acks)."""
    # The sqla transport hands its transport options to create_engine(), so it gets none (and
    # polls every second); Redis gets a visibility timeout longer than any job.
    transport = {} if settings.embedded_broker else {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        task_acks_late=True,  # a worker lost mid-job leaves its message to be redelivered...
        task_reject_on_worker_lost=True,  # ...also when the pool child dies (bounded by our attempt count)
        worker_prefetch_multiplier=1,  # a long job must not reserve the next one
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_ignore_result=True,  # job state lives in our database, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(settings.gpu_queue), Queue(settings.cpu_queue)],
        task_default_queue=settings.cpu_queue,
        task_routes={name: {"queue": settings.gpu_queue} for name in TASKS.values()},
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )


def make_celery(settings: Settings) -> Celery:
    """A Celery app that only sends (the API's, the reaper's): no tasks included."""
    app = Celery("lbdn", broker=settings.broker)
    configure_celery(app, settings)
    return app


class JobQueue(Protocol):
    """What the API and the reaper need of the queue (tests may pass their own)."""

    def enqueue(self, job_id: str, kind: JobKind) -> None: ...

    def batch(self) -> AbstractContextManager[Callable[[str, JobKind], None]]:
        """`enqueue` for many messages, known sent only when the block ends without error."""
        ...

    def ping(self, timeout: float = 3.0) -> None: ...

    def broker_lost_messages(self) -> bool: ...


SEND_BATCH = 500  # messages per pipelined batch: one Redis round trip each, a bounded loss to re-send


def send_jobs(queue: JobQueue, sessions: sessionmaker[Session], todo: Sequence[tuple[str, JobKind]]) -> list[str]:
    """Send the messages of committed queued jobs (id, kind), in order; returns the ids sent.

    The job store already holds each job, so a broker that refuses one is no error for the caller:
    the jobs not known to be sent are marked unsent (enqueued_at NULL) and the next reaper pass
    sends them. Messages go SEND_BATCH at a time through `queue.batch()` (on Redis one pipelined
    round trip), whose delivery is known only when it ends: a failed batch's jobs are all marked
    unsent (some may get a second message, which is harmless: a job runs only under its lease).
    """
    sent: list[str] = []
    try:
        for start in range(0, len(todo), SEND_BATCH):
            chunk = todo[start : start + SEND_BATCH]
            with queue.batch() as enqueue:
                for job_id, kind in chunk:
                    enqueue(job_id, kind)
            sent += [job_id for job_id, _ in chunk]
    except Exception as e:
        rest = [job_id for job_id, _ in todo[len(sent) :]]
        log.warning("could not send %d job(s) to the broker (%s); the reaper will send them", len(rest), e)
        with transaction(sessions) as s:
            for job_id in rest:
                leases.mark_unsent(s, job_id)
    return sent


class CeleryQueue:
    """The JobQueue of the service: Celery messages to the queues of `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.settings = settings

    def enqueue(self, job_id: str, kind: JobKind) -> None:
        """Send the message that makes a worker run job `job_id` (kind train or evaluate).

        Raises kombu/redis errors when the broker cannot take it; retries briefly first.
        """
        self._send(job_id, kind, None)

    @contextmanager
    def batch(self) -> Iterator[Callable[[str, JobKind], None]]:
        """`enqueue` for many messages: one producer, and on Redis one pipeline (kombu's
        Producer.batch) executed when the block ends, so the messages cost one round trip, not one
        each (a reaper pass re-sending 10,000 jobs spent 36 s sending them one at a time on a
        loaded machine). Other brokers publish at once. Raises (kombu's BatchPublishError on
        Redis) when the broker did not take them all; which of them it took is then unknown."""
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=SEND_BATCH):
            yield lambda job_id, kind: self._send(job_id, kind, producer)

    def _send(self, job_id: str, kind: JobKind, producer: Any) -> None:
        self.app.send_task(
            TASKS[JobKind(kind)],
            args=[job_id],
            producer=producer,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        )

    def ping(self, timeout: float = 3.0) -> None:
        """Raise if the broker cannot be reached within `timeout` seconds."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    def broker_lost_messages(self) -> bool:
        """True when the broker may have lost its queued messages since any process last asked.

        Redis without persistence loses every message when it restarts, and the jobs they carried
        would wait LBDN_RESEND_QUEUED_AFTER_S (10 min by default) beside an idle worker. A marker
        key lives in Redis beside the messages and goes with them: when it is missing (a restart, a
        FLUSHALL, or the first start of a deployment), one caller sets it (SET NX, so of several
        workers exactly one answers True) and re-sends every queued job. Redis restored from a
        snapshot brings the marker back with the messages of that moment; messages sent after it
        are left to the stale re-send. Asked through the broker connection Celery makes (its URL and
        TLS options). Brokers other than Redis (the embedded one keeps its messages in a file):
        False. Raises redis errors when Redis is unreachable.
        """
        with self.app.connection_for_write() as conn:
            if conn.transport.driver_type != "redis":
                return False
            return bool(conn.default_channel.client.set(self.marker_key, "1", nx=True))

    @property
    def marker_key(self) -> str:
        """The Redis key whose absence means the queued messages may be gone (see above)."""
        return f"{self.settings.queue_prefix}lbdn.broker-marker"

    def close(self) -> None:
        """Release the broker connection pool (the API calls it at shutdown)."""
        self.app.close()
