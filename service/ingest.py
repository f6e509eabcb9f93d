"""Bringing a dataset in: a zip upload unpacked safely, or a folder under the allowed root.

A zip must hold one COCO JSON at its top level (or ``annotations/*.json``) and the images
its ``file_name``s point at, relative to the zip's top level or to ``images/``.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from service.errors import ApiError


@dataclass(frozen=True)
class Located:
    annotations: Path
    images: Path


def unpack_zip(archive: Path, dest: Path, *, max_bytes: int, max_files: int) -> Located:
    """Extract ``archive`` into ``dest`` refusing unsafe entries; find the COCO JSON in it."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise ApiError(422, "invalid_archive", "the upload is not a zip archive") from None
    with zf:
        entries = [info for info in zf.infolist() if not info.is_dir()]
        if len(entries) > max_files:
            raise ApiError(
                413, "too_many_files", f"the archive has {len(entries)} files (limit {max_files})"
            )
        total = sum(info.file_size for info in entries)
        if total > max_bytes:  # a zip bomb is refused before a byte is written
            raise ApiError(
                413, "too_large", f"the archive unpacks to {total} bytes (limit {max_bytes})"
            )
        for info in entries:
            _check_member(info.filename)
        for info in entries:
            target = dest / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
    return _locate(dest)


def _check_member(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise ApiError(
            422, "unsafe_archive", f"archive entry {name!r} would escape the dataset folder"
        )


def _locate(root: Path) -> Located:
    candidates = sorted(root.glob("*.json")) or sorted(root.glob("annotations/*.json"))
    if len(candidates) != 1:
        found = [str(p.relative_to(root)) for p in candidates] or "none"
        raise ApiError(
            422,
            "invalid_archive",
            f"need exactly one COCO JSON at the top level or in annotations/, found {found}",
        )
    images = root / "images" if (root / "images").is_dir() else root
    return Located(annotations=candidates[0], images=images)


def resolve_under(root: Path | None, value: str) -> Path:
    """``value`` (relative to ``root`` or absolute) if it stays inside ``root``; else 403."""
    if root is None:
        raise ApiError(
            403,
            "registration_disabled",
            "registering server folders is off (set RETINANET_DATASET_ROOT)",
        )
    base = root.resolve()
    path = (base / value).resolve()
    if not path.is_relative_to(base):
        raise ApiError(403, "path_not_allowed", f"{value!r} is outside the allowed dataset root")
    return path
