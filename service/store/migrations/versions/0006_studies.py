"""Studies (grids of jobs), and jobs' name, tags, study and cancel reason.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create studies and job_tags; add the jobs' columns (existing jobs: NULL, no tags)."""
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(128), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
        sa.UniqueConstraint("idempotency_key", name="uq_studies_idempotency_key"),
    )
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_tags_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "tag", name="pk_job_tags"),
    )
    op.create_index("ix_job_tags_tag", "job_tags", ["tag"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("study_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("cancel_reason", sa.Text(), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_study_id_studies", "studies", ["study_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_jobs_name", ["name"])
        batch.create_index("ix_jobs_study_id", ["study_id"])


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_study_id")
        batch.drop_index("ix_jobs_name")
        batch.drop_constraint("fk_jobs_study_id_studies", type_="foreignkey")
        for name in ("cancel_reason", "study_id", "name"):
            batch.drop_column(name)
    op.drop_index("ix_job_tags_tag", table_name="job_tags")
    op.drop_table("job_tags")
    op.drop_table("studies")
