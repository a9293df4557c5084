"""Baseline: the job store as release 0.1.0 made it with metadata.create_all.

A database of that release (tables, no version table) is stamped at this revision by
core.store.migrate and upgraded from here; an empty database gets these tables. Types are spelled
out (not imported from core.store.tables) so this revision stays what it was when the tables change.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)  # core.store.tables.UTCDateTime's column type
NAME = sa.String(length=20)  # job state/kind, event kind, sweep role: a StrEnum's value


def upgrade() -> None:
    op.create_table(
        "lbdn_api_keys",
        sa.Column("id", sa.String(length=20), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("revoked_at", UTC, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_sha256"),
    )
    op.create_table(
        "lbdn_jobs",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("kind", NAME, nullable=False),
        sa.Column("status", NAME, nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("model_id", sa.String(length=40), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("enqueued_at", UTC, nullable=True),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("latest_metrics", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("resumed_from", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", UTC, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_lbdn_jobs_idempotency"),
    )
    op.create_index("ix_lbdn_jobs_status", "lbdn_jobs", ["status"], unique=False)
    op.create_index("ix_lbdn_jobs_tenant_pk", "lbdn_jobs", ["tenant", "pk"], unique=False)
    op.create_table(
        "lbdn_sweeps",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("preset", sa.String(length=100), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("evaluate", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_lbdn_sweeps_tenant_pk", "lbdn_sweeps", ["tenant", "pk"], unique=False)
    op.create_table(
        "lbdn_job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", NAME, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["lbdn_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "seq", name="uq_lbdn_job_events_seq"),
    )
    op.create_table(
        "lbdn_job_metrics",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["lbdn_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "epoch"),
    )
    op.create_table(
        "lbdn_sweep_jobs",
        sa.Column("sweep_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("role", NAME, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("point", sa.JSON(), nullable=False),
        sa.Column("train_job_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["sweep_id"], ["lbdn_sweeps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sweep_id", "job_id"),
    )


def downgrade() -> None:
    op.drop_table("lbdn_sweep_jobs")
    op.drop_table("lbdn_job_metrics")
    op.drop_table("lbdn_job_events")
    op.drop_index("ix_lbdn_sweeps_tenant_pk", table_name="lbdn_sweeps")
    op.drop_table("lbdn_sweeps")
    op.drop_index("ix_lbdn_jobs_tenant_pk", table_name="lbdn_jobs")
    op.drop_index("ix_lbdn_jobs_status", table_name="lbdn_jobs")
    op.drop_table("lbdn_jobs")
    op.drop_table("lbdn_api_keys")
