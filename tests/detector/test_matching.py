"""Batch-wise anchor matching against torchvision's per-image ``Matcher``, and a loss that
queues on a GPU without waiting for it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from detector.config import LossConfig, ModelConfig
from detector.model.build import build_model
from detector.model.matching import BatchMatchingRetinaNet, match_anchors, pad_targets

FG, BG = 0.5, 0.4
Targets = list[dict[str, torch.Tensor]]


def _scene(seed: int, counts: tuple[int, ...], rows: int = 300) -> tuple[Targets, torch.Tensor]:
    """Images with ``counts`` boxes each over one set of anchors, with exact ties built in: two
    duplicate anchors, a box equal to an anchor; an image of exactly 2 boxes has one outside
    every anchor (best IoU 0: by torchvision's rule it claims every anchor it does not
    overlap, all of them, which then take the box they overlap most)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(rows, 2, generator=gen) * 80
    anchors = torch.cat([xy, xy + 8 + torch.rand(rows, 2, generator=gen) * 40], dim=1)
    anchors[1] = anchors[0]  # two anchors tie for every box
    targets = []
    for count in counts:
        bxy = torch.rand(count, 2, generator=gen) * 80
        boxes = torch.cat([bxy, bxy + 4 + torch.rand(count, 2, generator=gen) * 40], dim=1)
        if count >= 1:
            boxes[0] = anchors[0]  # IoU exactly 1 with the tied pair
        if count == 2:
            boxes[1] = torch.tensor([500.0, 500.0, 510.0, 510.0])
        targets.append({"boxes": boxes, "labels": torch.randint(0, 3, (count,), generator=gen)})
    return targets, anchors.expand(len(counts), -1, -1)


def _torchvision(targets: Targets, anchors: torch.Tensor) -> torch.Tensor:
    """What torchvision's ``RetinaNet.compute_loss`` matches, image by image."""
    matcher = Matcher(FG, BG, allow_low_quality_matches=True)
    out = []
    for target, anchors_i in zip(targets, anchors, strict=True):
        if target["boxes"].numel() == 0:
            out.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64))
        else:
            out.append(matcher(box_iou(target["boxes"], anchors_i)))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("seed", "counts"),
    [(0, (3, 1)), (1, (12, 0, 5, 2)), (2, (0, 0)), (3, (40,)), (4, (1, 25, 7))],
)
def test_batch_matching_equals_torchvision_image_by_image(
    seed: int, counts: tuple[int, ...]
) -> None:
    targets, anchors = _scene(seed, counts)
    expected = _torchvision(targets, anchors)
    gt = pad_targets(targets)
    got = match_anchors(gt, anchors, fg_iou=FG, bg_iou=BG)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    # Every kind of match occurs, so the equality is not about one kind only.
    if sum(counts) > 20:
        assert {-2, -1, 0} <= set(got.unique().tolist())
    # Matched a few images at a time (as a big batch is), the answer is the same.
    one_by_one = match_anchors(gt, anchors, fg_iou=FG, bg_iou=BG, max_elements=1)
    two_by_two = match_anchors(
        gt, anchors, fg_iou=FG, bg_iou=BG, max_elements=2 * gt.labels.shape[1] * anchors.shape[1]
    )
    assert torch.equal(one_by_one, expected) and torch.equal(two_by_two, expected)


def test_low_quality_matches_keep_every_box_matched() -> None:
    """A box whose best anchor overlaps it below the foreground threshold still gets it."""
    anchors = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 16.0]]), "labels": torch.tensor([2])}]
    got = match_anchors(pad_targets(targets), anchors, fg_iou=FG, bg_iou=BG)
    assert got.tolist() == [[0, -1]]  # IoU 0.625 would match anyway; see the next box
    targets[0]["boxes"] = torch.tensor([[0.0, 0.0, 10.0, 30.0]])  # IoU 1/3 with anchor 0
    got = match_anchors(pad_targets(targets), anchors, fg_iou=FG, bg_iou=BG)
    assert got.tolist() == [[0, -1]] and torch.equal(got, _torchvision(targets, anchors))


def _model(head: str, **loss: Any) -> torch.nn.Module:
    cfg = ModelConfig(
        backbone="resnet18", fpn_channels=32, head=head, head_convs=4, head_channels=32
    )
    return build_model(cfg, LossConfig(**loss), num_classes=3).train()


def _loss_inputs(model: Any) -> tuple[Targets, dict[str, torch.Tensor], list[torch.Tensor]]:
    """A batch of three 96 px images (one without boxes, one with a crowd region) through the
    model up to the loss; the head outputs are leaves, so the backward stops at them."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=gen) for _ in range(3)]
    targets, _ = _scene(5, (6, 0, 3))
    targets[2]["crowd_boxes"] = torch.tensor([[50.0, 50.0, 90.0, 90.0]])
    with torch.no_grad():
        image_list, moved = model.transform(images, targets)
        features = list(model.backbone(image_list.tensors).values())
        outputs = model.head(features)
        anchors = model.anchor_generator(image_list, features)
    leaves = {k: v.detach().requires_grad_(True) for k, v in outputs.items()}
    return moved, leaves, anchors


def test_model_loss_is_the_head_loss_on_torchvision_matches() -> None:
    torch.manual_seed(0)
    model = _model("focal")
    assert isinstance(model, BatchMatchingRetinaNet)
    targets, outputs, anchors = _loss_inputs(model)
    got = model.compute_loss(targets, outputs, anchors)
    stacked = torch.stack(anchors)
    expected = model.head.compute_loss(
        pad_targets(targets), outputs, stacked, _torchvision(targets, stacked)
    )
    assert got.keys() == expected.keys() == {"classification", "bbox_regression"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
        assert got[name] > 0


_WAITS_FOR_DEVICE = {"nonzero", "_local_scalar_dense", "masked_select"}


class _DeviceWaits(TorchDispatchMode):
    """Records the ATen calls that make a GPU report back to the host before the next kernel
    can be queued: ``nonzero`` and its users (boolean-mask indexing), reading a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = func.overloadpacket.__name__
        sequences = [a for a in args if isinstance(a, (list, tuple))]
        bool_index = name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for seq in sequences for i in seq
        )
        if name in _WAITS_FOR_DEVICE or bool_index:
            self.waits.append(name)
        return func(*args, **(kwargs or {}))


def _waits(model: Any) -> list[str]:
    """The waiting calls of ``model``'s loss and its backward, in order."""
    targets, outputs, anchors = _loss_inputs(model)
    with _DeviceWaits() as mode:
        losses = model.compute_loss(targets, outputs, anchors)
        torch.autograd.backward(torch.stack(list(losses.values())).sum())
    return mode.waits


@pytest.mark.parametrize(
    "loss",
    [
        {},
        {"classification": "softmax_focal", "box": "giou", "alpha": (0.2, 0.3, 0.4)},
        {"classification": "alpha_balanced_ce", "box": "smooth_l1", "weighting": "uncertainty"},
    ],
)
def test_our_loss_never_waits_for_the_device_and_torchvisions_does(loss: dict[str, Any]) -> None:
    torch.manual_seed(0)
    assert _waits(_model("focal", **loss)) == []
    # The recorder sees what it looks for: the stock model's matcher and losses wait.
    stock = _waits(_model("torchvision"))
    assert "nonzero" in stock and len(stock) >= 3
