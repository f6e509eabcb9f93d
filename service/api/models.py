"""``/v1/models``: the models of succeeded jobs; download, export to ONNX (predict: its own
module, ``service.api.predict``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from detector import (
    ExportMismatchError,
    Predictor,
    export_onnx,
    read_rgb,
    sha256_file,
)
from service.api.deps import (
    ModelCacheDep,
    ModelIdPath,
    PageLimit,
    PageOffset,
    ReadSessionDep,
    SessionDep,
    SessionsDep,
    StorageDep,
)
from service.error_schemas import ErrorBody
from service.errors import ApiError
from service.schemas import ExportPublic, ExportRequest, ModelClass, ModelPublic, ModelsPublic
from service.store import repo
from service.store.db import Sessions
from service.store.tables import Model

router = APIRouter(prefix="/v1/models", tags=["models"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FILE = {"application/octet-stream": _BINARY}
_DOWNLOAD: dict[int | str, dict[str, Any]] = {**_ERRORS, 200: {"content": _FILE}}


def to_public(row: Model) -> ModelPublic:
    thresholds = {int(k): v for k, v in row.score_thresholds.items()}
    return ModelPublic(
        id=row.id,
        name=row.name,
        job_id=row.job_id,
        classes=[
            ModelClass(id=c["id"], name=c["name"], score_threshold=thresholds.get(c["id"]))
            for c in row.classes
        ],
        recipe=row.recipe,
        metrics=row.metrics,
        metrics_split=row.metrics_split,
        weights_sha256=row.weights_sha256,
        weights_bytes=row.weights_bytes,
        created_at=row.created_at,
    )


@router.get("", response_model=ModelsPublic, responses=_ERRORS)
def list_models(
    session: ReadSessionDep,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> ModelsPublic:
    rows, count = repo.list_models(session, limit=limit, offset=offset)
    return ModelsPublic(data=[to_public(r) for r in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic, responses=_ERRORS)
def get_model(model_id: ModelIdPath, session: ReadSessionDep) -> ModelPublic:
    return to_public(repo.get_model(session, model_id))


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_model(
    model_id: ModelIdPath, session: SessionDep, storage: StorageDep, cache: ModelCacheDep
) -> None:
    """The row, the weights file and any export; the job's history stays."""
    row = repo.delete_model(session, model_id)
    session.commit()
    cache.drop(model_id)
    Path(row.weights_path).unlink(missing_ok=True)
    shutil.rmtree(storage.export_file(model_id, "onnx").parent, ignore_errors=True)


@router.get(
    "/{model_id}/weights",
    response_class=FileResponse,
    responses=_DOWNLOAD,
)
def download_weights(model_id: ModelIdPath, session: ReadSessionDep) -> FileResponse:
    """The model file: safetensors (weights + the card in its metadata), never a pickle."""
    row = repo.get_model(session, model_id)
    return FileResponse(
        row.weights_path,
        media_type="application/octet-stream",
        filename=f"model-{model_id}.safetensors",
        headers={"X-Checksum-SHA256": row.weights_sha256},
    )


@router.post(
    "/{model_id}/export",
    response_model=ExportPublic,
    responses={**_ERRORS, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def export(
    model_id: ModelIdPath, body: ExportRequest, sessions: SessionsDep, storage: StorageDep
) -> ExportPublic:
    """Export to ONNX and check it against PyTorch on images of the model's datasets; an
    export that disagrees is refused (422, with the comparison) and not kept."""
    row, samples = await run_in_threadpool(_export_inputs, sessions, model_id)
    out = storage.export_file(model_id, body.format)
    try:
        result = await run_in_threadpool(
            lambda: export_onnx(
                Predictor.load(Path(row.weights_path), device="cpu"),
                out,
                sample_images=[read_rgb(p) for p in samples],
                input_size=body.input_size,
            )
        )
    except ExportMismatchError as exc:
        raise ApiError(
            422, "export_mismatch", str(exc), exc.report.model_dump(mode="json")
        ) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return ExportPublic(
        model_id=model_id,
        format=body.format,
        input_size=result.input_size,
        sha256=sha256_file(out),
        bytes=out.stat().st_size,
        parity=result.report,
        download=f"/v1/models/{model_id}/export/{body.format}",
    )


@router.get(
    "/{model_id}/export/onnx",
    response_class=FileResponse,
    responses=_DOWNLOAD,
)
def download_export(
    model_id: ModelIdPath, session: ReadSessionDep, storage: StorageDep
) -> FileResponse:
    repo.get_model(session, model_id)
    path = storage.export_file(model_id, "onnx")
    if not path.is_file():
        raise ApiError(404, "not_found", f"model {model_id!r} has no ONNX export; POST .../export")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"model-{model_id}.onnx"
    )


def _model_row(sessions: Sessions, model_id: str) -> Model:
    with sessions.read() as session:
        return repo.get_model(session, model_id)


def _export_inputs(sessions: Sessions, model_id: str) -> tuple[Model, list[Path]]:
    """The model row and a few images for the parity check (database and files: a thread)."""
    with sessions.read() as session:
        row = repo.get_model(session, model_id)
        return row, _sample_images(session, row)


def _sample_images(session: Session, row: Model, limit: int = 4) -> list[Path]:
    """A few images of the job's validation (else training) dataset, for the parity check."""
    job = repo.get_job(session, row.job_id) if row.job_id else None
    for dataset_id in (job.val_dataset_id, job.train_dataset_id) if job else ():
        if dataset_id is None:
            continue
        dataset = repo.get_dataset(session, dataset_id)
        coco = json.loads(Path(dataset.annotations_path).read_text())
        names = [im["file_name"] for im in coco.get("images", [])[:limit]]
        paths = [Path(dataset.images_path) / n for n in names]
        if paths and all(p.is_file() for p in paths):
            return paths
    raise ApiError(
        409, "no_sample_images", "the model's datasets are gone: no images for the parity check"
    )
