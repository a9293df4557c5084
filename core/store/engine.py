"""Engine and sessions of the job store: SQLite (WAL, busy timeout) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, make_url, text
from sqlalchemy.engine import Result
from sqlalchemy.orm import Session, sessionmaker

from core.store.migrate import upgrade

SQLITE_BUSY_MS = 30_000  # the API, the worker and its heartbeat thread write the same file


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; creates the SQLite file's folder. Tables are made by `init_db`."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers (API, event streams) run beside the one writer of the moment.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def init_db(engine: Engine) -> None:
    """Bring the schema up to date with the migrations (core.store.migrate): creates the tables of
    an empty database, upgrades an older one. Idempotent; processes starting together take turns."""
    upgrade(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: rows read in a session stay usable after it closes (responses, tasks).
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session


def rows_changed(s: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE and return how many rows it changed (0: its condition did not hold)."""
    result = s.execute(statement)
    assert isinstance(result, CursorResult)
    return result.rowcount


def ping(engine: Engine) -> None:
    """Raise if the database cannot be reached."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


class ReleasingSession(Session):
    """A session that holds a pooled connection only while it has work in flight.

    A SELECT that leaves nothing pending ends its transaction at once (its rows are buffered
    first), so the connection goes back to the pool before the statement returns. A write (a
    flush, or any statement that is not a SELECT) keeps the transaction, and its connection, until
    the caller commits or rolls back, so multi-statement writes stay atomic. The API's request
    handlers use it: FastAPI runs a request's dependencies and its route in separate thread-pool
    calls, and a connection kept between those calls is what let 40 waiting threads deadlock
    against 15 connections held by requests that could not get a thread (issue 7). With this
    session a connection is taken and given back within one thread-pool call, so no thread ever
    waits for a connection held by a request that itself waits for a thread.
    Reads see the database as of each statement (read committed), which every route expects.
    """

    _writing = False

    def _release_if_idle(self) -> None:
        if self._writing or self.new or self.dirty or self.deleted or self.in_nested_transaction():
            return
        if self.in_transaction():
            self.commit()  # a read-only COMMIT; expire_on_commit=False keeps the loaded rows usable

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Result[Any]:
        if not getattr(statement, "is_select", False):
            self._writing = True
            return super().execute(statement, *args, **kwargs)
        frozen = super().execute(statement, *args, **kwargs).freeze()  # rows read before release
        self._release_if_idle()
        return frozen()

    def scalar(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return self.execute(statement, *args, **kwargs).scalar()

    def scalars(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return self.execute(statement, *args, **kwargs).scalars()

    def flush(self, objects: Any = None) -> None:
        if self.new or self.dirty or self.deleted:
            self._writing = True
        super().flush(objects)

    def commit(self) -> None:
        super().commit()
        if not self.in_transaction():
            self._writing = False

    def rollback(self) -> None:
        super().rollback()
        self._writing = False

    def close(self) -> None:
        super().close()
        self._writing = False


def releasing_session_factory(engine: Engine) -> sessionmaker[ReleasingSession]:
    """Sessions for request handlers (see ReleasingSession); rows stay usable after release."""
    return sessionmaker(engine, class_=ReleasingSession, expire_on_commit=False)
