"""Idempotency keys for sweeps: POST /v1/sweeps retried with the same Idempotency-Key returns the
sweep it made the first time instead of a second grid of jobs (as POST /v1/jobs does for a job).

A unique index, not a constraint: SQLite cannot add a constraint to a table without copying it,
and both dialects treat NULL keys (sweeps made without one) as distinct.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lbdn_sweeps", sa.Column("idempotency_key", sa.String(length=200), nullable=True))
    op.add_column("lbdn_sweeps", sa.Column("request_hash", sa.String(length=64), nullable=True))
    op.create_index("uq_lbdn_sweeps_idempotency", "lbdn_sweeps", ["tenant", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_lbdn_sweeps_idempotency", table_name="lbdn_sweeps")
    with op.batch_alter_table("lbdn_sweeps") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
