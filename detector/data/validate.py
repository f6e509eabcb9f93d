"""COCO dataset validation: every defect as an :class:`Issue`, and the clean data training uses.

The severity of a defect depends on whether it is confined to one box:

- ``error``: the dataset is unusable or ambiguous (bad JSON or structure, duplicate ids, an
  annotation of an unknown image, a missing, unreadable or too large image file, an id past
  64 bits, a name with control characters, a file name leading out of the dataset). Training
  refuses it.
- ``warning``: one box is dropped (bad bbox, non-positive size, unknown category, entirely
  outside the image, a near-duplicate of another box of its class) or clipped to the image;
  a declared image size is wrong (the real one is used); a category has no boxes; two image
  ids share a file. ``strict=True`` makes every warning an error.
- ``info``: images without boxes (kept as negatives) or without a declared size; an image
  with no box of a class that nearly every other image has many of (``class_absent``: a
  likely missing label, which trains and scores correct detections as false positives).

:func:`validate_coco` is the one place these rules live: the training data path reads datasets
through :func:`load_coco`, never around it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

from detector.data.boxes import Box, fmt_box, fmt_number, is_finite_number, repeated_boxes
from detector.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageFile,
    check_images,
    is_clean_text,
    is_json_id,
    json_get,
    short_repr,
)
from detector.data.label_gaps import absent_class
from detector.data.report import DatasetError, Issue, Severity, ValidationReport

__all__ = [
    "Category",
    "CleanCoco",
    "DatasetError",
    "ImageRecord",
    "Issue",
    "Severity",
    "ValidationReport",
    "load_coco",
    "validate_coco",
]

_SECTIONS = ("images", "annotations", "categories")


@dataclass(frozen=True, kw_only=True, slots=True)
class Category:
    id: int
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ImageRecord:
    """One usable image. ``width``/``height`` are the file's real size.

    ``boxes``: xyxy in original pixels after clipping; ``category_ids`` and ``crowd`` align
    with them. Crowd boxes are kept for evaluation and must never be trained as positives.
    """

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: tuple[Box, ...]
    category_ids: tuple[int, ...]
    crowd: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanCoco:
    """What survives validation: categories sorted by id, usable images in file order."""

    categories: tuple[Category, ...]
    images: tuple[ImageRecord, ...]
    report: ValidationReport


def validate_coco(
    annotations: Path,
    image_dir: Path,
    *,
    strict: bool = False,
    decode_images: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    root: Path | None = None,
) -> CleanCoco:
    """Check a COCO detection file and its images; never raises for a defect of the data.

    Args:
        annotations: the COCO JSON. image_dir: the folder its ``file_name``s are relative to.
        strict: every warning becomes an error (no box may be dropped or clipped).
        decode_images: decode every image fully (slow; finds truncated files) instead of
            reading only the headers.
        max_pixels: larger images are errors. root: image files must lie inside it once
            links are followed (default: ``image_dir``).
    """
    checker = _Checker(strict=strict)
    annotations, image_dir = Path(annotations), Path(image_dir)
    sections = checker.read(annotations)
    categories: tuple[Category, ...] = ()
    images: tuple[ImageRecord, ...] = ()
    if sections is not None:
        categories = checker.categories(sections["categories"])
        files = check_images(
            sections["images"],
            image_dir,
            decode=decode_images,
            add=checker.add,
            max_pixels=max_pixels,
            root=root,
        )
        images = checker.annotations(sections["annotations"], files, categories)
    report = ValidationReport(
        annotations_path=annotations,
        image_dir=image_dir,
        strict=strict,
        decode_images=decode_images,
        issues=checker.issues,
        **checker.stats,
    )
    return CleanCoco(categories=categories, images=images, report=report)


class Options(TypedDict, total=False):
    """The keyword options of :func:`validate_coco`."""

    strict: bool
    decode_images: bool
    max_pixels: int
    root: Path | None


def load_coco(annotations: Path, image_dir: Path, **options: Unpack[Options]) -> CleanCoco:
    """:func:`validate_coco` (same options), raising :class:`DatasetError` on errors."""
    coco = validate_coco(annotations, image_dir, **options)
    if not coco.report.ok:
        raise DatasetError(coco.report)
    return coco


@dataclass(kw_only=True, slots=True)
class _Kept:
    """The boxes of one image kept so far, and how many were dropped or clipped."""

    boxes: list[Box] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    dropped: int = 0
    clipped: int = 0


class _Checker:
    """Walks the file section by section, collecting issues and counts."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.issues: list[Issue] = []
        self.stats: dict[str, Any] = {}

    def add(self, severity: Severity, code: str, message: str, **ids: Any) -> None:
        if self.strict and severity == "warning":
            severity = "error"
        self.issues.append(Issue(severity=severity, code=code, message=message, **ids))

    def read(self, path: Path) -> dict[str, list[Any]] | None:
        """The three sections, or None (with an error) when the file cannot be used at all."""
        try:
            raw = json.loads(path.read_bytes())
        except OSError as exc:
            self.add("error", "unreadable_annotations", f"cannot read {path}: {exc.strerror}")
            return None
        except ValueError as exc:  # also UnicodeDecodeError
            self.add("error", "invalid_json", f"{path} is not valid JSON: {exc}")
            return None
        except RecursionError:  # the stdlib parser recurses; COCO nests four levels
            self.add("error", "invalid_json", f"{path} nests too deeply to be a COCO file")
            return None
        if not isinstance(raw, dict):
            msg = f"the top level must be an object, got {type(raw).__name__}"
            self.add("error", "invalid_structure", msg)
            return None
        sections: dict[str, Any] = {key: raw.get(key) for key in _SECTIONS}
        bad = [key for key, value in sections.items() if not isinstance(value, list)]
        for key in bad:
            got = "nothing" if key not in raw else type(raw[key]).__name__
            self.add("error", "invalid_structure", f"'{key}' must be a list, got {got}")
        self.stats["num_images"] = 0 if "images" in bad else len(sections["images"])
        return None if bad else sections

    def categories(self, items: list[Any]) -> tuple[Category, ...]:
        found: dict[int, Category] = {}
        for index, item in enumerate(items):
            cat_id, name = json_get(item, "id"), json_get(item, "name")
            if not is_json_id(cat_id) or not isinstance(name, str) or not is_clean_text(name):
                msg = (
                    f"categories[{index}] needs a 64-bit int id and a name without control "
                    f"characters, got {short_repr(item)}"
                )
                some_id = cat_id if is_json_id(cat_id) else None
                self.add("error", "invalid_category", msg, category_id=some_id)
            elif cat_id in found:
                msg = f"category id {cat_id} ({name!r}) repeats {found[cat_id].name!r}"
                self.add("error", "duplicate_category_id", msg, category_id=cat_id)
            else:
                found[cat_id] = Category(id=cat_id, name=name)
        if not items:
            self.add("error", "no_categories", "the dataset has no categories")
        names = Counter(c.name for c in found.values())
        for cat in found.values():
            if names[cat.name] > 1:
                msg = f"category name {cat.name!r} is used by {names[cat.name]} category ids"
                self.add("warning", "duplicate_category_name", msg, category_id=cat.id)
        return tuple(sorted(found.values(), key=lambda c: c.id))

    def annotations(
        self, items: list[Any], files: dict[int, ImageFile], categories: tuple[Category, ...]
    ) -> tuple[ImageRecord, ...]:
        known = {c.id for c in categories}
        kept = {image_id: _Kept() for image_id in files}
        seen_ids: set[int] = set()
        for index, item in enumerate(items):
            ann_id, image_id = json_get(item, "id"), json_get(item, "image_id")
            if not is_json_id(ann_id):
                msg = f"annotations[{index}] is not an object with a 64-bit int id: " + short_repr(
                    item
                )
                self.add("error", "invalid_annotation", msg)
                continue
            if ann_id in seen_ids:
                msg = f"annotation id {ann_id} appears twice"
                self.add("error", "duplicate_annotation_id", msg, annotation_id=ann_id)
            seen_ids.add(ann_id)
            if not is_json_id(image_id) or image_id not in files:
                # A rejected image entry was reported already; this names its annotations.
                msg = f"image_id {short_repr(image_id)} is not a valid image entry"
                ids = {
                    "annotation_id": ann_id,
                    "image_id": image_id if is_json_id(image_id) else None,
                }
                self.add("error", "unknown_image", msg, **ids)
                continue
            box = self._box(item, ann_id, files[image_id], known)
            into = kept[image_id]
            if box is None:
                into.dropped += 1
                continue
            into.boxes.append(box[0])
            into.annotation_ids.append(ann_id)
            into.clipped += box[1]
            into.category_ids.append(item["category_id"])
            into.crowd.append(bool(item.get("iscrowd", 0)))
        for image_id, into in kept.items():
            self._drop_duplicates(files[image_id], into)
        return self._finish(files, kept, categories, num_annotations=len(items))

    def _drop_duplicates(self, file: ImageFile, kept: _Kept) -> None:
        """Drop a box that repeats an earlier one of its class (``boxes.repeated_boxes``).

        A doubly labelled object is a positive twice in training and an unmatchable ground
        truth (a certain miss) in evaluation; real datasets have them (BCCD does).
        """
        drop: set[int] = set()
        for j, i, overlap in repeated_boxes(kept.boxes, kept.category_ids, kept.crowd):
            msg = (
                f"box {fmt_box(kept.boxes[j])} repeats annotation {kept.annotation_ids[i]} of "
                f"the same category (IoU {overlap:.2f}); box dropped"
            )
            ids = {"image_id": file.id, "file_name": file.file_name}
            ids |= {"annotation_id": kept.annotation_ids[j], "category_id": kept.category_ids[j]}
            self.add("warning", "duplicate_box", msg, **ids)
            drop.add(j)
        for name in ("boxes", "annotation_ids", "category_ids", "crowd"):
            values = getattr(kept, name)
            setattr(kept, name, [v for k, v in enumerate(values) if k not in drop])
        kept.dropped += len(drop)

    def _box(
        self, item: dict[str, Any], ann_id: int, file: ImageFile, known: set[int]
    ) -> tuple[Box, bool] | None:
        """The xyxy box, clipped to the image, and whether it was clipped; None if dropped."""
        ids = {"annotation_id": ann_id, "image_id": file.id, "file_name": file.file_name}
        cat, bbox, crowd = item.get("category_id"), item.get("bbox"), item.get("iscrowd", 0)
        if not is_json_id(cat) or cat not in known:
            msg = f"category_id {short_repr(cat)} is not a category; box dropped"
            self.add("warning", "unknown_category", msg, **ids)
            return None
        ids["category_id"] = cat
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(is_finite_number, bbox)):
            msg = f"bbox must be 4 finite numbers [x, y, w, h], got {short_repr(bbox)}; dropped"
            self.add("warning", "invalid_bbox", msg, **ids)
            return None
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            size = f"width {fmt_number(w)}, height {fmt_number(h)}"
            msg = f"bbox {fmt_box(bbox)} has {size}; box dropped"
            self.add("warning", "nonpositive_box", msg, **ids)
            return None
        if crowd not in (0, 1):
            msg = f"iscrowd must be 0 or 1, got {short_repr(crowd)}; box dropped"
            self.add("warning", "invalid_iscrowd", msg, **ids)
            return None
        if file.size is None:
            return None  # the image file is unusable: that error is reported already
        return self._clip((x, y, x + w, y + h), file.size, ids)

    def _clip(
        self, box: Box, size: tuple[int, int], ids: dict[str, Any]
    ) -> tuple[Box, bool] | None:
        x0, y0, x1, y1 = box
        width, height = size
        where = f"box {fmt_box(box)} (xyxy) in a {width}x{height} image"
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            msg = f"{where} is entirely outside it; box dropped"
            self.add("warning", "box_entirely_outside", msg, **ids)
            return None
        over = {"left": -x0, "top": -y0, "right": x1 - width, "bottom": y1 - height}
        sides = ", ".join(f"{fmt_number(v)} px on the {side}" for side, v in over.items() if v > 0)
        if not sides:
            return box, False
        inside = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
        msg = f"{where} is outside it by {sides}; clipped to {fmt_box(inside)}"
        self.add("warning", "box_outside_image", msg, **ids)
        return inside, True

    def _finish(
        self,
        files: dict[int, ImageFile],
        kept: dict[int, _Kept],
        categories: tuple[Category, ...],
        *,
        num_annotations: int,
    ) -> tuple[ImageRecord, ...]:
        """Records of the usable images, dataset-level issues and the counts."""
        records = tuple(
            ImageRecord(
                id=f.id,
                file_name=f.file_name,
                path=f.path,
                width=f.size[0],
                height=f.size[1],
                boxes=tuple(kept[f.id].boxes),
                category_ids=tuple(kept[f.id].category_ids),
                crowd=tuple(kept[f.id].crowd),
            )
            for f in files.values()
            if f.size is not None
        )
        positives: Counter[int] = Counter()
        for r in records:
            positives.update(
                c for c, crowd in zip(r.category_ids, r.crowd, strict=True) if not crowd
            )
            if all(r.crowd):
                dropped = f" ({kept[r.id].dropped} dropped)" if kept[r.id].dropped else ""
                crowd = f", {len(r.crowd)} crowd" if r.crowd else ""
                msg = f"no boxes{dropped}{crowd}; kept as a negative image"
                self.add("info", "image_without_boxes", msg, image_id=r.id, file_name=r.file_name)
        for cat in categories:
            if positives[cat.id] == 0:
                msg = f"category {cat.id} ({cat.name!r}) has no boxes"
                self.add("warning", "category_without_boxes", msg, category_id=cat.id)
            for image_id, file_name, msg in absent_class(records, cat):
                ids = {"image_id": image_id, "category_id": cat.id, "file_name": file_name}
                self.add("info", "class_absent", msg, **ids)
        num_boxes, num_crowd = sum(positives.values()), sum(sum(r.crowd) for r in records)
        names = Counter(c.name for c in categories)
        self.stats.update(
            num_annotations=num_annotations,
            num_boxes=num_boxes,
            num_crowd=num_crowd,
            num_boxes_dropped=num_annotations - num_boxes - num_crowd,
            num_boxes_clipped=sum(kept[r.id].clipped for r in records),
            num_negative_images=sum(1 for r in records if all(r.crowd)),
            # A name shared by two ids would merge their counts: such keys carry the id.
            class_counts={
                c.name if names[c.name] == 1 else f"{c.name} (id {c.id})": positives[c.id]
                for c in categories
            },
        )
        return records
