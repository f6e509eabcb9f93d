"""``Predictor``: a trained model as a function from images to COCO-style detections.

Each call chooses its own score threshold (a number, or the per-class thresholds with the best
F1 on the validation set), NMS IoU, detection count, class filter, and optional tiling for
large images with small objects. Several calls' images can share one forward pass
(:meth:`Predictor.predict_many`), which is how the service batches concurrent requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import RetinaNet
from torchvision.ops import batched_nms

from detector.artifact import ModelCard, card_from_checkpoint, read_model_file
from detector.data.coco import CocoDetection
from detector.data.transforms import build_transforms
from detector.device import resolve_device
from detector.engine.checkpoint import load_checkpoint
from detector.evaluate.coco import CocoMetrics
from detector.evaluate.runner import evaluate
from detector.model.build import build_model
from detector.model.postprocess import (
    DenseRetinaNet,
    Detections,
    SelectOptions,
    pad_batch,
    select_detections,
)

DenseNetwork = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Padded images float[N, 3, H, W] in [0, 1] -> (box deltas float[N, A, 4], scores
float[N, A, K]), as :meth:`DenseRetinaNet.network`."""


class DetectionOut(BaseModel):
    """One detection in COCO terms: ``bbox`` is ``[x, y, w, h]`` in original pixels."""

    model_config = ConfigDict(frozen=True)

    category_id: int
    category_name: str
    bbox: tuple[float, float, float, float]
    score: float


MAX_TILES = 256
"""Tiles per image at most: tiling is bounded work, whatever the request asks."""


