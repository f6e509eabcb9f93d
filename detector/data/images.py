"""The ``images`` section of a COCO file and its files, for :mod:`detector.data.validate`.

Each entry needs a 64-bit integer id and a file name inside the image folder (after following
links: a name may not lead out of the dataset's root); each file must exist, be decodable by
the loader and not exceed the pixel limit, and its real size wins over the declared one. By
default only the header is read (PIL parses the size without decoding pixels), which is fast
enough for COCO-sized folders. A truncated file passes that check, so ``decode=True`` decodes
every image fully with the same decoder the data loader uses.
"""

from __future__ import annotations

import re
import warnings
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

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's decompression-bomb limit: it warns above this and refuses twice as much."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""COCO ids become int64 tensors (image ids) and checkpoint entries (category ids)."""

_MAX_WORKERS = 8
_CPP_PREFIX = re.compile(r"^.*\.cpp:\d+,\s*")
# Control characters cannot name a file portably and NUL cannot be stored (PostgreSQL);
# a lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8 at all.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MAX_NAME_BYTES, _MAX_PART_BYTES = 4096, 255


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
    """``image_dir / file_name``, or None when ``file_name`` is absolute, climbs out with ``..``
    or is no valid file name (control characters, longer than the filesystem takes).

    Both separators are checked so a Windows-made JSON cannot escape on Linux either.
    """
    if not file_name or file_name.startswith(("/", "\\")) or not is_file_name(file_name):
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
        with warnings.catch_warnings():
            # Pillow warns about a bomb past its limit; the caller's pixel limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
    items: list[Any],
    image_dir: Path,
    *,
    decode: bool,
    add: IssueSink,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    root: Path | None = None,
) -> dict[int, ImageFile]:
    """Check the ``images`` section and probe every file; entries by id, in file order.

    An entry without an int id and str file name, with a repeated id, or with a name leaving
    ``image_dir`` (or, following links, ``root``: default ``image_dir``) is reported and left
    out. A file of more than ``max_pixels`` pixels is an error.
    """
    inside = (root or image_dir).resolve()
    entries: dict[int, tuple[str, Path]] = {}
    declared: dict[int, tuple[int, int]] = {}
    first_of_file: dict[str, int] = {}
    for index, item in enumerate(items):
        image_id, name = json_get(item, "id"), json_get(item, "file_name")
        ids: dict[str, Any] = {"image_id": image_id if is_json_id(image_id) else None}
        ids["file_name"] = name if isinstance(name, str) and is_clean_text(name) else None
        if not is_json_id(image_id) or not isinstance(name, str):
            msg = (
                f"images[{index}] needs a 64-bit int id and a str file_name, got {short_repr(item)}"
            )
            add("error", "invalid_image", msg, **ids)
            continue
        path = resolve_inside(image_dir, name)
        if image_id in entries:
            msg = f"image id {image_id} is used again by {name}; that entry is ignored"
            add("error", "duplicate_image_id", msg, **ids)
            continue
        if path is None:
            msg = f"{short_repr(name)} is absolute, leaves the folder or is no valid file name"
            add("error", "unsafe_file_name", msg, **ids)
            continue
        if not path.resolve().is_relative_to(inside):
            msg = f"{name!r} links to a file outside {inside}"
            add("error", "unsafe_file_name", msg, **ids)
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
        said, size = declared.get(image_id), probe.size
        if size is None:
            add("error", _PROBE_CODES.get(probe.status, "unreadable_image"), probe.detail, **ids)
        elif size[0] * size[1] > max_pixels:  # prediction would refuse it: so does training
            msg = f"{_wh(size)} pixels exceeds the limit of {max_pixels}"
            add("error", "image_too_large", msg, **ids)
            size = None
        elif said is not None and said != size:
            msg = f"declared {_wh(said)} but the file is {_wh(size)}; the file's is used"
            add("warning", "size_mismatch", msg, **ids)
        files[image_id] = ImageFile(id=image_id, file_name=name, path=path, size=size)
    return files


def json_get(item: object, key: str) -> Any:
    """``item[key]`` when ``item`` is a JSON object that has it, else None."""
    return item.get(key) if isinstance(item, dict) else None


def is_json_int(value: object) -> TypeGuard[int]:
    """An integer, and not a bool (JSON ``true`` parses as a Python int subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_id(value: object) -> TypeGuard[int]:
    """A JSON integer that fits in 64 bits, as every COCO id must."""
    return is_json_int(value) and INT64_MIN <= value <= INT64_MAX


def is_clean_text(value: str) -> bool:
    """No control characters and no lone surrogates: text that can be stored and sent."""
    return _UNSAFE_CHARS.search(value) is None


def is_file_name(name: str) -> bool:
    """Clean text no longer than a filesystem takes (4096 bytes, 255 per component)."""
    return (
        is_clean_text(name)
        and len(name.encode()) <= _MAX_NAME_BYTES
        and all(len(part.encode()) <= _MAX_PART_BYTES for part in PurePosixPath(name).parts)
    )


def short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
