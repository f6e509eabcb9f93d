"""The batched head losses against a per-anchor reference written out here."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torchvision.models.detection.retinanet import RetinaNetClassificationHead

from detector.model.heads import (
    BoxRegressionHead,
    FocalClassificationHead,
    FocalRetinaNetHead,
    MatchedTargets,
    gather_matched,
)
from detector.model.matching import IGNORE, PaddedTargets, ignore_crowd, pad_targets

K, A = 3, 2


def _batch(
    seed: int = 0, rows: int = 40
) -> tuple[
    list[dict[str, torch.Tensor]], dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]
]:
    """Two images with 3 and 1 boxes; random logits, deltas, anchors and matches."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    matched = []
    for num_boxes in (3, 1):
        xy = torch.rand(num_boxes, 2, generator=gen) * 50
        wh = torch.rand(num_boxes, 2, generator=gen) * 30 + 5
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(0, K, (num_boxes,), generator=gen),
            }
        )
        m = torch.randint(-2, num_boxes, (rows,), generator=gen)
        matched.append(m)
    axy = torch.rand(rows, 2, generator=gen) * 50
    awh = torch.rand(rows, 2, generator=gen) * 30 + 5
    anchors = torch.cat([axy, axy + awh], 1)
    outputs = {
        "cls_logits": torch.randn(2, rows, K, generator=gen) * 3,
        "bbox_regression": torch.randn(2, rows, 4, generator=gen) * 0.5,
    }
    return targets, outputs, [anchors, anchors.clone()], matched


def _gathered(
    targets: list[dict[str, torch.Tensor]], anchors: list[torch.Tensor], matched: list[torch.Tensor]
) -> MatchedTargets:
    """What the heads' losses take, from per-image lists."""
    return gather_matched(pad_targets(targets), torch.stack(anchors), torch.stack(matched))


def _focal(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-x))
    p_t = p if t == 1 else 1 - p
    a_t = alpha if t == 1 else 1 - alpha
    return -a_t * (1 - p_t) ** gamma * math.log(p_t)


def _smooth_l1(d: float, beta: float) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def _encode(gt: list[float], anchor: list[float]) -> list[float]:
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    return [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]


def _reference(targets, outputs, anchors, matched, beta: float) -> tuple[float, float]:
    cls_total, box_total, positives = 0.0, 0.0, 0
    for i, target in enumerate(targets):
        for r, m in enumerate(matched[i].tolist()):
            if m == IGNORE:
                continue
            label = int(target["labels"][m]) if m >= 0 else -1
            for k in range(K):
                t = 1.0 if k == label else 0.0
                cls_total += _focal(float(outputs["cls_logits"][i, r, k]), t)
            if m >= 0:
                positives += 1
                goal = _encode(target["boxes"][m].tolist(), anchors[i][r].tolist())
                pred = outputs["bbox_regression"][i, r].tolist()
                box_total += sum(_smooth_l1(p - g, beta) for p, g in zip(pred, goal, strict=True))
    positives = max(1, positives)
    return cls_total / positives, box_total / positives


def _heads(**kwargs: Any) -> tuple[FocalClassificationHead, BoxRegressionHead]:
    cls = FocalClassificationHead(
        in_channels=8, num_anchors=A, num_classes=K, num_convs=1, channels=8, **kwargs
    )
    box = BoxRegressionHead(
        in_channels=8, num_anchors=A, num_convs=1, channels=8, loss="smooth_l1", smooth_l1_beta=0.11
    )
    return cls, box


def test_batched_losses_equal_per_anchor_reference() -> None:
    targets, outputs, anchors, matched = _batch()
    cls, box = _heads()
    cls_ref, box_ref = _reference(targets, outputs, anchors, matched, beta=0.11)
    gt = _gathered(targets, anchors, matched)
    cls_loss = cls.compute_loss(gt, outputs)
    box_loss = box.compute_loss(gt, outputs, torch.stack(anchors))
    assert cls_loss.item() == pytest.approx(cls_ref, rel=1e-5)
    assert box_loss.item() == pytest.approx(box_ref, rel=1e-5)


def test_ignored_anchors_do_not_count() -> None:
    targets, outputs, anchors, matched = _batch()
    gt = _gathered(targets, anchors, matched)
    cls, _ = _heads()
    before = cls.compute_loss(gt, outputs)
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["cls_logits"][0][matched[0] == IGNORE] = 50.0
    assert cls.compute_loss(gt, changed).item() == pytest.approx(before.item(), rel=1e-6)
    changed["cls_logits"][0][matched[0] == -1] += 1.0  # background anchors do count
    assert cls.compute_loss(gt, changed).item() != pytest.approx(before.item(), rel=1e-3)


