"""Drawing detections onto an image, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import encode_png, write_png
from torchvision.utils import draw_bounding_boxes

from detector.predict import DetectionOut

_PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def draw(image: Tensor, detections: Sequence[DetectionOut]) -> Tensor:
    """``image`` (uint8[3, H, W]) with labelled boxes, one colour per class."""
    if not detections:
        return image
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d.bbox for d in detections)])
    labels = [f"{d.category_name} {d.score:.2f}" for d in detections]
    colors = [_PALETTE[d.category_id % len(_PALETTE)] for d in detections]
    drawn: Tensor = draw_bounding_boxes(image, xyxy, labels=labels, colors=colors, width=2)
    return drawn


def draw_detections(image: Tensor, detections: Sequence[DetectionOut], out: Path) -> Path:
    """Write the drawn image as a PNG at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(draw(image, detections), str(out))
    return out


def render_png(image: Tensor, detections: Sequence[DetectionOut]) -> bytes:
    """The drawn image as PNG bytes."""
    return bytes(encode_png(draw(image, detections)).numpy().tobytes())
