"""A synthetic COCO dataset of coloured shapes on noisy backgrounds.

Written as a real COCO folder (``annotations/instances_{split}.json`` + ``images/*.png``), so
tests and the quick start exercise exactly the code path a user's dataset takes. Classes are
drawn with controllable imbalance; some images hold no shape at all (negatives).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate. ``class_weights`` sets the imbalance (normalised to sum to 1)."""

    num_images: int
    size_px: int = 128
    seed: int = 0
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    class_weights: tuple[float, ...] = (0.6, 0.3, 0.1)
    max_objects: int = 4
    min_object_frac: float = 0.15
    max_object_frac: float = 0.4
    negative_frac: float = 0.1
    noise_std: float = 12.0

    def __post_init__(self) -> None:
        unknown = set(self.classes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown shapes {sorted(unknown)}; choose from {SHAPES}")
        if len(self.class_weights) != len(self.classes):
            raise ValueError("class_weights needs one weight per class")
        if self.num_images < 1 or self.size_px < 16 or self.max_objects < 1:
            raise ValueError("need num_images >= 1, size_px >= 16 and max_objects >= 1")


def make_shapes(
    out_dir: Path, spec: ShapesSpec, *, split: str = "train", first_id: int = 1
) -> Path:
    """Write ``spec.num_images`` images and their COCO annotations; return the JSON path.

    Image file names are ``{split}_{id:06d}.png`` so several splits can share ``images/``.
    """
    rng = np.random.default_rng(spec.seed)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    weights = np.asarray(spec.class_weights, dtype=np.float64)
    weights /= weights.sum()
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id in range(first_id, first_id + spec.num_images):
        canvas = _background(rng, spec)
        draw = ImageDraw.Draw(canvas)
        count = (
            0 if rng.random() < spec.negative_frac else int(rng.integers(1, spec.max_objects + 1))
        )
        for box in _place_boxes(rng, spec, count):
            label = int(rng.choice(len(spec.classes), p=weights))
            _draw(draw, spec.classes[label], box, _colour(rng))
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
        file_name = f"{split}_{image_id:06d}.png"
        canvas.save(image_dir / file_name)
        images.append(
            {"id": image_id, "file_name": file_name, "width": spec.size_px, "height": spec.size_px}
        )
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(spec.classes)
    ]
    ann_path = out_dir / "annotations" / f"instances_{split}.json"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return ann_path


def make_shapes_splits(
    out_dir: Path, spec: ShapesSpec, *, splits: Sequence[tuple[str, int]]
) -> dict[str, Path]:
    """Several splits with disjoint image ids and different random streams."""
    paths, first_id = {}, 1
    for i, (split, count) in enumerate(splits):
        split_spec = replace(spec, num_images=count, seed=spec.seed * 1000 + i)
        paths[split] = make_shapes(out_dir, split_spec, split=split, first_id=first_id)
        first_id += count
    return paths


def _background(rng: np.random.Generator, spec: ShapesSpec) -> Image.Image:
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0.0, spec.noise_std, size=(spec.size_px, spec.size_px, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return r, g, b


def _place_boxes(
    rng: np.random.Generator, spec: ShapesSpec, count: int
) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` square boxes that do not overlap (so every shape stays fully visible)."""
    boxes: list[tuple[int, int, int, int]] = []
    lo = max(4, int(spec.min_object_frac * spec.size_px))
    hi = max(lo + 1, int(spec.max_object_frac * spec.size_px))
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        side = int(rng.integers(lo, hi + 1))
        x0 = int(rng.integers(0, spec.size_px - side + 1))
        y0 = int(rng.integers(0, spec.size_px - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(_disjoint(box, other) for other in boxes):
            boxes.append(box)
    return boxes


def _disjoint(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _draw(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: tuple[int, int, int, int],
    fill: tuple[int, int, int],
) -> None:
    """Draw ``shape`` filling ``box`` (x0, y0, x1, y1 in pixels, x1/y1 exclusive)."""
    x0, y0, x1, y1 = box
    right, bottom = x1 - 1, y1 - 1
    cx, cy = (x0 + right) / 2, (y0 + bottom) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, right, bottom), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (right, bottom), (x0, bottom)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (right, cy), (cx, bottom), (x0, cy)], fill=fill)
    else:  # cross: two bars a third of the box wide
        t = max(1.0, (x1 - x0) / 3)
        draw.rectangle((cx - t / 2, y0, cx + t / 2, bottom), fill=fill)
        draw.rectangle((x0, cy - t / 2, right, cy + t / 2), fill=fill)
