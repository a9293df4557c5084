"""What a task needs besides its job id: the settings the worker was started with and the job store.

Built once per worker from a Settings object (worker.app.WorkerApp) and handed to every task, so
tests run tasks with a context of their own instead of patching module state.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import ArtifactStore
from core.queue import CeleryQueue, JobQueue
from core.settings import Settings
from core.store import make_engine, session_factory


class TaskContext:
    """Settings, job-store sessions, artifact store and job queue of one worker.

    A forked pool child makes its own engine on first use (connections are not shared across a fork).
    """

    def __init__(self, settings: Settings, queue: JobQueue | None = None) -> None:
        self.settings = settings
        self._queue = queue
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._artifacts: ArtifactStore | None = None

    @property
    def engine(self) -> Engine:
        """This process's engine of the job store."""
        if self._pid != os.getpid() or self._engine is None:
            if self._engine is not None:
                self._engine.dispose(close=False)  # the parent's connections are not ours to close
            self._engine = make_engine(self.settings.db_url)
            self._sessions = session_factory(self._engine)
            self._pid = os.getpid()
        return self._engine

    def sessions(self) -> sessionmaker[Session]:
        """This process's session factory."""
        engine = self.engine
        assert self._sessions is not None and self._sessions.kw["bind"] is engine
        return self._sessions

    @property
    def artifacts(self) -> ArtifactStore:
        """Where jobs' files go (LBDN_ARTIFACTS; made on first use)."""
        if self._artifacts is None:
            self._artifacts = self.settings.artifact_store()
        return self._artifacts

    @property
    def queue(self) -> JobQueue:
        """The queue the reaper re-sends lost jobs to (made on first use)."""
        if self._queue is None:
            self._queue = CeleryQueue(self.settings)
        return self._queue
