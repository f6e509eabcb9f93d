"""``/v1/jobs/{id}/plots`` and ``/v1/jobs/{id}/tensorboard``: what a job's tracking wrote.

The PNG plots are drawn when a job ends (``detector.finalize``); the TensorBoard event files
grow while it trains, and the tarball holds them as they are when it is read, under
``<job id>/``, so that several jobs' tarballs unpack side by side into one ``--logdir``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from detector import PLOT_NAMES
from service.api.deps import JobIdPath, ReadSessionDep, StorageDep
from service.error_schemas import ErrorBody
from service.errors import ApiError
from service.storage import Storage
from service.store import repo

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PLOT_PATTERN = r"^[a-z0-9_]{1,64}\.png$"

PlotName = Annotated[
    str, PathParam(pattern=PLOT_PATTERN, description=f"one of {', '.join(PLOT_NAMES)}")
]


class PlotPublic(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    url: str
    size_bytes: int


class PlotsPublic(BaseModel):
    """The job's PNG plots that exist now (none before the job ends)."""

    model_config = ConfigDict(frozen=True)

    data: list[PlotPublic]


@router.get("/{job_id}/plots", response_model=PlotsPublic, responses=_ERRORS)
def list_plots(job_id: JobIdPath, session: ReadSessionDep, storage: StorageDep) -> PlotsPublic:
    """The job's plots: ``curves.png`` (train loss terms, lr, val loss, AP/AP50 per epoch),
    ``pr_curves.png`` (per-class precision-recall at IoU 0.5)."""
    repo.get_job(session, job_id)
    found = []
    for name in PLOT_NAMES:
        path = storage.plot_file(job_id, name)
        if path.is_file():
            url = f"/v1/jobs/{job_id}/plots/{name}"
            found.append(PlotPublic(name=name, url=url, size_bytes=path.stat().st_size))
    return PlotsPublic(data=found)


@router.get(
    "/{job_id}/plots/{name}",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"image/png": _BINARY}}},
)
def get_plot(
    job_id: JobIdPath, name: PlotName, session: ReadSessionDep, storage: StorageDep
) -> FileResponse:
    """One plot as PNG; 404 for a name that is no plot or one not drawn (yet)."""
    repo.get_job(session, job_id)
    if name not in PLOT_NAMES:
        raise ApiError(404, "not_found", f"no plot {name!r}; plots: {', '.join(PLOT_NAMES)}")
    path = storage.plot_file(job_id, name)
    if not path.is_file():
        raise ApiError(404, "not_found", f"job {job_id} has no {name} yet (drawn when it ends)")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/{job_id}/tensorboard",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"application/gzip": _BINARY}}},
)
def download_tensorboard(
    job_id: JobIdPath, session: ReadSessionDep, storage: StorageDep
) -> StreamingResponse:
    """The job's TensorBoard event files as a ``.tar.gz`` (streamed); 404 while none exist.
    ``tar xzf`` it into a folder and run ``tensorboard --logdir`` on that folder."""
    repo.get_job(session, job_id)
    files = event_files(storage, job_id)
    if not files:
        raise ApiError(404, "not_found", f"job {job_id} has no TensorBoard events (yet)")
    return StreamingResponse(
        _tar_gz(files, root=storage.job_dir(job_id), prefix=job_id),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="tensorboard-{job_id}.tar.gz"'},
    )


def event_files(storage: Storage, job_id: str) -> list[Path]:
    folder = storage.tensorboard_dir(job_id)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("events.out.tfevents.*") if p.is_file())


class _Buffer(io.RawIOBase):
    """What tarfile writes, kept until the generator hands it on."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def _tar_gz(files: list[Path], *, root: Path, prefix: str) -> Iterator[bytes]:
    """The files as a gzipped tar stream, ``prefix/<path under root>``; a sync generator,
    which Starlette runs in its thread pool, so reading the files never blocks the loop."""
    buffer = _Buffer()
    with tarfile.open(fileobj=buffer, mode="w|gz") as tar:
        for path in files:
            # A file still growing (a running job) goes in at the size it had here.
            tar.add(path, arcname=f"{prefix}/{path.relative_to(root)}", recursive=False)
            if chunk := buffer.take():
                yield chunk
    yield buffer.take()
