"""Runs you can name (issue 23): a job's name, tags and note, set at submission or by PATCH.

lbdn_jobs gains name (VARCHAR(200)), tags (JSON list of strings) and note (TEXT), all nullable so
rows of earlier revisions stay as they are (no name, no tags, no note). An index on (tenant, name)
serves the exact-name lookups of scripts; substring and tag filters scan the tenant's rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lbdn_jobs") as batch:  # batch: SQLite's ALTER TABLE is limited
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.create_index("ix_lbdn_jobs_tenant_name", "lbdn_jobs", ["tenant", "name"])


def downgrade() -> None:
    op.drop_index("ix_lbdn_jobs_tenant_name", table_name="lbdn_jobs")
    with op.batch_alter_table("lbdn_jobs") as batch:
        for column in ("note", "tags", "name"):
            batch.drop_column(column)
