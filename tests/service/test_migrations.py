"""Schema migrations of the job store on a real SQLite file and a real PostgreSQL database of the
test's own: an empty database is upgraded to the newest revision, and a database made by release
0.1.0 (tables from create_all, no version table; fixtures in tests/service/data) is stamped at the
baseline and upgraded with its job intact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from core.states import EventKind, JobKind, JobState
from core.store import init_db, jobs, make_engine, session_factory, transaction
from core.store.migrate import BASELINE, MIGRATIONS, VERSION_TABLE, current_revision
from core.store.tables import Base

DATA = Path(__file__).parent / "data"
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with nothing in it: a new SQLite file, or a PostgreSQL database of this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("own_pg_url")


def _load_release_0_1_0(url: str) -> None:
    """Fill the empty database at `url` from the release-0.1.0 dump of its dialect."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.executescript((DATA / "release-0.1.0.sqlite.sql").read_text())
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute((DATA / "release-0.1.0.postgres.sql").read_text())  # no parameters: many statements


def _schema_differences(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_an_empty_database_is_upgraded_to_the_newest_revision(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) is None
        init_db(engine)
        assert current_revision(engine) == HEAD
        assert _schema_differences(engine) == []  # the migrations make exactly the tables of the code
        init_db(engine)  # every start runs it: at head nothing changes
        assert current_revision(engine) == HEAD
        with transaction(session_factory(engine)) as s:
            job, _ = jobs.create_job(s, tenant="t", kind=JobKind.train, spec={"model": "Toy"})
        with session_factory(engine)() as s:
            assert jobs.get_job(s, "t", job.id).status is JobState.queued
    finally:
        engine.dispose()


def test_a_release_0_1_0_database_is_stamped_and_upgraded_and_its_job_survives(empty_url: str) -> None:
    _load_release_0_1_0(empty_url)
    engine = make_engine(empty_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert "lbdn_jobs" in tables and VERSION_TABLE not in tables
        init_db(engine)
        assert current_revision(engine) == HEAD
        assert _schema_differences(engine) == []
        sessions = session_factory(engine)
        with sessions() as s:
            (old,) = jobs.list_jobs(s, "acme")
            assert old.kind is JobKind.train and old.status is JobState.succeeded
            assert old.spec == {"model": "Toy", "dataset": "square_wave", "epochs": 2}
            assert old.result == {"test_acc": 90.0} and old.idempotency_key == "k1"
            assert old.created_at.isoformat() == "2025-01-02T03:04:05+00:00"
            assert jobs.metrics_since(s, old.id) == [{"epoch": 1, "train_loss": 0.5}]
            events = jobs.events_after(s, old.id)
            assert [e.kind for e in events] == [EventKind.state, EventKind.state, EventKind.metrics, EventKind.state]
            assert events[-1].data == {"status": "succeeded"}
        with transaction(sessions) as s:  # the old rows' sequences go on: a new job gets the next pk
            new, _ = jobs.create_job(s, tenant="acme", kind=JobKind.train, spec={"model": "Toy"})
            assert new.pk == old.pk + 1
            assert jobs.add_event(s, old.id, EventKind.log, {"line": "after the upgrade"}) == 5
    finally:
        engine.dispose()


def test_the_baseline_is_the_first_revision() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert script.get_base() == BASELINE
    assert [r.revision for r in script.walk_revisions()][-1] == BASELINE
