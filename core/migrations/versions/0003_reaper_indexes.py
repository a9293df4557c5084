"""Partial indexes for the reaper's scans (issue 19, README "At scale").

Each reaper pass looks for running jobs whose lease ran out and queued jobs not sent lately. Through
ix_lbdn_jobs_status it read every running (or queued) row and filtered them: a pass cost O(jobs in
that state) however few needed anything. Indexes on lease_expires_at of running rows and on
enqueued_at of queued rows make it O(jobs to recover). Partial (WHERE status = ...): they hold
only the unfinished jobs, so the 100,000s of finished ones add nothing to their size or upkeep.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RUNNING, QUEUED = sa.text("status = 'running'"), sa.text("status = 'queued'")


def upgrade() -> None:
    op.create_index(
        "ix_lbdn_jobs_running_lease", "lbdn_jobs", ["lease_expires_at"], postgresql_where=RUNNING, sqlite_where=RUNNING
    )
    op.create_index(
        "ix_lbdn_jobs_queued_sent", "lbdn_jobs", ["enqueued_at"], postgresql_where=QUEUED, sqlite_where=QUEUED
    )


def downgrade() -> None:
    op.drop_index("ix_lbdn_jobs_queued_sent", table_name="lbdn_jobs")
    op.drop_index("ix_lbdn_jobs_running_lease", table_name="lbdn_jobs")
