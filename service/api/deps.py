"""``Annotated`` dependencies: settings, storage, a database session, the model cache, the API
key check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from service.errors import ApiError
from service.inference import ModelCache
from service.schemas import DB_INT_MAX, ID_PATTERN
from service.settings import Settings
from service.storage import Storage
from service.store.db import ROUTE_READ_SESSIONS, ROUTE_WRITE_SESSIONS, Sessions
from service.web.session import CSRF_HEADER, SAFE_METHODS, csrf_ok, key_accepted, session_of


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_storage(settings: SettingsDep) -> Storage:
    return Storage(settings.data_dir)


StorageDep = Annotated[Storage, Depends(get_storage)]


def get_sessions(request: Request) -> Sessions:
    """Both session factories. ``async`` routes take these, not a session: they must not touch
    the database on the event loop, so they open sessions in what they run in the thread pool."""
    sessions: Sessions = request.app.state.db
    return sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]


def get_session(sessions: SessionsDep) -> Iterator[Session]:
    with sessions.write() as session:
        yield session


# scope="function": the session (its connection, its transaction) is closed once the route's
# answer is built, not after a client slow to read it has it (seen: PostgreSQL's pool held by
# idle transactions under load). max_concurrency: requests beyond wait, without a thread, for
# one of these sessions (see ROUTE_READ_SESSIONS for why it must stay below the pool).
SessionDep = Annotated[
    Session, Depends(get_session, scope="function", max_concurrency=ROUTE_WRITE_SESSIONS)
]
"""A write session, for routes that change rows. On SQLite its first statement takes the write
lock (``BEGIN IMMEDIATE``), so such routes read what they must, write, and commit at once."""


def get_read_session(sessions: SessionsDep) -> Iterator[Session]:
    """A session that never writes: on SQLite it takes no write lock, so listings, health checks
    and slow requests (inference, exports, downloads) never wait for or hold up the writers."""
    with sessions.read() as session:
        yield session


ReadSessionDep = Annotated[
    Session, Depends(get_read_session, scope="function", max_concurrency=ROUTE_READ_SESSIONS)
]


def get_model_cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.models
    return cache


ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(
    request: Request,
    settings: SettingsDep,
    key: Annotated[str | None, Security(_api_key_header)],
) -> None:
    """401 unless the ``X-API-Key`` header hashes to a configured key, or the request carries
    the dashboard's session cookie (``service.web.session``), or auth is off. A
    cookie-authenticated request that changes state must also send the session's CSRF token
    (``X-CSRF-Token``): 403 without it."""
    if settings.auth_disabled:
        return
    if key is not None and key_accepted(settings, key) is not None:
        return
    session = session_of(request, settings)
    if session is not None:
        if request.method not in SAFE_METHODS and not csrf_ok(
            request, session, request.headers.get(CSRF_HEADER)
        ):
            raise ApiError(
                403, "csrf_failed", f"a signed-in browser request must send its {CSRF_HEADER}"
            )
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="a valid X-API-Key header is required",
        headers={"WWW-Authenticate": "ApiKey"},
    )


# Path and query parameters that several routers share. Ids are checked at the door: a value
# no id can have (a NUL, a path) is a 422 instead of reaching the database driver.
DatasetIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a dataset id")]
JobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a job id")]
ModelIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a model id")]
PageLimit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
PageOffset = Annotated[int, Query(ge=0, le=DB_INT_MAX, description="rows to skip")]


def require_multipart(request: Request) -> None:
    """415 for a form route's body that is no multipart form: FastAPI would read it as an empty
    form and answer that a file is missing, which hides the mistake."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send a multipart/form-data body")
