"""``Predictor``: a trained model as a function from images to COCO-style detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import RetinaNet

from detector.config import DataConfig, TrainConfig
from detector.data.coco import CocoDetection
from detector.data.transforms import build_transforms
from detector.engine.checkpoint import load_checkpoint
from detector.engine.trainer import resolve_device
from detector.evaluate.coco import CocoMetrics
from detector.evaluate.runner import evaluate, to_original_xywh
from detector.model.build import build_model


class DetectionOut(BaseModel):
    """One detection in COCO terms: ``bbox`` is ``[x, y, w, h]`` in original pixels."""

    model_config = ConfigDict(frozen=True)

    category_id: int
    category_name: str
    bbox: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str


class Predictor:
    """Runs a RetinaNet on raw images: resize as in evaluation, detect, map back."""

    def __init__(
        self,
        *,
        model: RetinaNet,
        classes: Sequence[ClassInfo],
        data: DataConfig,
        device: torch.device,
    ) -> None:
        self.model = model.eval().to(device)
        self.classes = tuple(classes)
        self.data = data
        self.transforms = build_transforms(data, train=False)
        self.device = device

    @classmethod
    def load(cls, checkpoint: Path, *, device: str = "auto") -> Predictor:
        """From one of our checkpoints (``last.pt`` / ``best.pt``); no other file is needed."""
        ckpt = load_checkpoint(checkpoint)
        cfg = TrainConfig.model_validate(ckpt["recipe"])
        classes = [ClassInfo(id=int(c["id"]), name=str(c["name"])) for c in ckpt["classes"]]
        # The checkpoint holds every weight; the recipe's initial-weight files are not needed.
        model_cfg = cfg.model.model_copy(update={"weights": None, "backbone_weights": None})
        model = build_model(model_cfg, cfg.loss, num_classes=len(classes))
        model.load_state_dict(ckpt["model"])
        return cls(model=model, classes=classes, data=cfg.data, device=resolve_device(device))

    @torch.no_grad()
    def predict(
        self, images: Sequence[Tensor], *, score_threshold: float = 0.0
    ) -> list[list[DetectionOut]]:
        """Detections for each image.

        Args:
            images: uint8[3, H, W] RGB tensors, as decoded from files.
            score_threshold: drop detections scoring below this (the model's own
                ``score_thresh`` from the recipe applies first).
        """
        inputs = [self.transforms(tv_tensors.Image(img)) for img in images]
        outputs = self.model([x.to(self.device) for x in inputs])
        results = []
        for image, x, out in zip(images, inputs, outputs, strict=True):
            xywh = to_original_xywh(
                out["boxes"].float().cpu(),
                input_hw=(x.shape[-2], x.shape[-1]),
                original_hw=(image.shape[-2], image.shape[-1]),
            )
            dets = []
            for box, score, label in zip(
                xywh.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
            ):
                if score < score_threshold:
                    continue
                info = self.classes[label]
                dets.append(
                    DetectionOut(
                        category_id=info.id,
                        category_name=info.name,
                        bbox=(box[0], box[1], box[2], box[3]),
                        score=score,
                    )
                )
            results.append(dets)
        return results

    def evaluate(
        self, annotations: Path, image_dir: Path, *, strict: bool = False, batch_size: int = 8
    ) -> CocoMetrics:
        """COCO metrics on a dataset whose categories must be the model's."""
        dataset = CocoDetection.from_files(
            annotations,
            image_dir,
            strict=strict,
            transforms=build_transforms(self.data, train=False),
        )
        if dataset.category_ids != tuple(c.id for c in self.classes):
            raise ValueError(
                f"dataset categories {dataset.category_ids} differ from the model's "
                f"{tuple(c.id for c in self.classes)}"
            )
        return evaluate(self.model, dataset, device=self.device, batch_size=batch_size)

    def predict_files(
        self, paths: Sequence[Path], *, score_threshold: float = 0.0
    ) -> list[list[DetectionOut]]:
        images = [read_rgb(p) for p in paths]
        return self.predict(images, score_threshold=score_threshold)


def read_rgb(path: Path) -> Tensor:
    """uint8[3, H, W]; a clear error for a missing or undecodable file."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        image: Tensor = decode_image(str(path), mode=ImageReadMode.RGB)
        return image
    except RuntimeError as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from None
