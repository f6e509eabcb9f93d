"""``/v1/datasets``: upload (``POST /v1/datasets``, multipart) or register
(``POST /v1/datasets/register``, JSON) a COCO dataset; list, read and delete them.

Two routes, not one taking either body: an operation has one request body schema that FastAPI
parses and documents, so a generated client gets a typed call for each."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from detector import validate_coco
from service.api.deps import (
    DatasetIdPath,
    PageLimit,
    PageOffset,
    ReadSessionDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    require_multipart,
)
from service.api.limits import check_disk_space, unpacked_size
from service.error_schemas import ErrorBody
from service.errors import ApiError
from service.ingest import Located, resolve_under, unpack_zip, upload_label
from service.schemas import (
    DatasetName,
    DatasetPublic,
    DatasetRegister,
    DatasetReport,
    DatasetSample,
    DatasetSamples,
    DatasetsPublic,
    SampleBox,
)
from service.settings import Settings
from service.storage import Storage
from service.store import repo
from service.store.db import Sessions

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
}
_CREATED: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    403: {"model": ErrorBody},
    413: {"model": ErrorBody},
    415: {"model": ErrorBody},
    507: {"model": ErrorBody},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=_CREATED,
    dependencies=[Depends(require_multipart)],
    # One zip and its name: a second file is a client's mistake (400), not a choice to guess.
    form_limits={"max_files": 1, "max_fields": 4},
)
async def upload_dataset(
    file: Annotated[UploadFile, File(description="a zip: one COCO JSON and its images")],
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    name: Annotated[
        DatasetName | None, Form(description="the dataset's name (default: the zip's)")
    ] = None,
) -> DatasetPublic:
    """Upload a zip of a COCO dataset (multipart field ``file``).

    The dataset is validated: errors -> 422 with the report and nothing kept; otherwise 201
    with the report (its warnings say what was dropped or clipped). The body is counted as it
    arrives and cut at ``RETINANET_MAX_UPLOAD_MB`` (413) and refused before it is read when the
    disk would fill (507; see ``service.api.limits``); unpacking, validation and the database
    run in the thread pool, never on the event loop.
    """
    label = upload_label(name, file.filename)
    return await run_in_threadpool(_ingest_upload, file, label, sessions, settings, storage)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=_CREATED,
)
def register_dataset(
    body: DatasetRegister, sessions: SessionsDep, settings: SettingsDep
) -> DatasetPublic:
    """Register a COCO dataset already on the server, under ``RETINANET_DATASET_ROOT`` (403
    outside it or when unset); validated as an upload is. A sync route: FastAPI runs it in the
    thread pool, and its sessions are opened inside."""
    return _register_folder(body, sessions, settings)


def _register_folder(
    body: DatasetRegister, sessions: Sessions, settings: Settings
) -> DatasetPublic:
    annotations = resolve_under(settings.dataset_root, body.annotations)
    images = resolve_under(settings.dataset_root, body.images)
    located = Located(annotations, images)
    return _register(sessions, settings, name=body.name, source="folder", located=located)


def _ingest_upload(
    upload: UploadFile, label: str, sessions: Sessions, settings: Settings, storage: Storage
) -> DatasetPublic:
    """Unpack the received zip into a staging folder, validate it, move it in place and add its
    row; anything refused leaves nothing behind."""
    max_bytes = settings.max_upload_mb * 1024 * 1024
    staging = storage.staging_dir()
    try:
        archive = staging / "upload.zip"
        with archive.open("wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        upload.file.close()  # the spooled copy is no longer needed
        check_disk_space(storage.root, min(unpacked_size(archive), max_bytes), settings)
        unpacked = staging / "dataset"
        located = unpack_zip(
            archive, unpacked, max_bytes=max_bytes, max_files=settings.max_upload_files
        )
        archive.unlink()
        dataset_id = uuid.uuid4().hex
        folder = storage.dataset_dir(dataset_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        unpacked.rename(folder)
        located = Located(
            folder / located.annotations.relative_to(unpacked),
            folder / located.images.relative_to(unpacked),
        )
        try:
            return _register(
                sessions,
                settings,
                name=label,
                source="upload",
                located=located,
                dataset_id=dataset_id,
            )
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)  # a refused dataset leaves nothing behind
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _validated(located: Located, settings: Settings) -> dict[str, object]:
    # Images larger than predict takes would train but never be predicted on: refused here.
    coco = validate_coco(
        located.annotations, located.images, max_pixels=settings.predict_max_pixels
    )
    report = coco.report
    if not report.ok:
        raise ApiError(
            422,
            "invalid_dataset",
            f"the dataset has {len(report.errors())} error(s)",
            DatasetReport.model_validate(report).model_dump(mode="json"),
        )
    return {
        "num_images": len(coco.images),
        "num_boxes": report.num_boxes,
        "class_counts": report.class_counts,
        "categories": [{"id": c.id, "name": c.name} for c in coco.categories],
        "report": report.model_dump(mode="json"),
    }


def _register(
    sessions: Sessions,
    settings: Settings,
    *,
    name: str,
    source: str,
    located: Located,
    dataset_id: str | None = None,
) -> DatasetPublic:
    facts = _validated(located, settings)  # seconds on a big dataset: before the write transaction
    with sessions.write.begin() as session:
        row = repo.create_dataset(
            session,
            dataset_id=dataset_id,
            name=name,
            source=source,
            annotations_path=str(located.annotations),
            images_path=str(located.images),
            **facts,  # type: ignore[arg-type]
        )
    return DatasetPublic.model_validate(row)


@router.get("", response_model=DatasetsPublic, responses=_ERRORS)
def list_datasets(
    session: ReadSessionDep,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> DatasetsPublic:
    rows, count = repo.list_datasets(session, limit=limit, offset=offset)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=_ERRORS)
def get_dataset(dataset_id: DatasetIdPath, session: ReadSessionDep) -> DatasetPublic:
    return DatasetPublic.model_validate(repo.get_dataset(session, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_dataset(dataset_id: DatasetIdPath, session: SessionDep, storage: StorageDep) -> None:
    """Refused (409) while a queued or running job uses it; an upload's files go too."""
    row = repo.delete_dataset(session, dataset_id)
    session.commit()
    if row.source == "upload":  # uploads live in their own folder; registered ones are the user's
        shutil.rmtree(storage.dataset_dir(row.id), ignore_errors=True)


