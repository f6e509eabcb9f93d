"""Attempt accounting by progress (jobs) and workers known to have stopped.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_COUNTERS = ("checkpoint_iteration", "attempt_from_iteration", "stalled_attempts")


def upgrade() -> None:
    """Add the jobs' progress counters (existing jobs: 0) and workers.stopped_at (NULL)."""
    with op.batch_alter_table("jobs") as batch:
        for name in _JOB_COUNTERS:
            batch.add_column(
                sa.Column(name, sa.Integer(), server_default=sa.text("0"), nullable=False)
            )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the columns again."""
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("stopped_at")
    with op.batch_alter_table("jobs") as batch:
        for name in reversed(_JOB_COUNTERS):
            batch.drop_column(name)
