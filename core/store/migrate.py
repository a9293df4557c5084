"""Schema migrations of the job store (Alembic), run by `lbdn` at start (serve, api, worker, keys).

The scripts ship inside the package (core/migrations), so an installed service finds them without
an alembic.ini. `upgrade(engine)` brings any database to the newest revision:
- empty: the baseline revision creates the tables;
- made by release 0.1.0 (tables from metadata.create_all, no version table): stamped at the
  baseline first, then upgraded, so its rows stay;
- already versioned: the missing revisions run (none at head).
Several processes may start at once (API and workers): PostgreSQL serialises them with an
advisory lock held by the migrating transaction, SQLite files with a lock file beside the database.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, make_url, text

log = logging.getLogger("lbdn.store")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
BASELINE = "0001"  # the schema of release 0.1.0
# Prefixed like the tables, so the store can share a database with another Alembic-managed app.
VERSION_TABLE = "lbdn_alembic_version"
_PG_LOCK_KEY = 0x6C62646E  # "lbdn": the advisory lock of a migration in progress


def alembic_config(connection: Connection) -> Config:
    """An Alembic Config on the packaged scripts that runs on `connection` (see migrations/env.py)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an unversioned (empty or release 0.1.0) database."""
    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        return rev


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store's schema to `revision` (stamping a release-0.1.0 database at the baseline first)."""
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        cfg = alembic_config(conn)
        tables = set(inspect(conn).get_table_names())
        if VERSION_TABLE not in tables and "lbdn_jobs" in tables:
            log.info("job store made by release 0.1.0 (no %s): stamping it at %s", VERSION_TABLE, BASELINE)
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file: an exclusive lock on `<file>.migrate-lock` while migrating (SQLite runs
    DDL outside transactions, so two processes could both create the tables)."""
    url = make_url(str(engine.url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    with open(f"{url.database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
