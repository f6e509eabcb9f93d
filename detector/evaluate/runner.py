"""Running a model over a dataset: detections in COCO terms, COCO metrics, validation loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import RetinaNet

from detector.data.coco import CocoDetection, collate_detection
from detector.evaluate.backends import EvalBackend
from detector.evaluate.coco import CocoMetrics, Detection, score_detections


def _loader(
    dataset: CocoDetection, batch_size: int, shard: tuple[int, int] = (0, 1)
) -> DataLoader[tuple[Tensor, dict[str, Tensor]]]:
    """Batches of the ``shard = (rank, world_size)`` slice: images rank, rank + world, ..."""
    rank, world = shard
    part = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(part, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)


def to_original_xywh(
    boxes: Tensor, *, input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> Tensor:
    """Boxes predicted on the resized input -> COCO ``[x, y, w, h]`` in original pixels.

    Args:
        boxes: float[D, 4] xyxy in the coordinates of the image the model saw.
        input_hw: (H, W) of that image; original_hw: (H, W) of the file.
    Returns:
        float[D, 4] xywh.
    """
    sy = original_hw[0] / input_hw[0]
    sx = original_hw[1] / input_hw[1]
    scaled = boxes * boxes.new_tensor([sx, sy, sx, sy])
    return torch.cat([scaled[:, :2], scaled[:, 2:] - scaled[:, :2]], dim=1)


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    device: torch.device,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[Detection]:
    """Every detection of ``model`` on ``dataset`` (or its ``shard``), with COCO category ids,
    in original pixels."""
    model.eval()
    for images, targets in _loader(dataset, batch_size, shard):
        outputs = model([img.to(device) for img in images])
        yield from _detections(dataset, images, targets, outputs)


def _detections(
    dataset: CocoDetection,
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    outputs: Sequence[dict[str, Tensor]],
) -> Iterator[Detection]:
    """A batch's model outputs as COCO detections in original pixels."""
    for image, target, out in zip(images, targets, outputs, strict=True):
        orig = target["orig_size"].tolist()
        xywh = to_original_xywh(
            out["boxes"].float().cpu(),
            input_hw=(image.shape[-2], image.shape[-1]),
            original_hw=(orig[0], orig[1]),
        )
        image_id = int(target["image_id"])
        for box, score, label in zip(
            xywh.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
        ):
            yield Detection(
                image_id=image_id,
                category_id=dataset.category_ids[label],
                bbox=(box[0], box[1], box[2], box[3]),
                score=score,
            )


def evaluate(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    device: torch.device,
    batch_size: int = 8,
    backend: EvalBackend = "faster_coco_eval",
) -> CocoMetrics:
    """COCO bbox metrics of ``model`` on ``dataset`` (the 12 numbers and per class)."""
    detections = list(predict_dataset(model, dataset, device=device, batch_size=batch_size))
    return score_detections(dataset.coco, detections, backend=backend)


@dataclass(frozen=True)
class Validation:
    """What the trainer's validation pass found."""

    losses: dict[str, float]
    """Mean loss terms over the batches (a float per term, as training reports them)."""
    detections: list[Detection]
    """Every detection, in COCO terms (empty unless asked for)."""


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    device: torch.device,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
    detect: bool = True,
) -> Validation:
    """Loss terms and detections of ``model`` on ``dataset`` (or its ``shard``) from one
    forward pass per batch.

    The model runs in eval mode (BatchNorm statistics untouched), and its own
    ``compute_loss`` takes the head outputs and anchors of that same pass: torchvision's
    RetinaNet gives losses only in training mode and detections only in eval mode, which
    would otherwise cost a second pass over the images.
    """
    if not isinstance(model, RetinaNet):
        raise TypeError(f"validate needs a RetinaNet, got {type(model).__name__}")
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    detections: list[Detection] = []
    for images, targets in _loader(dataset, batch_size, shard):
        targets_d = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with _outputs_of(model.head, model.anchor_generator) as seen:
            outputs = model([img.to(device) for img in images])
        head_outputs, anchors = seen
        for name, value in model.compute_loss(targets_d, head_outputs, anchors).items():
            sums[name] = sums.get(name, 0.0) + float(value)
        batches += 1
        if detect:
            detections.extend(_detections(dataset, images, targets, outputs))
    return Validation(
        losses={name: total / max(1, batches) for name, total in sums.items()},
        detections=detections,
    )


@contextmanager
def _outputs_of(*modules: nn.Module) -> Iterator[list[Any]]:
    """What each of ``modules`` returns in the forward pass run inside, in order."""
    seen: list[Any] = [None] * len(modules)

    def keeper(index: int) -> Callable[[nn.Module, object, object], None]:
        def keep(module: nn.Module, args: object, output: object) -> None:
            seen[index] = output

        return keep

    handles = [m.register_forward_hook(keeper(i)) for i, m in enumerate(modules)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
