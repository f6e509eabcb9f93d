"""Bringing a dataset in: a zip upload unpacked safely, or a folder under the allowed root.

A zip must hold one COCO JSON at its top level (or ``annotations/*.json``) and the images
its ``file_name``s point at, relative to the zip's top level or to ``images/``. Every entry is
checked before a byte is written: a name that leaves the folder, is no file name, is a link,
repeats another or is both a file and a folder; encryption or a compression other than
stored/deflate; more files or bytes than the limits. A member that fails to decompress (a bad
CRC, a corrupt stream) is refused as it is read. Each refusal names the entry (``details``).
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from detector import is_clean_text, is_file_name
from service.refusal import NotAllowed, Refusal, TooLarge

_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
"""What every common zip tool writes; the others need optional modules or are unsupported."""
# What zipfile raises for a damaged archive or member (a fuzzed archive raised only these).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, ValueError)


class ArchiveError(Refusal):
    """A zip that cannot be taken: damaged, unsafe or not a dataset (``details``: the entry)."""


class ArchiveTooLarge(ArchiveError, TooLarge):  # noqa: N818
    """More files or bytes than the limits."""


@dataclass(frozen=True)
class Located:
    annotations: Path
    images: Path


def unpack_zip(archive: Path, dest: Path, *, max_bytes: int, max_files: int) -> Located:
    """Extract ``archive`` into ``dest`` refusing unsafe entries; find the COCO JSON in it."""
    with _reading(None):
        zf = zipfile.ZipFile(archive)
    with zf:
        members = _members(zf, max_bytes=max_bytes, max_files=max_files)
        for relative, info in members.items():
            target = dest.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with _reading(info.filename), zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
    return _locate(dest)


def _members(
    zf: zipfile.ZipFile, *, max_bytes: int, max_files: int
) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """The file entries by their checked relative path; refuses the archive on any defect."""
    entries = [info for info in zf.infolist() if not info.is_dir()]
    if len(entries) > max_files:
        raise ArchiveTooLarge(
            "too_many_files", f"the archive has {len(entries)} files (limit {max_files})"
        )
    total = sum(info.file_size for info in entries)
    if total > max_bytes:  # a zip bomb is refused before a byte is written
        raise ArchiveTooLarge(
            "too_large", f"the archive unpacks to {total} bytes (limit {max_bytes})"
        )
    members: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in entries:
        relative = _check_member(info)
        if relative in members:
            _refuse("invalid_archive", info.filename, "repeats an earlier entry")
        members[relative] = info
    folders = {parent for path in members for parent in path.parents}
    for path in sorted(folders & members.keys()):
        _refuse("invalid_archive", members[path].filename, "is both a file and a folder")
    return members


def _check_member(info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's path relative to the dataset folder (backslashes read as separators)."""
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    parts = path.parts
    if path.is_absolute() or ".." in parts or (parts and parts[0].endswith(":")):
        _refuse("unsafe_archive", name, "would escape the dataset folder")
    if not parts or not is_file_name(name):
        _refuse("invalid_archive", name, "is no file name (empty, too long, control characters)")
    if stat.S_ISLNK(info.external_attr >> 16):
        _refuse("unsafe_archive", name, "is a symbolic link")
    if info.flag_bits & 0x1:
        _refuse("unsupported_archive", name, "is encrypted")
    if info.compress_type not in _COMPRESSIONS:
        supported = " or ".join(_COMPRESSIONS.values())
        _refuse(
            "unsupported_archive",
            name,
            f"uses compression method {info.compress_type} (supported: {supported})",
        )
    return path


@contextmanager
def _reading(entry: str | None) -> Iterator[None]:
    """Damaged data read inside the block -> :class:`ArchiveError` naming ``entry`` (None: the
    archive)."""
    try:
        yield
    except NotImplementedError as exc:  # e.g. a zip "version needed" this reader lacks
        raise ArchiveError(
            "unsupported_archive", f"the archive needs an unsupported feature: {exc}"
        ) from None
    except _DAMAGED as exc:
        what = (
            "the upload is not a readable zip" if entry is None else f"entry {entry!r} is damaged"
        )
        raise ArchiveError("invalid_archive", f"{what}: {exc}", {"entry": entry}) from None


def _refuse(code: str, entry: str, why: str) -> NoReturn:
    raise ArchiveError(code, f"archive entry {entry!r} {why}", {"entry": entry})


def upload_label(name: str | None, filename: str | None) -> str:
    """An upload's dataset name: the form's ``name`` (checked by its schema); else the zip's
    file name, made storable (it is the client's, and only a label)."""
    if name:
        return name
    label = "".join(char for char in filename or "" if is_clean_text(char))[:200]
    return label or "upload"


def _locate(root: Path) -> Located:
    candidates = sorted(root.glob("*.json")) or sorted(root.glob("annotations/*.json"))
    if len(candidates) != 1:
        found = [str(p.relative_to(root)) for p in candidates] or "none"
        raise ArchiveError(
            "invalid_archive",
            f"need exactly one COCO JSON at the top level or in annotations/, found {found}",
        )
    images = root / "images" if (root / "images").is_dir() else root
    return Located(annotations=candidates[0], images=images)


def resolve_under(root: Path | None, value: str) -> Path:
    """``value`` (relative to ``root`` or absolute) if it stays inside ``root``; else
    :class:`NotAllowed`."""
    if root is None:
        raise NotAllowed(
            "registration_disabled",
            "registering server folders is off (set RETINANET_DATASET_ROOT)",
        )
    base = root.resolve()
    path = (base / value).resolve()
    if not path.is_relative_to(base):
        raise NotAllowed("path_not_allowed", f"{value!r} is outside the allowed dataset root")
    return path
