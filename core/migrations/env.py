"""Alembic environment of the job store. Run through core.store.migrate (which `lbdn` calls at
start), which hands over an open connection; there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from core.store.migrate import VERSION_TABLE
from core.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,  # for `alembic revision --autogenerate` against a dev database
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things: later revisions use op.batch_alter_table (copy and move)
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
