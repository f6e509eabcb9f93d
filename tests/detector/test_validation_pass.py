"""The trainer's validation: loss terms and detections from one forward pass, equal to what
the two passes (losses in training mode, detections in eval mode) give."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detector.config import LossConfig, ModelConfig
from detector.data.coco import CocoDetection
from detector.data.transforms import build_transforms
from detector.engine.checkpoint import LAST
from detector.evaluate.runner import predict_dataset, validate
from detector.model.build import build_model
from detector.predict import Predictor
from tests.trained import TrainedRun, shapes_recipe

CPU = torch.device("cpu")


def _val_set(shapes: Path) -> CocoDetection:
    transforms = build_transforms(shapes_recipe(shapes).data, train=False)
    return CocoDetection.from_files(
        shapes / "annotations" / "instances_val.json", shapes / "images", transforms=transforms
    )


@torch.no_grad()
def _training_mode_losses(model: nn.Module, dataset: CocoDetection) -> dict[str, float]:
    """Reference: torchvision's own losses (training mode, BatchNorm frozen), batch means."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(dataset), 8):
        batch = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
        images, targets = [image for image, _ in batch], [target for _, target in batch]
        for name, value in model(images, targets).items():
            sums[name] = sums.get(name, 0.0) + float(value)
    batches = -(-len(dataset) // 8)
    model.eval()
    return {name: total / batches for name, total in sums.items()}


def test_one_pass_gives_the_losses_and_detections_of_two(trained_run: TrainedRun) -> None:
    predictor = Predictor.load(trained_run.workdir / "checkpoints" / LAST, device="cpu")
    model, val = predictor.model, _val_set(trained_run.shapes)
    found = validate(model, val, device=CPU, batch_size=8)
    expected = _training_mode_losses(model, val)
    assert found.losses.keys() == expected.keys() == {"classification", "bbox_regression"}
    for name, value in expected.items():
        assert abs(found.losses[name] - value) <= 1e-5 * value, name
    detections = list(predict_dataset(model, val, device=CPU))
    assert len(detections) > len(val)  # a trained model: something to compare
    assert [(d.image_id, d.category_id) for d in found.detections] == [
        (d.image_id, d.category_id) for d in detections
    ]
    for ours, ref in zip(found.detections, detections, strict=True):
        assert max(abs(a - b) for a, b in zip(ours.bbox, ref.bbox, strict=True)) < 1e-4
        assert abs(ours.score - ref.score) < 1e-6
    # Without detections asked for, the same losses and no detections; no hook is left behind.
    losses_only = validate(model, val, device=CPU, batch_size=8, detect=False)
    assert losses_only.losses == found.losses and losses_only.detections == []
    assert not model.head._forward_hooks and not model.anchor_generator._forward_hooks


def test_validation_leaves_batchnorm_statistics_alone(shapes: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", norm="bn", fpn_channels=32, head_channels=32)
    model = build_model(cfg, LossConfig(), num_classes=3)
    val = _val_set(shapes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = validate(model, val, device=CPU, batch_size=8, detect=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    expected = _training_mode_losses(model, val)
    for name, value in expected.items():
        assert abs(found.losses[name] - value) <= 1e-5 * value, name
