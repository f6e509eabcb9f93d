"""``/v1/workers``: the workers polling this store, what each offers and what it runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from service.api.deps import ReadSessionDep, SettingsDep
from service.error_schemas import ErrorBody
from service.schemas import WorkerPublic, WorkersPublic
from service.store import repo
from service.store.liveness import alive_since

router = APIRouter(prefix="/v1/workers", tags=["workers"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}}


@router.get("", response_model=WorkersPublic, responses=_ERRORS)
def list_workers(
    session: ReadSessionDep,
    settings: SettingsDep,
    stale: Annotated[bool, Query(description="also list workers not seen lately")] = False,
) -> WorkersPublic:
    """Live workers (seen within ``RETINANET_WORKER_STALE_S``), or all ever seen with
    ``stale=true``. ``max_devices`` is the biggest job some live worker would claim: a job
    asking for more stays queued until such a worker comes."""
    cutoff = alive_since(datetime.now(UTC), settings.worker_stale_s)
    rows = repo.list_workers(session, seen_since=None if stale else cutoff)
    data = [
        WorkerPublic(
            id=worker.id,
            host=worker.host,
            pid=worker.pid,
            devices=worker.devices,
            last_seen_at=worker.seen_at,
            alive=worker.seen_at >= cutoff and worker.stopped_at is None,
            job_id=job_id,
        )
        for worker, job_id in rows
    ]
    alive = [w.devices for w in data if w.alive]
    return WorkersPublic(data=data, count=len(data), max_devices=max(alive, default=0))
