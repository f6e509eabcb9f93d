"""Torchvision weights by name, read from torchvision's cache and never downloaded.

Every test plants a state dict made here under the file name torchvision's cache would use,
in a temporary ``TORCH_HOME``, and checks that exactly that is what gets loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection import retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

from detector.commands import main
from detector.config import LossConfig, ModelConfig
from detector.model.build import build_model
from detector.model.weight_names import cache_dir
from detector.model.weights import MissingWeightsError
from detector.recipe import RecipeError, load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ModelConfig(
    backbone="resnet18",
    norm="bn",
    trainable_backbone_layers=5,
    fpn_channels=32,
    head_convs=1,
    head_channels=32,
    anchor_sizes=(16, 32, 64, 128, 256),
)
R50 = ModelConfig(backbone="resnet50", anchor_sizes=(16, 32, 64, 128, 256))
COCO_CLASSES = 91  # torchvision's COCO detectors: 91 logits per anchor


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision cache of this test's own."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = cache_dir()
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _plant(folder: Path, file_name: str, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, folder / file_name)


def _marked_resnet18() -> dict[str, torch.Tensor]:
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.conv1.weight.fill_(0.125)
    return net.state_dict()


@pytest.mark.parametrize("name", ["ResNet18_Weights.IMAGENET1K_V1", "imagenet"])
def test_backbone_weights_by_name_come_from_the_cache(torch_home: Path, name: str) -> None:
    _plant(torch_home, "resnet18-f37072fd.pth", _marked_resnet18())
    model = build_model(
        TINY.model_copy(update={"backbone_weights": name}), LossConfig(), num_classes=3
    )
    assert torch.all(model.backbone.body.conv1.weight == 0.125)


def test_missing_file_names_the_file_the_folder_and_the_pull_command(torch_home: Path) -> None:
    cfg = TINY.model_copy(update={"backbone_weights": "imagenet"})
    with pytest.raises(MissingWeightsError) as caught:
        build_model(cfg, LossConfig(), num_classes=3)
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message
    assert "retinanet weights pull ResNet18_Weights.IMAGENET1K_V1" in message
    assert not any(torch_home.iterdir())  # nothing was fetched


def test_recipes_refuse_names_of_other_architectures() -> None:
    recipe = CONFIGS / "bccd_r18.yaml"
    with pytest.raises(
        RecipeError,
        match=r"model.backbone_weights: .*ResNet50_Weights.IMAGENET1K_V2 are not weights for "
        r"backbone resnet18; it takes: ResNet18_Weights.IMAGENET1K_V1",
    ):
        load_recipe(recipe, ["model.backbone_weights=ResNet50_Weights.IMAGENET1K_V2"])
    with pytest.raises(RecipeError, match=r"model.weights: .*resnet50 backbone"):
        load_recipe(recipe, ["model.weights=coco"])
    with pytest.raises(RecipeError, match=r"not a torchvision weights name"):
        load_recipe(recipe, ["model.backbone_weights=ResNet18_Weights.NOPE"])
    with pytest.raises(
        RecipeError, match=r"V2_Weights.COCO_V1 are not weights for model.variant v1"
    ):
        load_recipe(
            recipe,
            ["model.backbone=resnet50", "model.weights=RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"],
        )
    ok = load_recipe(recipe, ["model.backbone=resnet50", "model.variant=v2", "model.weights=coco"])
    assert ok.model.weights == "coco"
    with pytest.raises(RecipeError, match=r"norm=gn has no BatchNorm statistics"):
        load_recipe(recipe, ["model.norm=gn", "model.backbone_weights=imagenet"])


def _coco_v2_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    stock = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=COCO_CLASSES)
    with torch.no_grad():
        stock.head.classification_head.conv[0][1].weight.fill_(0.5)  # a GroupNorm
    return _as_frozen_bn(stock.state_dict())


def _as_frozen_bn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's COCO files were trained with FrozenBatchNorm2d: no num_batches_tracked."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_v2_coco_weights_load_with_nothing_skipped(
    torch_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _coco_v2_state()
    _plant(torch_home, "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", state)
    cfg = R50.model_copy(update={"variant": "v2", "weights": "coco"})
    with caplog.at_level(logging.INFO, logger="detector.model.weights"):
        model = build_model(cfg, LossConfig(box="giou"), num_classes=COCO_CLASSES)
    ours = model.state_dict()
    for name, value in state.items():
        assert torch.equal(ours[name], value), name
    assert "start from their init" not in caplog.text and "skipped" not in caplog.text
    assert "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1" in caplog.text
    # Other classes: only the class logits start over, and the log says so.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detector.model.weights"):
        cells = build_model(cfg, LossConfig(box="giou"), num_classes=3)
    differ = {n for n, v in cells.state_dict().items() if n in state and v.shape != state[n].shape}
    assert differ == {
        "head.classification_head.cls_logits.weight",
        "head.classification_head.cls_logits.bias",
    }
    for name, value in cells.state_dict().items():
        if name not in differ and name in state:
            assert torch.equal(value, state[name]), name
    assert "class logits" in caplog.text and "cls_logits.weight" in caplog.text
    cells.eval()
    with torch.no_grad():
        (out,) = cells([torch.rand(3, 64, 64)])
    assert out["boxes"].shape[1] == 4


def test_v1_coco_file_with_pre_0_13_names_loads(torch_home: Path) -> None:
    """torchvision's COCO_V1 file predates Conv2dNormActivation: old FPN and head names."""
    torch.manual_seed(0)
    state = _as_frozen_bn(retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict())
    legacy = {}
    for name, value in state.items():
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(3):
                name = name.replace(f"fpn.{block}.{i}.0.", f"fpn.{block}.{i}.")
        for head in ("classification_head", "regression_head"):
            for i in range(4):
                name = name.replace(f"{head}.conv.{i}.0.", f"{head}.conv.{2 * i}.")
        legacy[name] = value
    assert "backbone.fpn.inner_blocks.0.weight" in legacy
    assert "head.classification_head.conv.6.weight" in legacy
    _plant(torch_home, "retinanet_resnet50_fpn_coco-eeacb38b.pth", legacy)
    model = build_model(
        R50.model_copy(update={"weights": "RetinaNet_ResNet50_FPN_Weights.COCO_V1"}),
        LossConfig(),
        num_classes=COCO_CLASSES,
    )
    ours = model.state_dict()
    for name, value in state.items():
        assert torch.equal(ours[name], value), name