_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".mpo": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_IMAGE: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "the image file as stored",
        "content": dict.fromkeys(
            [*sorted(set(_IMAGE_TYPES.values())), "application/octet-stream"], _BINARY
        ),
    },
}
ImageIdPath = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="a COCO image id")]


@router.get("/{dataset_id}/samples", response_model=DatasetSamples, responses=_ERRORS)
def dataset_samples(
    dataset_id: DatasetIdPath,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=50, description="images")] = 6,
) -> DatasetSamples:
    """The first ``limit`` images of the annotation file with their boxes (the dashboard draws
    them); ``url`` serves each image. Entries the validator dropped are skipped."""
    row = repo.get_dataset(session, dataset_id)
    coco = _annotation_file(row.annotations_path)
    images = [im for im in _items(coco, "images") if _is_image(im)]
    chosen = {im["id"]: im for im in images[:limit]}
    boxes: dict[int, list[dict[str, Any]]] = {i: [] for i in chosen}
    for ann in _items(coco, "annotations"):
        if ann.get("image_id") in boxes and _is_box(ann):
            boxes[ann["image_id"]].append({"category_id": ann["category_id"], "bbox": ann["bbox"]})
    data = [
        DatasetSample(
            image_id=image_id,
            file_name=im["file_name"],
            width=im["width"] if isinstance(im.get("width"), int) else None,
            height=im["height"] if isinstance(im.get("height"), int) else None,
            boxes=[SampleBox.model_validate(b) for b in boxes[image_id]],
            url=f"/v1/datasets/{dataset_id}/images/{image_id}",
        )
        for image_id, im in chosen.items()
    ]
    return DatasetSamples(data=data, count=len(images))


def _items(coco: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = coco.get(key)
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _is_image(im: dict[str, Any]) -> bool:
    return isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)


def _is_box(ann: dict[str, Any]) -> bool:
    bbox = ann.get("bbox")
    return (
        isinstance(ann.get("category_id"), int)
        and isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
    )


@router.get("/{dataset_id}/images/{image_id}", response_class=FileResponse, responses=_IMAGE)
def dataset_image(
    dataset_id: DatasetIdPath, image_id: ImageIdPath, session: ReadSessionDep
) -> FileResponse:
    """One image file of the dataset, by its COCO image id."""
    row = repo.get_dataset(session, dataset_id)
    images = _items(_annotation_file(row.annotations_path), "images")
    name = next((im["file_name"] for im in images if _is_image(im) and im["id"] == image_id), None)
    root = Path(row.images_path).resolve()
    path = (root / name).resolve() if isinstance(name, str) else None
    if path is None or not path.is_relative_to(root) or not path.is_file():
        raise ApiError(404, "not_found", f"dataset {dataset_id!r} has no image {image_id}")
    media = _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(path, media_type=media)


def _annotation_file(path: str) -> dict[str, Any]:
    """The dataset's COCO JSON as stored (validated when it arrived)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise ApiError(404, "not_found", "the dataset's annotation file is gone") from None
    return data if isinstance(data, dict) else {}
