"""Jobs: the number of processes (GPUs) a job trains on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add jobs.devices (existing jobs: 1)."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("devices", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )


def downgrade() -> None:
    """Drop jobs.devices."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("devices")
