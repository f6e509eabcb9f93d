"""build_model: wiring, outputs, and weights from local files (never downloaded)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from detector.config import LossConfig, ModelConfig
from detector.model.build import build_model
from detector.model.heads import FocalRetinaNetHead
from detector.model.weights import WeightsError

TINY = ModelConfig(
    backbone="resnet18",
    norm="bn",
    trainable_backbone_layers=5,
    fpn_channels=32,
    head_convs=1,
    head_channels=32,
    anchor_sizes=(16, 32, 64, 128, 256),
)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def test_train_and_eval_outputs() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, LossConfig(), num_classes=3)
    assert isinstance(model.head, FocalRetinaNetHead)
    images = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]
    model.train()
    losses = model(images, _targets())
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    # The model does not resize: boxes stay within the image it was given.
    assert (out[0]["boxes"][:, 2] <= 128).all() and (out[0]["boxes"][:, 3] <= 96).all()


def test_anchor_and_head_shapes_follow_config() -> None:
    cfg = TINY.model_copy(update={"aspect_ratios": (1.0,), "scales_per_octave": 2, "head_convs": 3})
    model = build_model(cfg, LossConfig(), num_classes=5)
    assert model.anchor_generator.num_anchors_per_location() == [2] * 5
    assert len(model.head.classification_head.conv) == 3
    assert model.head.classification_head.cls_logits.out_channels == 2 * 5


def test_frozen_stages() -> None:
    cfg = TINY.model_copy(update={"norm": "frozen_bn", "trainable_backbone_layers": 2})
    model = build_model(cfg, LossConfig(), num_classes=3)
    body = dict(model.backbone.body.named_parameters())
    assert (
        not body["conv1.weight"].requires_grad and not body["layer2.0.conv1.weight"].requires_grad
    )
    assert (
        body["layer3.0.conv1.weight"].requires_grad and body["layer4.0.conv1.weight"].requires_grad
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        resnet.conv1.weight.fill_(0.125)
    path = tmp_path / f"resnet18{suffix}"
    state = resnet.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    model = build_model(
        TINY.model_copy(update={"backbone_weights": path}), LossConfig(), num_classes=3
    )
    assert torch.all(model.backbone.body.conv1.weight == 0.125)


def test_backbone_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"shape mismatch: conv1|layer1\.0\.conv1\.weight: file"):
        build_model(TINY.model_copy(update={"backbone_weights": path}), LossConfig(), num_classes=3)


def test_full_model_weights_and_class_count_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(TINY, LossConfig(), num_classes=5)
    path = tmp_path / "model.pt"
    torch.save({"model": source.state_dict()}, path)
    same = build_model(TINY.model_copy(update={"weights": path}), LossConfig(), num_classes=5)
    for (name, a), b in zip(source.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # Other classes: every layer but the class logits is reused, without asking.
    other = build_model(TINY.model_copy(update={"weights": path}), LossConfig(), num_classes=3)
    for name, value in other.state_dict().items():
        if "cls_logits" not in name:
            assert torch.equal(value, source.state_dict()[name]), name
    assert other.head.classification_head.cls_logits.weight.shape[0] == 27
    # Any other shape that differs is refused unless told to skip it.
    wider = TINY.model_copy(update={"weights": path, "head_channels": 64})
    with pytest.raises(
        WeightsError, match=r"conv\.0\.0\.weight: file \(32, 32, 3, 3\) vs model \(64, 32, 3, 3\)"
    ):
        build_model(wider, LossConfig(), num_classes=3)
    finetune = build_model(
        wider.model_copy(update={"skip_mismatched_weights": True}), LossConfig(), num_classes=3
    )
    assert torch.equal(finetune.backbone.body.conv1.weight, source.backbone.body.conv1.weight)


def test_unreadable_and_pickled_code_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_model(TINY.model_copy(update={"weights": garbage}), LossConfig(), num_classes=3)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "hook": print}, evil)  # a pickled callable
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_model(TINY.model_copy(update={"weights": evil}), LossConfig(), num_classes=3)
    with pytest.raises(WeightsError, match="not found"):
        build_model(
            TINY.model_copy(update={"weights": tmp_path / "none.pt"}), LossConfig(), num_classes=3
        )


def test_stock_torchvision_head_as_a_reference() -> None:
    from torchvision.models.detection.retinanet import RetinaNetHead

    cfg = TINY.model_copy(update={"head": "torchvision", "head_convs": 4, "head_channels": 32})
    model = build_model(cfg, LossConfig(), num_classes=3)
    assert type(model.head) is RetinaNetHead
    model.train()
    losses = model([torch.rand(3, 96, 128), torch.rand(3, 128, 96)], _targets())
    assert set(losses) == {"classification", "bbox_regression"}
    with pytest.raises(ValueError, match="head_convs=4 and head_channels=32"):
        ModelConfig.model_validate({**TINY.model_dump(), "head": "torchvision"})


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_large"])
def test_group_norm_backbone_keeps_no_batch_statistics(backbone: str) -> None:
    cfg = TINY.model_copy(update={"backbone": backbone, "norm": "gn"})
    model = build_model(cfg, LossConfig(), num_classes=3)
    body_norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert body_norms and not any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    # The largest group count up to 32 that divides the width (MobileNet has 24-wide blocks).
    assert all(m.num_groups == math.gcd(32, m.num_channels) for m in body_norms)
    # Without running statistics, eval mode computes what train mode computes.
    images = [torch.rand(3, 64, 64)]
    features = model.backbone(torch.stack(images))
    model.eval()
    with torch.no_grad():
        again = model.backbone(torch.stack(images))
    assert all(torch.allclose(features[k], again[k], atol=1e-5) for k in features)


def test_group_norm_backbone_refuses_torchvision_weights() -> None:
    for weights in ({"backbone_weights": "imagenet"}, {"weights": "coco", "variant": "v2"}):
        with pytest.raises(ValueError, match="norm=gn has no BatchNorm statistics"):
            ModelConfig.model_validate(
                {**TINY.model_dump(), "backbone": "resnet50", "norm": "gn", **weights}
            )
