"""``/v1/datasets``: upload or register a COCO dataset, list, read and delete them."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

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
)
from service.api.limits import check_disk_space, unpacked_size
from service.errors import ApiError, validation_details
from service.ingest import Located, resolve_under, unpack_zip, upload_label
from service.schemas import DatasetPublic, DatasetRegister, DatasetsPublic, ErrorBody
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
_UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                    },
                    "required": ["file"],
                }
            },
            "application/json": {"schema": DatasetRegister.model_json_schema()},
        }
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses={
        **_ERRORS,
        403: {"model": ErrorBody},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        422: {"model": ErrorBody},
        507: {"model": ErrorBody},
    },
    openapi_extra=_UPLOAD_DOC,
)
async def create_dataset(
    request: Request, sessions: SessionsDep, settings: SettingsDep, storage: StorageDep
) -> DatasetPublic:
    """A zip upload (multipart field ``file``) or a JSON body registering a server folder.

    The dataset is validated: errors -> 422 with the report and nothing kept; otherwise 201
    with the report (its warnings say what was dropped or clipped). The body is counted as it
    arrives and cut at ``RETINANET_MAX_UPLOAD_MB`` (413; see ``service.limits``); unpacking,
    validation and the database run in the thread pool, never on the event loop.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        check_disk_space(storage.root, _declared_length(request), settings)
        form = await request.form(max_files=1, max_fields=4)
        upload, name = form.get("file"), form.get("name")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "multipart field 'file' (a zip) is required")
        label = upload_label(name, upload.filename)
        return await run_in_threadpool(_ingest_upload, upload, label, sessions, settings, storage)
    if content_type.startswith("application/json"):
        try:
            body = DatasetRegister.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError(
                422, "invalid_request", "the request is malformed", validation_details(exc)
            ) from None
        return await run_in_threadpool(_register_folder, body, sessions, settings)
    raise ApiError(
        415, "unsupported_media_type", "send multipart/form-data (zip upload) or application/json"
    )


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


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
            report.model_dump(mode="json"),
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
