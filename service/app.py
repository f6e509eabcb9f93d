"""``create_app``: the FastAPI application, built from settings (no import-time state)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service.api import datasets, health, jobs
from service.api.deps import require_api_key
from service.errors import install_error_handlers
from service.settings import Settings
from service.store.db import make_engine, migrate, session_factory


def create_app(settings: Settings) -> FastAPI:
    """The API on ``settings``' database and data directory; migrations run at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.db_url)
        engine = make_engine(settings.db_url)
        app.state.sessions = session_factory(engine)
        # Streams and health checks only read: on SQLite they must not hold the write lock.
        app.state.read_sessions = session_factory(engine, read_only=True)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="RetinaNet training service", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    protected = [Depends(require_api_key)]
    app.include_router(datasets.router, dependencies=protected)
    app.include_router(jobs.router, dependencies=protected)
    return app
