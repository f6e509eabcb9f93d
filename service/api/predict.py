"""``POST /v1/models/{id}/predict``: detections in COCO terms, and ``.../predict/png``: one image
with its boxes drawn.

Two operations rather than one with a ``format`` switch: each has one success media type, so
a client generated from the document parses each answer as what it is. Both take the same
form (:class:`service.schemas.PredictForm`), parsed by FastAPI; the body is cut at its limit
while it arrives (``service.api.limits``); decoding and the model run off the event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Response
from fastapi.concurrency import run_in_threadpool
from torch import Tensor

from detector import DetectionOut, ModelFileError, render_png
from service.api.deps import (
    ModelCacheDep,
    ModelIdPath,
    SessionsDep,
    SettingsDep,
    require_multipart,
)
from service.error_schemas import ErrorBody
from service.errors import ApiError
from service.images import decode_upload
from service.inference import ModelCache, Overloaded
from service.schemas import ImageDetections, PredictForm, PredictPublic
from service.settings import Settings
from service.store import repo
from service.store.db import Sessions
from service.store.tables import Model

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_multipart)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 413, 415, 503)
}
_PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
PredictFormDep = Annotated[PredictForm, Form(media_type="multipart/form-data")]


@router.post("/{model_id}/predict", response_model=PredictPublic, responses=_ERRORS)
async def predict(
    model_id: ModelIdPath,
    form: PredictFormDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    cache: ModelCacheDep,
) -> PredictPublic:
    """Detections for one or several images (multipart ``files``), in COCO terms."""
    row, images, results = await _detect(model_id, form, sessions, settings, cache)
    return PredictPublic(
        model_id=row.id,
        images=[
            ImageDetections(
                file=upload.filename or "file",
                width=int(image.shape[-1]),
                height=int(image.shape[-2]),
                detections=dets,
            )
            for upload, image, dets in zip(form.files, images, results, strict=True)
        ],
    )


@router.post(
    "/{model_id}/predict/png",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": _PNG, "description": "the image, boxes drawn"}},
)
async def predict_png(
    model_id: ModelIdPath,
    form: PredictFormDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    cache: ModelCacheDep,
) -> Response:
    """One image (``files``) with its detections drawn, as PNG."""
    if len(form.files) != 1:
        raise ApiError(422, "invalid_request", "the PNG variant takes exactly one image")
    _, images, results = await _detect(model_id, form, sessions, settings, cache)
    png = await run_in_threadpool(render_png, images[0], results[0])
    return Response(png, media_type="image/png")


async def _detect(
    model_id: str, form: PredictForm, sessions: Sessions, settings: Settings, cache: ModelCache
) -> tuple[Model, list[Tensor], list[list[DetectionOut]]]:
    row = await run_in_threadpool(_model_row, sessions, model_id)
    files = form.files
    if len(files) > settings.predict_max_files:
        raise ApiError(
            413, "too_many_files", f"{len(files)} files; the limit is {settings.predict_max_files}"
        )
    max_bytes = settings.predict_max_file_mb * 1024 * 1024
    images = []
    for upload in files:
        data = await upload.read(max_bytes + 1)
        name = upload.filename or "file"
        if len(data) > max_bytes:
            raise ApiError(413, "too_large", f"{name} exceeds {max_bytes} bytes")
        # Decoding takes milliseconds to seconds: off the event loop.
        images.append(
            await run_in_threadpool(
                decode_upload, name, data, max_pixels=settings.predict_max_pixels
            )
        )
    try:
        runner = await run_in_threadpool(
            cache.get, row.id, Path(row.weights_path), row.weights_bytes
        )
    except (ModelFileError, FileNotFoundError):  # deleted while this request was arriving
        raise ApiError(404, "not_found", f"model {model_id!r} not found") from None
    try:
        future = runner.submit(images, form.options())  # checks them against these images
    except Overloaded as exc:
        raise ApiError(
            503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    except ValueError as exc:  # options naming classes the model lacks
        raise ApiError(422, "invalid_request", str(exc)) from None
    results: list[list[DetectionOut]] = await asyncio.wrap_future(future)
    return row, images, results


def _model_row(sessions: Sessions, model_id: str) -> Model:
    with sessions.read() as session:
        return repo.get_model(session, model_id)
