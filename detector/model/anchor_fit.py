"""Anchor fit: can the recipe's anchors match each class's boxes at all?

For every class, the best possible recall: the fraction of its training boxes that some
anchor overlaps with IoU >= the foreground threshold, at the recipe's evaluation image size.
A class far below 1.0 (small objects under the smallest anchor, or thin ones no aspect ratio
fits) will train poorly however long the run, so this is checked before any GPU time is spent.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detector.config import DataConfig, ModelConfig
from detector.data.validate import CleanCoco
from detector.model.build import build_anchor_generator

WARN_BELOW = 0.9
_SCALES = tuple(2 ** (k / 4) for k in (-1, -2, -3, -4, -5, -6, -8, 1, 2, 3, 4))


@dataclass(frozen=True)
class ClassFit:
    category_id: int
    name: str
    num_boxes: int
    recall: float | None
    """Fraction of boxes matchable at ``fg_iou``; None for a class without boxes."""
    median_side_px: float | None
    """Median sqrt(w*h) of the class's boxes at the evaluation size."""


@dataclass(frozen=True)
class AnchorFit:
    classes: tuple[ClassFit, ...]
    fg_iou: float
    anchor_sizes: tuple[float, ...]
    suggested_sizes: tuple[float, ...] | None
    """Base sizes that bring every class to ``WARN_BELOW`` (None when none needed or none found)."""

    def weak(self) -> tuple[ClassFit, ...]:
        return tuple(c for c in self.classes if c.recall is not None and c.recall < WARN_BELOW)

    def to_text(self) -> str:
        lines = [f"anchor fit at IoU >= {self.fg_iou} (anchor sizes {_fmt(self.anchor_sizes)}):"]
        for c in self.classes:
            recall = "-" if c.recall is None else f"{100 * c.recall:5.1f}%"
            side = "-" if c.median_side_px is None else f"{c.median_side_px:.0f}px"
            flag = "  <-- LOW" if c in self.weak() else ""
            lines.append(
                f"  {c.name:<20} boxes {c.num_boxes:>6}  median side {side:>6}  "
                f"recall {recall}{flag}"
            )
        if self.weak():
            if self.suggested_sizes is not None:
                hint = f"set model.anchor_sizes={_fmt(self.suggested_sizes)}"
            else:
                hint = "no uniform rescaling of the anchors fixes it; try a larger image size"
            lines.append(f"  classes below {100 * WARN_BELOW:.0f}%: {hint}")
        return "\n".join(lines)


def anchor_fit(coco: CleanCoco, model: ModelConfig, data: DataConfig) -> AnchorFit:
    """Best possible recall per class with ``model``'s anchors at ``data.eval_min_size``."""
    current = _recalls(coco, model, data)
    suggested = None
    if any(r is not None and r < WARN_BELOW for r, _, _ in current.values()):
        for scale in _SCALES:
            sizes = tuple(round(s * scale, 1) for s in model.anchor_sizes)
            trial = _recalls(coco, model.model_copy(update={"anchor_sizes": sizes}), data)
            if all(r is None or r >= WARN_BELOW for r, _, _ in trial.values()):
                suggested = sizes
                break
    classes = tuple(
        ClassFit(
            category_id=c.id,
            name=c.name,
            num_boxes=current[c.id][1],
            recall=current[c.id][0],
            median_side_px=current[c.id][2],
        )
        for c in coco.categories
    )
    return AnchorFit(
        classes=classes,
        fg_iou=model.fg_iou,
        anchor_sizes=tuple(model.anchor_sizes),
        suggested_sizes=suggested,
    )


def eval_size(height: int, width: int, data: DataConfig) -> tuple[int, int]:
    """(H, W) after the evaluation resize: shorter side to eval_min_size, longer capped."""
    scale = min(data.eval_min_size / min(height, width), data.max_size / max(height, width))
    return round(height * scale), round(width * scale)


def _recalls(
    coco: CleanCoco, model: ModelConfig, data: DataConfig
) -> dict[int, tuple[float | None, int, float | None]]:
    """category id -> (recall, number of boxes, median side px)."""
    generator = build_anchor_generator(model)
    anchors_for: dict[tuple[int, int], Tensor] = {}
    hits: dict[int, list[bool]] = defaultdict(list)
    sides: dict[int, list[float]] = defaultdict(list)
    for image in coco.images:
        keep = [i for i, crowd in enumerate(image.crowd) if not crowd]
        if not keep:
            continue
        size = eval_size(image.height, image.width, data)
        if size not in anchors_for:
            anchors_for[size] = _anchors(generator, size)
        scale = torch.tensor([size[1] / image.width, size[0] / image.height] * 2)
        boxes = torch.tensor([image.boxes[i] for i in keep], dtype=torch.float32) * scale  # (B, 4)
        best = box_iou(boxes, anchors_for[size]).amax(dim=1)  # (B,)
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        for j, i in enumerate(keep):
            cat = image.category_ids[i]
            hits[cat].append(bool(best[j] >= model.fg_iou))
            sides[cat].append(float(wh[j].prod().sqrt()))
    out: dict[int, tuple[float | None, int, float | None]] = {}
    for c in coco.categories:
        h = hits.get(c.id, [])
        out[c.id] = (
            sum(h) / len(h) if h else None,
            len(h),
            float(torch.tensor(sides[c.id]).median()) if h else None,
        )
    return out


def _anchors(generator: torch.nn.Module, size: tuple[int, int]) -> Tensor:
    """float[A, 4] xyxy anchors for an image of ``size``, padded to /32 as the model pads."""
    h, w = (-(-s // 32) * 32 for s in size)
    shapes = []
    fh, fw = h // 8, w // 8  # P3 .. P5 have strides 8, 16, 32; P6, P7 halve again (ceil)
    for _ in range(5):
        shapes.append((fh, fw))
        fh, fw = -(-fh // 2), -(-fw // 2)
    images = ImageList(torch.zeros(1, 3, h, w), [size])
    features = [torch.zeros(1, 1, fh_, fw_) for fh_, fw_ in shapes]
    anchors: list[Tensor] = generator(images, features)
    return anchors[0]


def _fmt(sizes: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{s:g}" for s in sizes) + "]"
