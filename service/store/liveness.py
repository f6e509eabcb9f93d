"""Worker liveness and what a queued job waits for: domain rules the API's routes (jobs,
workers, health) share, defined once beside the rows they read."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.store.repo import max_live_devices
from service.store.tables import Job


def alive_since(now: datetime, stale_s: float) -> datetime:
    """Workers seen since then count as alive (``RETINANET_WORKER_STALE_S`` before ``now``)."""
    return now - timedelta(seconds=stale_s)


def live_capacity(session: Session, *, now: datetime, stale_s: float) -> int | None:
    """The most devices a live worker offers (None: no live worker)."""
    return max_live_devices(session, seen_since=alive_since(now, stale_s))


def waiting_for(job: Job, capacity: int | None) -> str | None:
    """Why a queued job has not started, given ``live_capacity`` (None: nothing in its way)."""
    if job.status != "queued":
        return None
    if capacity is None:
        return "no live worker (see /health/ready); the job starts when one polls the queue"
    if job.devices > capacity:
        return (
            f"the job asks for {job.devices} devices and the live workers offer at most "
            f"{capacity} (GET /v1/workers); it starts when a worker with enough GPUs polls"
        )
    return None
