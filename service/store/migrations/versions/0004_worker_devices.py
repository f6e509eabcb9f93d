"""Workers: the most processes (GPUs) a worker gives one job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add workers.devices (workers seen before: 1, until they next report)."""
    with op.batch_alter_table("workers") as batch:
        batch.add_column(
            sa.Column("devices", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )


def downgrade() -> None:
    """Drop workers.devices."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("devices")