def test_equals_torchvision_when_images_have_equal_positive_counts() -> None:
    """torchvision normalises per image; with equal counts the batch-wide norm is the same."""
    targets, outputs, anchors, matched = _batch(rows=30)
    for m in matched:
        m[:] = torch.tensor([0, 0, 0, 0] + [-1] * 20 + [-2] * 6)
    cls, _ = _heads()
    ref = RetinaNetClassificationHead(8, A, K)
    ours = cls.compute_loss(_gathered(targets, anchors, matched), outputs)
    torch.testing.assert_close(
        ours, ref.compute_loss(targets, outputs, matched), rtol=1e-5, atol=1e-6
    )


def test_batch_without_any_box_gives_finite_loss() -> None:
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    outputs = {"cls_logits": torch.randn(2, 10, K), "bbox_regression": torch.randn(2, 10, 4)}
    matched = [torch.full((10,), -1)] * 2
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(10, 1)] * 2
    cls, box = _heads()
    gt = _gathered(targets, anchors, matched)
    assert torch.isfinite(cls.compute_loss(gt, outputs))
    assert box.compute_loss(gt, outputs, torch.stack(anchors)).item() == 0.0


def test_prior_bias_and_alpha_checks() -> None:
    cls, _ = _heads(prior_prob=0.01)
    assert cls.cls_logits.bias is not None
    probs = torch.sigmoid(cls.cls_logits.bias)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01))
    with pytest.raises(ValueError, match="2 values but the model has 3 classes"):
        _heads(alpha=(0.25, 0.5))


def test_giou_and_l1_box_losses_are_zero_for_perfect_deltas() -> None:
    targets, outputs, anchors, matched = _batch()
    gt = _gathered(targets, anchors, matched)
    for kind in ("l1", "giou"):
        box = BoxRegressionHead(in_channels=8, num_anchors=A, num_convs=1, channels=8, loss=kind)
        perfect = {k: v.clone() for k, v in outputs.items()}
        for i, target in enumerate(targets):
            fg = matched[i] >= 0
            perfect["bbox_regression"][i][fg] = box.box_coder.encode_single(
                target["boxes"][matched[i][fg]], anchors[i][fg]
            )
        assert box.compute_loss(gt, perfect, torch.stack(anchors)).item() == pytest.approx(
            0.0, abs=1e-5
        )
        assert box.compute_loss(gt, outputs, torch.stack(anchors)).item() > 0.01


def test_uncertainty_weighting_in_head_is_trainable() -> None:
    targets, outputs, anchor_list, matched_list = _batch()
    padded, anchors, matched = (
        pad_targets(targets),
        torch.stack(anchor_list),
        torch.stack(matched_list),
    )
    gt = gather_matched(padded, anchors, matched)
    cls, box = _heads()
    head = FocalRetinaNetHead(classification_head=cls, regression_head=box, weighting="uncertainty")
    losses = head.compute_loss(padded, outputs, anchors, matched)
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert head.log_vars.requires_grad and head.log_vars.grad is not None
    fixed = FocalRetinaNetHead(
        classification_head=cls, regression_head=box, cls_weight=2.0, box_weight=0.5
    )
    plain = {
        "classification": cls.compute_loss(gt, outputs),
        "bbox_regression": box.compute_loss(gt, outputs, anchors),
    }
    weighted = fixed.compute_loss(padded, outputs, anchors, matched)
    torch.testing.assert_close(weighted["classification"], 2.0 * plain["classification"])
    torch.testing.assert_close(weighted["bbox_regression"], 0.5 * plain["bbox_regression"])
    assert not fixed.log_vars.requires_grad


def test_background_anchors_inside_crowd_regions_are_ignored() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0], [0.0, 0.0, 10.0, 10.0]]
    )
    matched = torch.tensor([[-1, -1, 0], [-1, -1, 0]])
    box = {"boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]), "labels": torch.tensor([1])}
    # Image 0 has two crowd regions (one far away), image 1 none: its row is padding.
    crowded = {**box, "crowd_boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0], [90, 90, 99, 99]])}
    gt = pad_targets([crowded, box])
    assert gt.crowd.shape == (2, 2, 4) and gt.crowd_valid.tolist() == [[True, True], [False, False]]
    out = ignore_crowd(gt, torch.stack([anchors, anchors]), matched, min_ioa=0.5)
    assert out.tolist() == [[IGNORE, -1, 0], [-1, -1, 0]]  # the positive stays positive
    # A padding row is no crowd even at a threshold of 0, where any real region would do.
    assert ignore_crowd(gt, torch.stack([anchors, anchors]), matched, min_ioa=0.0)[1].tolist() == [
        -1,
        -1,
        0,
    ]
    no_crowd = pad_targets([box, box])
    assert ignore_crowd(no_crowd, torch.stack([anchors, anchors]), matched, min_ioa=0.5) is matched


def test_padding_keeps_a_row_when_no_image_has_a_box() -> None:
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    gt: PaddedTargets = pad_targets([empty, empty])
    assert gt.boxes.shape == (2, 1, 4) and not gt.valid.any() and gt.crowd.shape == (2, 0, 4)
