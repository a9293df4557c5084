"""An index on lbdn_sweep_jobs.job_id (issue 19, README "At scale").

Every job read (GET /v1/jobs/{id}, each page of GET /v1/jobs) asks which sweep its jobs belong to
(core.store.sweeps.sweeps_of: job_id IN (...)). The table's key is (sweep_id, job_id), which cannot
serve a lookup by job_id alone, so each read scanned every sweep's rows: 3 ms at 20,000 jobs,
O(jobs in sweeps). With the index a read costs one index probe per job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_lbdn_sweep_jobs_job_id", "lbdn_sweep_jobs", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_lbdn_sweep_jobs_job_id", table_name="lbdn_sweep_jobs")
