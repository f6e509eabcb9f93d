"""Box arithmetic and formatting for the validator's checks and messages."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

Box = tuple[float, float, float, float]

DUPLICATE_IOU = 0.9
"""Two boxes of one class overlapping this much in one image are one object labelled twice."""


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def repeated_boxes(
    boxes: Sequence[Box], category_ids: Sequence[int], crowd: Sequence[bool]
) -> Iterator[tuple[int, int, float]]:
    """``(j, i, iou)`` for each box ``j`` that repeats an earlier kept box ``i`` of its class
    (IoU >= ``DUPLICATE_IOU``, neither crowd). A repeat is never itself the ``i`` of another."""
    repeats: set[int] = set()
    for j in range(len(boxes)):
        for i in range(j):
            if i in repeats or category_ids[i] != category_ids[j] or crowd[i] or crowd[j]:
                continue
            overlap = iou(boxes[i], boxes[j])
            if overlap >= DUPLICATE_IOU:
                repeats.add(j)
                yield j, i, overlap
                break


def is_finite_number(value: object) -> bool:
    """A JSON number (not a bool) that is a finite float, or an int within the float range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past the float range: no box coordinate
        return False


def fmt_number(value: float) -> str:
    return f"{value:.6g}"


def fmt_box(box: Any) -> str:
    return "[" + ", ".join(fmt_number(float(v)) for v in box) + "]"
