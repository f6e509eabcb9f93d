"""Augmentation and resizing presets (torchvision.transforms.v2) for detection samples.

Resizing happens here, on uint8 images in the data-loader workers (as detectron2's
``ResizeShortestEdge``), not inside the model: the model only normalises and pads. So the
image a model sees is already at its final size, and ``target["boxes"]`` are in its pixels.

A sample is ``(tv_tensors.Image uint8[3, H, W], target)`` where ``target`` holds ``boxes``
(``tv_tensors.BoundingBoxes`` xyxy), ``labels`` int64[N] and ``crowd`` bool[N]; any transform
that removes a box removes its label and crowd flag with it.

The shorter side goes to ``min_size`` unless that would make the longer side exceed
``max_size``, in which case the longer side goes to ``max_size`` (sizes rounded to the nearest
pixel). ``v2.Resize(size, max_size=...)`` is not used: it truncates (640x480 -> 1066x800,
not 1067x800) and refuses ``max_size <= size``, which a recipe may legitimately ask for.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from detector.config import DataConfig


def resized_hw(height: int, width: int, *, min_size: int, max_size: int) -> tuple[int, int]:
    """(H, W) after resizing: shorter side to ``min_size``, longer side capped at ``max_size``."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class ResizeShortestEdge(v2.RandomShortestSize):
    """Resize so the shorter side is one of ``min_sizes`` (drawn at random when there are
    several), the longer side at most ``max_size``; boxes are scaled with the image.
    """

    def __init__(self, *, min_sizes: tuple[int, ...], max_size: int) -> None:
        super().__init__(min_size=list(min_sizes), max_size=max_size, antialias=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        # A single size draws nothing, so evaluation leaves the random stream untouched.
        pick = 0 if len(self.min_size) == 1 else int(torch.randint(len(self.min_size), ()))
        assert self.max_size is not None
        size = resized_hw(height, width, min_size=self.min_size[pick], max_size=self.max_size)
        return {"size": size}


def labels_and_crowd(inputs: Any) -> tuple[Tensor, Tensor] | None:
    """``SanitizeBoundingBoxes`` labels getter: the per-box tensors of ``(image, target)``.

    Module-level (not a lambda) so the transforms pickle into spawned loader workers.
    """
    if isinstance(inputs, tuple | list) and len(inputs) == 2 and isinstance(inputs[1], dict):
        target = inputs[1]
        return target["labels"], target["crowd"]
    return None


def build_transforms(cfg: DataConfig, *, train: bool) -> v2.Compose:
    """The training (random) or evaluation (deterministic) pipeline.

    Both take ``tv_tensors.Image`` uint8[3, H, W] (alone or with a target) and return the
    image as float32 in [0, 1] at its final size.
    """
    if not train:
        return v2.Compose(
            [
                ResizeShortestEdge(min_sizes=(cfg.eval_min_size,), max_size=cfg.max_size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
    steps: list[v2.Transform] = [v2.RandomPhotometricDistort()] if cfg.photometric else []
    steps.append(v2.RandomHorizontalFlip(p=cfg.hflip_prob))
    if cfg.vflip_prob > 0:  # only when asked: other recipes keep their random stream
        steps.append(v2.RandomVerticalFlip(p=cfg.vflip_prob))
    steps += [
        ResizeShortestEdge(min_sizes=cfg.train_min_sizes, max_size=cfg.max_size),
        v2.ClampBoundingBoxes(),
        # Boxes under a pixel after resizing teach nothing and can break the box coder.
        v2.SanitizeBoundingBoxes(min_size=1, labels_getter=labels_and_crowd),
        v2.ToDtype(torch.float32, scale=True),
    ]
    return v2.Compose(steps)
