"""Devices (issue 18): where a job ran and what it asked for, and the registry of workers.

lbdn_jobs gains resources (JSON, e.g. {"devices": 2}), device, host and worker (all nullable, so
rows of earlier revisions stay as they are); lbdn_workers lists the running workers and their
devices. Types are spelled out, as in the baseline.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)  # core.store.tables.UTCDateTime's column type


def upgrade() -> None:
    with op.batch_alter_table("lbdn_jobs") as batch:  # batch: SQLite's ALTER TABLE is limited
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("device", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("host", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
    op.create_table(
        "lbdn_workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("seen_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("lbdn_workers")
    with op.batch_alter_table("lbdn_jobs") as batch:
        for column in ("worker", "host", "device", "resources"):
            batch.drop_column(column)
