"""Recovering lost work: jobs whose worker died, and queued jobs whose broker message was lost.

Runs in every worker (at start-up and every LBDN_REAP_INTERVAL_S) and once in the API at start-up,
where every queued job is re-sent because a broker without persistence (Redis restarted) may have
lost all messages. A worker's pass re-sends every queued job too when the broker says it may have
lost its messages since (Redis restarted while the service ran: JobQueue.broker_lost_messages);
otherwise it re-sends those queued longer than LBDN_RESEND_QUEUED_AFTER_S. Duplicate messages are
harmless: a job runs only under its lease. A worker's pass also makes the evaluation jobs of sweeps
whose training jobs succeeded (if the worker that finished one could not).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from core.queue import JobQueue, send_jobs
from core.settings import Settings
from core.store import leases, transaction

log = logging.getLogger("lbdn.reaper")


def reap_and_resend(
    sessions: sessionmaker[Session],
    queue: JobQueue,
    settings: Settings,
    *,
    everything_queued: bool = False,
    sent_before: float | None = None,
) -> list[str]:
    """One pass; returns the ids of the jobs whose message was (re-)sent. Queued jobs re-sent:
    every one (everything_queued), those not sent since the UNIX time `sent_before`, else those
    sent longer than LBDN_RESEND_QUEUED_AFTER_S ago."""
    after_s: float | None = settings.resend_queued_after_s
    if everything_queued:
        after_s = None
    elif sent_before is not None:
        after_s = max(0.0, time.time() - sent_before)
    with transaction(sessions) as s:
        todo = leases.reap(s, max_attempts=settings.max_attempts, resend_queued_after_s=after_s)
    sent = send_jobs(queue, sessions, [(item.job_id, item.kind) for item in todo])
    if sent:
        log.info("re-sent %d job(s): %s", len(sent), ", ".join(sent))
    return sent


class PeriodicReaper(threading.Thread):
    """A daemon thread running `reap_and_resend` every `settings.reap_interval_s` until stopped."""

    def __init__(self, sessions: sessionmaker[Session], queue: JobQueue, settings: Settings) -> None:
        super().__init__(name="lbdn-reaper", daemon=True)
        self.sessions, self.queue, self.settings = sessions, queue, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        # here, not at the top: importing core.reaper (as the API does) loads no lipcore model cards
        from core.sweep_submit import advance_sweeps

        resend_all = False  # stays set until a pass has re-sent everything queued
        while not self.stopped.is_set():
            try:
                if self.queue.broker_lost_messages():
                    log.warning("the broker may have lost its messages (restarted?): re-sending every queued job")
                    resend_all = True
            except Exception as e:
                log.warning("could not ask the broker whether it kept its messages: %s", e)
            try:
                reap_and_resend(self.sessions, self.queue, self.settings, everything_queued=resend_all)
                resend_all = False
            except Exception:
                log.exception("reaper pass failed")
            try:  # a backstop: the worker that finishes a sweep's training job advances it at once
                advance_sweeps(self.sessions, self.queue, self.settings)
            except Exception:
                log.exception("advancing sweeps failed")
            self.stopped.wait(self.settings.reap_interval_s)

    def stop(self) -> None:
        self.stopped.set()
