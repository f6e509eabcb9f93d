"""The service's one clock: timezone-aware UTC, which every row timestamp is written in."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)
