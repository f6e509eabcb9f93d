"""The ``images`` section of a COCO file and its files, for :mod:`detector.data.validate`.

Each entry needs an integer id and a file name inside the image folder; each file must exist
and be decodable by the loader, and its real size wins over the declared one. By default only
the header is read (PIL parses the size without decoding pixels), which is fast enough for
COCO-sized folders. A truncated file passes that check, so ``decode=True`` decodes every image
fully with the same decoder the data loader uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal, Protocol, TypeGuard

from PIL import Image
from torchvision.io import ImageReadMode, decode_image

ProbeStatus = Literal["ok", "missing", "unreadable", "unsupported_format"]
_PROBE_CODES = {"missing": "missing_image", "unsupported_format": "unsupported_format"}

# What torchvision.io.decode_image (the loader's decoder) reads, in PIL's names; MPO is the
# multi-picture JPEG that some cameras write, which decodes as an ordinary JPEG.
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP"})

_MAX_WORKERS = 8
_CPP_PREFIX = re.compile(r"^.*\.cpp:\d+,\s*")


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageProbe:
    """What reading one image file told us.

    ``size`` is (width, height) as stored (no EXIF rotation, like the loader); it is None
    unless ``status`` is ``"ok"``. ``detail`` explains a failure.
    """

    path: Path
    status: ProbeStatus
    size: tuple[int, int] | None = None
    detail: str = ""


def resolve_inside(image_dir: Path, file_name: str) -> Path | None:
    """``image_dir / file_name``, or None when ``file_name`` is absolute or climbs out with ``..``.

    Both separators are checked so a Windows-made JSON cannot escape on Linux either.
    """
    if not file_name or file_name.startswith(("/", "\\")):
        return None
    for pure in (PurePosixPath(file_name), PureWindowsPath(file_name)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            return None
    return image_dir / file_name


def probe_image(path: Path, *, decode: bool = False) -> ImageProbe:
    """Check one file: exists, is a format the loader decodes, and (with ``decode``) decodes."""
    if not path.is_file():
        return ImageProbe(path=path, status="missing", detail=f"file not found: {path}")
    try:
        with Image.open(path) as image:
            size = (int(image.size[0]), int(image.size[1]))
            fmt = image.format or "unknown"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return ImageProbe(path=path, status="unreadable", detail=f"cannot read {path}: {exc}")
    if fmt not in DECODABLE_FORMATS:
        allowed = ", ".join(sorted(DECODABLE_FORMATS))
        detail = f"{path} is {fmt}; the loader decodes only {allowed}"
        return ImageProbe(path=path, status="unsupported_format", detail=detail)
    if decode:
        try:
            pixels = decode_image(str(path), mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            reason = _CPP_PREFIX.sub("", str(exc))
            return ImageProbe(
                path=path, status="unreadable", detail=f"cannot decode {path}: {reason}"
            )
        # The decoded size is what training sees; it wins over the header.
        size = (int(pixels.shape[-1]), int(pixels.shape[-2]))
    return ImageProbe(path=path, status="ok", size=size)


def probe_images(paths: Sequence[Path], *, decode: bool = False) -> list[ImageProbe]:
    """:func:`probe_image` for every path, in order, on a small thread pool.

    Threads suffice: header reads wait on the disk and the decoders release the GIL.
    """
    if not paths:
        return []
    workers = min(_MAX_WORKERS, len(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: probe_image(p, decode=decode), paths))


class IssueSink(Protocol):
    """Where a check reports a defect; ``ids`` are the ``Issue`` id fields."""

    def __call__(
        self, severity: Literal["error", "warning", "info"], code: str, message: str, **ids: Any
    ) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageFile:
    """An image entry with a valid id and a safe file name.

    ``size`` is the file's real (width, height), or None when the file is missing or cannot
    be read; such an image is unusable.
    """

    id: int
    file_name: str
    path: Path
    size: tuple[int, int] | None


def check_images(
    items: list[Any], image_dir: Path, *, decode: bool, add: IssueSink
) -> dict[int, ImageFile]:
    """Check the ``images`` section and probe every file; entries by id, in file order.

    An entry without an int id and str file name, with a repeated id, or with a name leaving
    ``image_dir`` is reported and left out.
    """
    entries: dict[int, tuple[str, Path]] = {}
    declared: dict[int, tuple[int, int]] = {}
    first_of_file: dict[str, int] = {}
    for index, item in enumerate(items):
        image_id, name = json_get(item, "id"), json_get(item, "file_name")
        ids: dict[str, Any] = {"image_id": image_id if is_json_int(image_id) else None}
        ids["file_name"] = name if isinstance(name, str) else None
        if not is_json_int(image_id) or not isinstance(name, str):
            msg = f"images[{index}] needs an int id and a str file_name, got {short_repr(item)}"
            add("error", "invalid_image", msg, **ids)
            continue
        path = resolve_inside(image_dir, name)
        if image_id in entries:
            msg = f"image id {image_id} is used again by {name}; that entry is ignored"
            add("error", "duplicate_image_id", msg, **ids)
            continue
        if path is None:
            add("error", "unsafe_file_name", f"{name!r} is absolute or leaves the folder", **ids)
            continue
        if name in first_of_file:
            msg = f"{name} is also image {first_of_file[name]}; both are kept"
            add("warning", "duplicate_file_name", msg, **ids)
        first_of_file.setdefault(name, image_id)
        width, height = item.get("width"), item.get("height")
        if width is None or height is None:
            add("info", "missing_size", "no declared width/height; the file's size is used", **ids)
        elif is_json_int(width) and is_json_int(height) and width > 0 and height > 0:
            declared[image_id] = (width, height)
        else:
            msg = f"declared size {width!r} x {height!r} is invalid; the file's size is used"
            add("warning", "invalid_size", msg, **ids)
        entries[image_id] = (name, path)
    if not items:
        add("error", "no_images", "the dataset has no images")
    probes = probe_images([path for _, path in entries.values()], decode=decode)
    files = {}
    for (image_id, (name, path)), probe in zip(entries.items(), probes, strict=True):
        ids = {"image_id": image_id, "file_name": name}
        said = declared.get(image_id)
        if probe.size is None:
            add("error", _PROBE_CODES.get(probe.status, "unreadable_image"), probe.detail, **ids)
        elif said is not None and said != probe.size:
            msg = f"declared {_wh(said)} but the file is {_wh(probe.size)}; the file's is used"
            add("warning", "size_mismatch", msg, **ids)
        files[image_id] = ImageFile(id=image_id, file_name=name, path=path, size=probe.size)
    return files


def json_get(item: object, key: str) -> Any:
    """``item[key]`` when ``item`` is a JSON object that has it, else None."""
    return item.get(key) if isinstance(item, dict) else None


def is_json_int(value: object) -> TypeGuard[int]:
    """An integer, and not a bool (JSON ``true`` parses as a Python int subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
