"""``create_app``: the FastAPI application, built from settings (no import-time state)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import Depends, FastAPI

from service.api import (
    datasets,
    health,
    jobs,
    models,
    predict,
    recipes,
    studies,
    tracking,
    workers,
)
from service.api.deps import require_api_key
from service.api.limits import BodyLimits
from service.api.openapi import install_openapi
from service.errors import install_error_handlers
from service.inference import BatchingRunner, ModelCache, load_predictor
from service.settings import Settings
from service.storage import Storage
from service.store.db import Sessions, make_engine, migrate
from service.web.dashboard import install_dashboard
from service.web.session import load_secret

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The API on ``settings``' database and data directory; migrations run at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        for path in Storage(settings.data_dir).remove_leftovers():
            log.info("removed the leftover %s of an interrupted request", path)
        migrate(settings.db_url)
        engine = make_engine(settings.db_url)
        app.state.db = Sessions.of(engine)
        app.state.models = model_cache(settings)
        app.state.session_secret = load_secret(settings.data_dir)
        # Sync routes and off-loop work share one thread pool in this process, and so one GIL
        # with the event loop: forty busy threads (AnyIO's default) starve the loop for
        # seconds on two cores. A few threads keep every request moving and the loop
        # answering; the rest wait their turn without holding anything.
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        try:
            yield
        finally:
            app.state.models.close()
            engine.dispose()

    app = FastAPI(
        title="RetinaNet training service",
        version="0.1.0",
        lifespan=lifespan,
        # Operation ids (a generated client's function names) are the route functions' names.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimits, settings=settings)
    app.include_router(health.router)
    protected = [Depends(require_api_key)]
    app.include_router(datasets.router, dependencies=protected)
    app.include_router(jobs.router, dependencies=protected)
    app.include_router(tracking.router, dependencies=protected)
    app.include_router(models.router, dependencies=protected)
    app.include_router(predict.router, dependencies=protected)
    app.include_router(workers.router, dependencies=protected)
    app.include_router(studies.router, dependencies=protected)
    app.include_router(recipes.router, dependencies=protected)
    install_dashboard(app)
    install_openapi(app, settings)
    return app


def model_cache(settings: Settings) -> ModelCache:
    """The bounded cache of loaded models, each behind a batching runner."""

    storage = Storage(settings.data_dir)

    def make_runner(model_id: str, weights: Path) -> BatchingRunner:
        predictor = load_predictor(
            weights,
            device=settings.predict_device,
            runtime=settings.predict_runtime,
            # Beside the model's exports: deleted with them.
            onnx_dir=storage.export_file(model_id, "onnx").parent,
            threads=settings.predict_threads,
        )
        return BatchingRunner(
            predictor,
            max_batch=settings.predict_max_batch,
            max_delay_s=settings.predict_max_delay_ms / 1000,
            queue_size=settings.predict_queue_size,
        )

    return ModelCache(
        max_models=settings.model_cache_models,
        max_bytes=settings.model_cache_mb * 1024 * 1024,
        make_runner=make_runner,
    )
