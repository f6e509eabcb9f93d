"""Small COCO datasets written by hand for the validator's tests: two images, two classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from detector.data.validate import Issue, ValidationReport, validate_coco

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]


def image_file(path: Path, size: tuple[int, int]) -> None:
    Image.new("RGB", size, (40, 90, 160)).save(path)


def annotation(
    ann_id: int, image_id: int, bbox: Any, category_id: Any = 3, **extra: Any
) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def base_dataset() -> dict[str, Any]:
    """Two images (64x48 PNG, 80x60 JPEG), one box of each category."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 80, "height": 60},
        ],
        "annotations": [
            annotation(10, 1, [4, 6, 20, 10], 3),
            annotation(11, 2, [0, 0, 80, 60], 17),
        ],
        "categories": [dict(c) for c in CATEGORIES],
    }


def write_dataset(tmp_path: Path, data: Any) -> tuple[Path, Path]:
    """The COCO JSON (``data``, or raw text) and an image folder holding a.png and b.jpg."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    image_file(image_dir / "a.png", (64, 48))
    image_file(image_dir / "b.jpg", (80, 60))
    path = tmp_path / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path, image_dir


def check(tmp_path: Path, data: Any, **kwargs: Any) -> ValidationReport:
    return validate_coco(*write_dataset(tmp_path, data), **kwargs).report


def only_issue(report: ValidationReport, code: str) -> Issue:
    found = [i for i in report.issues if i.code == code]
    assert len(found) == 1, report.to_table()
    return found[0]


def with_fields(section: str, index: int, **fields: Any) -> dict[str, Any]:
    data = base_dataset()
    data[section][index] = {**data[section][index], **fields}
    return data
