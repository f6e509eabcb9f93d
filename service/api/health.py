"""``/health``: liveness (the process answers) and readiness (database and a worker alive)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.deps import ReadSessionDep, SettingsDep
from service.schemas import Readiness
from service.store import repo
from service.store.liveness import alive_since

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Readiness)
async def live() -> dict[str, str]:
    """Answered on the event loop itself (no thread, no database): it says the process serves
    requests, so it must not queue behind a busy thread pool."""
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: the fields say why"}},
)
def ready(session: ReadSessionDep, settings: SettingsDep) -> JSONResponse:
    """200 when the database answers and some worker was seen recently; else 503 with why."""
    try:
        session.execute(text("SELECT 1"))
        seen = repo.last_worker_seen(session)
    except Exception as exc:  # any database failure means not ready
        return JSONResponse(
            {"status": "unavailable", "database": f"error: {type(exc).__name__}"}, status_code=503
        )
    now = datetime.now(UTC)
    age = None if seen is None else (now - _aware(seen)).total_seconds()
    worker_ok = seen is not None and _aware(seen) >= alive_since(now, settings.worker_stale_s)
    body = {
        "status": "ok" if worker_ok else "unavailable",
        "database": "ok",
        "worker_last_seen_s": age,
    }
    return JSONResponse(body, status_code=200 if worker_ok else 503)


def _aware(moment: datetime) -> datetime:
    # SQLite drops time zones; every timestamp we store is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