class PredictOptions(BaseModel):
    """Per-call inference settings; ``None`` means the model's recipe value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score_threshold: Annotated[float, Field(ge=0, le=1)] | Literal["best_f1"] = "best_f1"
    """A number, or ``"best_f1"``: each class's threshold with the best F1 on the validation
    set (the recipe's ``score_thresh`` for a class that has none)."""
    nms_iou: Annotated[float, Field(gt=0, le=1)] | None = None
    max_detections: Annotated[int, Field(gt=0, le=10_000)] | None = None
    class_ids: Annotated[tuple[int, ...], Field(max_length=10_000)] | None = None
    """Keep only these COCO category ids (None: all)."""
    # A tile is detected at the model's evaluation scale: beyond 8192 px per side a "tile" is
    # no tiling at all for any image the service accepts (RETINANET_PREDICT_MAX_PIXELS).
    tile_size: Annotated[int, Field(ge=64, le=8192)] | None = None
    """Cut images larger than this (pixels, each side) into overlapping square tiles, detect
    on each at the model's evaluation scale, and merge with NMS."""
    tile_overlap: Annotated[float, Field(ge=0, le=0.75)] = 0.25


@dataclass(frozen=True)
class _Crop:
    """A region of an original image, resized as in evaluation."""

    call: int
    image: int
    x0: int
    y0: int
    scale_x: float
    scale_y: float
    pixels: Tensor  # float[3, h, w] in [0, 1]


class Predictor:
    """Runs a RetinaNet on raw images: resize as in evaluation, detect, map back."""

    def __init__(
        self,
        *,
        model: RetinaNet,
        card: ModelCard,
        device: torch.device,
        max_batch: int = 8,
        network: DenseNetwork | None = None,
    ) -> None:
        self.model = model.eval().to(device)
        self.dense = DenseRetinaNet(self.model).eval().to(device)
        self.network: DenseNetwork = network or self.dense.network
        """Runs :meth:`DenseRetinaNet.network` (PyTorch by default; onnxruntime through
        :func:`detector.onnx_network.onnxruntime_predictor`); decoding and selection stay
        ours, whichever runs it."""
        self.card = card
        self.device = device
        self.max_batch = max_batch
        self.transforms = build_transforms(card.recipe.data, train=False)
        self._index = {c.id: i for i, c in enumerate(card.classes)}

    def with_network(self, network: DenseNetwork) -> Predictor:
        """The same model with ``network`` running its dense network."""
        return Predictor(
            model=self.model,
            card=self.card,
            device=self.device,
            max_batch=self.max_batch,
            network=network,
        )

    @classmethod
    def load(cls, path: Path, *, device: str = "auto") -> Predictor:
        """From a model file (``.safetensors``) or one of our checkpoints (``.pt``)."""
        if path.suffix == ".safetensors":
            card, state = read_model_file(path)
        else:
            ckpt = load_checkpoint(path)
            card, state = card_from_checkpoint(ckpt), ckpt["model"]
        # The file holds every weight; the recipe's initial-weight files are not needed.
        model_cfg = card.recipe.model.model_copy(update={"weights": None, "backbone_weights": None})
        model = build_model(model_cfg, card.recipe.loss, num_classes=len(card.classes))
        model.load_state_dict(state)
        return cls(model=model, card=card, device=resolve_device(device))

    def check(self, options: PredictOptions, images: Sequence[Tensor] = ()) -> None:
        """``ValueError`` for options naming classes the model lacks, or tiling ``images``
        into more than ``MAX_TILES`` tiles each."""
        unknown = sorted(set(options.class_ids or ()) - set(self._index))
        if unknown:
            raise ValueError(
                f"unknown class ids {unknown}; the model's classes: "
                + ", ".join(f"{c.id} ({c.name})" for c in self.card.classes)
            )
        for image in images:
            tiles = len(_windows(image, options.tile_size, options.tile_overlap))
            if tiles > MAX_TILES:
                raise ValueError(
                    f"tile_size {options.tile_size} with overlap {options.tile_overlap} cuts a "
                    f"{image.shape[-1]}x{image.shape[-2]} image into {tiles} tiles "
                    f"(at most {MAX_TILES}); use larger tiles or less overlap"
                )

    def predict(
        self, images: Sequence[Tensor], options: PredictOptions | None = None
    ) -> list[list[DetectionOut]]:
        """Detections for each image (uint8[3, H, W] RGB, as decoded from files)."""
        return self.predict_many([(images, options or PredictOptions())])[0]

    @torch.no_grad()
    def predict_many(
        self, calls: Sequence[tuple[Sequence[Tensor], PredictOptions]]
    ) -> list[list[list[DetectionOut]]]:
        """Several calls' images through shared forward passes; results per call, per image."""
        for images, options in calls:
            self.check(options, images)
        windows = [
            (c, i, window)
            for c, (images, options) in enumerate(calls)
            for i, image in enumerate(images)
            for window in _windows(image, options.tile_size, options.tile_overlap)
        ]
        found: dict[tuple[int, int], list[Detections]] = {}
        # Crops are resized one forward pass at a time, so memory stays bounded by max_batch.
        for start in range(0, len(windows), self.max_batch):
            chunk = [
                self._crop(c, i, calls[c][0][i], window)
                for c, i, window in windows[start : start + self.max_batch]
            ]
            for crop, dets in zip(chunk, self._detect(chunk, calls), strict=True):
                found.setdefault((crop.call, crop.image), []).append(dets)
        return [
            [self._finish(found[(c, i)], options) for i in range(len(images))]
            for c, (images, options) in enumerate(calls)
        ]

    def _crop(
        self, call: int, index: int, image: Tensor, window: tuple[int, int, int, int]
    ) -> _Crop:
        x0, y0, x1, y1 = window
        pixels = self.transforms(tv_tensors.Image(image[:, y0:y1, x0:x1]))
        return _Crop(
            call=call,
            image=index,
            x0=x0,
            y0=y0,
            scale_x=(x1 - x0) / pixels.shape[-1],
            scale_y=(y1 - y0) / pixels.shape[-2],
            pixels=pixels.as_subclass(Tensor),
        )

    def _detect(
        self, crops: Sequence[_Crop], calls: Sequence[tuple[Sequence[Tensor], PredictOptions]]
    ) -> list[Detections]:
        """One forward over the crops; boxes in original-image pixels (xyxy)."""
        batch, sizes = pad_batch(
            [c.pixels for c in crops],
            size_divisible=self.dense.size_divisible,
            pad_value=self.dense.pad_value,
        )
        deltas, scores = self.network(batch.to(self.device))
        height, width = batch.shape[-2], batch.shape[-1]
        boxes = self.dense.decode(deltas, height, width)
        per_level = self.dense.anchors_per_level(height, width)
        out = []
        for crop, size, b, s in zip(
            crops, sizes, boxes.float().cpu(), scores.float().cpu(), strict=True
        ):
            dets = select_detections(
                b, s, anchors_per_level=per_level, image_size=size,
                options=self._select_options(calls[crop.call][1]),
            )  # fmt: skip
            scale = dets.boxes.new_tensor([crop.scale_x, crop.scale_y] * 2)
            offset = dets.boxes.new_tensor([crop.x0, crop.y0] * 2)
            out.append(
                Detections(
                    boxes=dets.boxes * scale + offset, scores=dets.scores, labels=dets.labels
                )
            )
        return out

    def _select_options(self, options: PredictOptions) -> SelectOptions:
        model = self.card.recipe.model
        wanted = None if options.class_ids is None else set(options.class_ids)
        return SelectOptions(
            score_threshold=model.score_thresh,
            topk_candidates=model.topk_candidates,
            nms_iou=options.nms_iou or model.nms_thresh,
            max_detections=options.max_detections or model.detections_per_img,
            class_thresholds=tuple(
                self._threshold(c.id, options) if wanted is None or c.id in wanted else 2.0
                for c in self.card.classes
            ),
        )

    def _finish(self, parts: list[Detections], options: PredictOptions) -> list[DetectionOut]:
        """An image's detections: its tiles merged with NMS (thresholds and the class filter
        were applied in the selection, before the detection cap)."""
        boxes = torch.cat([p.boxes for p in parts])
        scores = torch.cat([p.scores for p in parts])
        labels = torch.cat([p.labels for p in parts])
        if len(parts) > 1:
            select = self._select_options(options)
            keep = batched_nms(boxes, scores, labels, select.nms_iou)[: select.max_detections]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        results = []
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            info = self.card.classes[label]
            x0, y0, x1, y1 = box
            results.append(
                DetectionOut(
                    category_id=info.id,
                    category_name=info.name,
                    bbox=(x0, y0, x1 - x0, y1 - y0),
                    score=score,
                )
            )
        return results

    def _threshold(self, category_id: int, options: PredictOptions) -> float:
        if options.score_threshold != "best_f1":
            return options.score_threshold
        return self.card.score_thresholds.get(category_id, self.card.recipe.model.score_thresh)

    def evaluate(
        self, annotations: Path, image_dir: Path, *, strict: bool = False, batch_size: int = 8
    ) -> CocoMetrics:
        """COCO metrics on a dataset whose categories must be the model's."""
        dataset = CocoDetection.from_files(
            annotations, image_dir, strict=strict, transforms=self.transforms
        )
        ours = tuple(c.id for c in self.card.classes)
        if dataset.category_ids != ours:
            raise ValueError(
                f"dataset categories {dataset.category_ids} differ from the model's {ours}"
            )
        backend = self.card.recipe.eval.backend
        return evaluate(
            self.model, dataset, device=self.device, batch_size=batch_size, backend=backend
        )

    def predict_files(
        self, paths: Sequence[Path], options: PredictOptions | None = None
    ) -> list[list[DetectionOut]]:
        return self.predict([read_rgb(p) for p in paths], options)


def _windows(image: Tensor, tile: int | None, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` regions of ``image`` to detect on: the whole image, or tiles."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if tile is None or (height <= tile and width <= tile):
        return [(0, 0, width, height)]
    step = max(1, int(tile * (1 - overlap)))
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, step)
        for x in _starts(width, tile, step)
    ]


def _starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts covering ``[0, length)`` with windows of ``tile``; the last one flush."""
    starts = list(range(0, max(1, length - tile + 1), step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def read_rgb(path: Path) -> Tensor:
    """uint8[3, H, W]; a clear error for a missing or undecodable file."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        image: Tensor = decode_image(str(path), mode=ImageReadMode.RGB)
        return image
    except RuntimeError as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None