def test_more_backbones_build_and_take_their_imagenet_weights(torch_home: Path) -> None:
    net = torchvision.models.mobilenet_v3_large(weights=None)
    with torch.no_grad():
        net.features[0][0].weight.fill_(0.25)
    _plant(torch_home, "mobilenet_v3_large-5c1a4163.pth", net.state_dict())
    cfg = TINY.model_copy(
        update={
            "backbone": "mobilenet_v3_large",
            "backbone_weights": "imagenet",
            "norm": "frozen_bn",
        }
    )
    model = build_model(cfg, LossConfig(), num_classes=3)
    assert torch.all(model.backbone.body["0"][0].weight == 0.25)
    with torch.no_grad():
        levels = model.backbone(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in levels.values()] == [
        (8, 8),
        (4, 4),
        (2, 2),
        (1, 1),
        (1, 1),
    ]
    # Frozen stages: the stem is frozen, the last stage trains (trainable_backbone_layers=5
    # trains everything; 1 only the stride-32 stage).
    one = build_model(
        cfg.model_copy(update={"trainable_backbone_layers": 1}), LossConfig(), num_classes=3
    )
    assert not one.backbone.body["0"][0].weight.requires_grad
    assert one.backbone.body["16"][0].weight.requires_grad
    resnext = build_model(
        TINY.model_copy(update={"backbone": "resnext50_32x4d"}), LossConfig(), num_classes=3
    )
    with torch.no_grad():
        feats = resnext.backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats.values()] == [32] * 5


def test_weights_pull_uses_the_cache_and_refuses_unknown_names(
    torch_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command itself (in this process: a subprocess costs a torch import each)."""
    _plant(torch_home, "resnet18-f37072fd.pth", _marked_resnet18())
    assert main(["weights", "pull", "imagenet", "--backbone", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert f"ResNet18_Weights.IMAGENET1K_V1: {torch_home / 'resnet18-f37072fd.pth'}" in out
    assert main(["weights", "pull", "ResNet18_Weights.NOPE"]) == 1
    assert "not a torchvision weights name" in capsys.readouterr().err
    assert main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"cache: {torch_home}" in listed
    assert "resnet18-f37072fd.pth" in listed and "cached" in listed and "missing" in listed
