"""The losses against torchvision and against their formulas written out independently here."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from detector.model.losses import (
    alpha_balanced_ce,
    generalized_iou_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
    uncertainty_weighted,
)


def _inputs(rows: int = 64, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen) * 4
    targets = (torch.rand(rows, classes, generator=gen) < 0.2).float()
    return logits, targets


def _focal_formula(x: float, t: float, alpha: float | None, gamma: float) -> float:
    """One element, straight from the paper, in float64 Python arithmetic."""
    p = 1 / (1 + math.exp(-x))
    p_t = p if t == 1 else 1 - p
    alpha_t = 1.0 if alpha is None else (alpha if t == 1 else 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha", [0.25, 0.75, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_sigmoid_focal_matches_torchvision(reduction: str, alpha: float, gamma: float) -> None:
    logits, targets = _inputs()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)  # type: ignore[arg-type]
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_sigmoid_focal_matches_formula_elementwise() -> None:
    logits, targets = _inputs(rows=8, classes=3)
    ours = sigmoid_focal_loss(logits.double(), targets.double(), 0.25, 2.0)
    expected = torch.tensor(
        [
            [_focal_formula(x, t, 0.25, 2.0) for x, t in zip(row_x, row_t, strict=True)]
            for row_x, row_t in zip(logits.tolist(), targets.tolist(), strict=True)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(ours, expected)


def test_extreme_logits_give_finite_values_and_gradients() -> None:
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    ours = sigmoid_focal_loss(logits, targets, 0.25, 2.0, "sum")
    ref = torchvision.ops.sigmoid_focal_loss(logits.detach(), targets, 0.25, 2.0, "sum")
    ours.backward()
    assert torch.isfinite(ours)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(ours.detach(), ref, atol=1e-6, rtol=1e-6)
    # The confidently wrong elements carry CE 100 each, weighted 0.75 (negative) + 0.25.
    assert ours.item() == pytest.approx(100.0, rel=1e-5)


def test_gamma_zero_is_alpha_balanced_ce() -> None:
    logits, targets = _inputs()
    focal = sigmoid_focal_loss(logits, targets, 0.25, 0.0, "none")
    balanced = alpha_balanced_ce(logits, targets, 0.25, "none")
    p = torch.sigmoid(logits.double())
    formula = -(0.25 * targets * torch.log(p) + 0.75 * (1 - targets) * torch.log(1 - p))
    torch.testing.assert_close(focal, balanced)
    torch.testing.assert_close(balanced.double(), formula, rtol=1e-5, atol=1e-6)


def test_alpha_none_means_no_weighting() -> None:
    logits, targets = _inputs()
    unweighted = sigmoid_focal_loss(logits, targets, None, 2.0)
    negative = sigmoid_focal_loss(logits, targets, -1.0, 2.0)
    halves = sigmoid_focal_loss(logits, targets, 0.5, 2.0)
    torch.testing.assert_close(unweighted, negative)
    torch.testing.assert_close(unweighted, 2 * halves)


def test_per_class_alpha_changes_exactly_its_classes() -> None:
    logits, targets = _inputs(classes=4)
    base = sigmoid_focal_loss(logits, targets, 0.25, 2.0)
    per_class = sigmoid_focal_loss(logits, targets, torch.tensor([0.25, 0.9, 0.25, 0.25]), 2.0)
    torch.testing.assert_close(per_class[:, [0, 2, 3]], base[:, [0, 2, 3]])
    assert not torch.allclose(per_class[:, 1], base[:, 1])
    # Class 1 gets alpha 0.9 on positives and 0.1 on negatives: a closed-form rescaling.
    scale = torch.where(targets[:, 1] == 1, 0.9 / 0.25, 0.1 / 0.75)
    torch.testing.assert_close(per_class[:, 1], base[:, 1] * scale)


def test_modulating_factor_is_applied_per_element_before_reduction() -> None:
    """Catches the mistake of scaling the already-averaged BCE by (1 - mean p_t) ** gamma."""
    logits = torch.tensor([[6.0], [-6.0], [0.0]])  # easy positive, hard positive, unsure
    targets = torch.tensor([[1.0], [1.0], [1.0]])
    mean_loss = sigmoid_focal_loss(logits, targets, None, 2.0, "mean")
    per_element = [_focal_formula(x, 1.0, None, 2.0) for x in (6.0, -6.0, 0.0)]
    assert mean_loss.item() == pytest.approx(sum(per_element) / 3, rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    p_t_mean = torch.sigmoid(logits).mean()
    wrong = (1 - p_t_mean) ** 2 * bce
    assert abs(mean_loss.item() - wrong.item()) > 0.1
    # The easy positive is almost switched off, the hard one keeps nearly all of its CE.
    none = sigmoid_focal_loss(logits, targets, None, 2.0, "none").squeeze(1)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    ratio = (none / ce.squeeze(1)).tolist()
    assert ratio[0] < 1e-4 and ratio[1] > 0.99


def test_softmax_focal_matches_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 4, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (16,), generator=gen)
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    ours = softmax_focal_loss(logits, labels, alpha, 2.0, "none")
    expected = []
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        p_y = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(-alpha[y].item() * (1 - p_y) ** 2 * math.log(p_y))
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))


def test_softmax_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits = torch.randn(32, 6)
    labels = torch.randint(0, 6, (32,))
    ours = softmax_focal_loss(logits, labels, None, 0.0, "mean")
    torch.testing.assert_close(ours, torch.nn.functional.cross_entropy(logits, labels))


def test_softmax_focal_extreme_logits_are_finite() -> None:
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    loss = softmax_focal_loss(logits, torch.tensor([0, 0]), 0.25, 2.0, "sum")
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()


def test_uncertainty_weighting_matches_formula_and_learns_weights() -> None:
    losses = {"classification": torch.tensor(2.0), "bbox_regression": torch.tensor(0.5)}
    log_vars = torch.tensor([0.3, -0.2], requires_grad=True)
    weighted = uncertainty_weighted(losses, log_vars)
    assert weighted["classification"].item() == pytest.approx(math.exp(-0.3) * 2.0 + 0.3)
    assert weighted["bbox_regression"].item() == pytest.approx(math.exp(0.2) * 0.5 - 0.2)
    sum(weighted.values()).backward()  # type: ignore[union-attr]
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert log_vars.grad is not None
    torch.testing.assert_close(
        log_vars.grad, torch.tensor([1 - math.exp(-0.3) * 2.0, 1 - math.exp(0.2) * 0.5])
    )


def test_uncertainty_weighting_checks_shape() -> None:
    with pytest.raises(ValueError, match="log-variances"):
        uncertainty_weighted({"a": torch.tensor(1.0)}, torch.zeros(2))


def test_bad_reduction_is_an_error() -> None:
    logits, targets = _inputs()
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, targets, reduction="avg")  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [0.5, 0.25, 2.0])
def test_focal_gradients_stay_finite_on_saturated_logits(gamma: float) -> None:
    """``1 - p_t`` of an easy example cancels to 0 in fp32 past |logit| ~17; with gamma < 1
    the modulating factor's derivative is infinite there (torchvision's own loss turns it into
    NaN gradients: a BCCD study cell with gamma 0.5 halted at iteration 20)."""
    logits = torch.tensor([[-100.0, -30.0, -17.0, 0.0, 17.0, 30.0, 100.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=gamma, reduction="sum").backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    reference = torchvision.ops.sigmoid_focal_loss(
        logits.detach(), targets, alpha=0.25, gamma=gamma, reduction="sum"
    )
    value = sigmoid_focal_loss(logits.detach(), targets, alpha=0.25, gamma=gamma, reduction="sum")
    assert value == pytest.approx(float(reference), rel=1e-6)
    scores = torch.tensor([[40.0, 0.0, 0.0], [0.0, -40.0, 0.0]], requires_grad=True)
    softmax_focal_loss(scores, torch.tensor([0, 2]), gamma=gamma, reduction="sum").backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_giou_loss_equals_torchvisions_in_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 1 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    txy = torch.rand(200, 2, generator=gen) * 50
    targets = torch.cat([txy, txy + 1 + torch.rand(200, 2, generator=gen) * 30], dim=1)
    targets[:10] = boxes[:10]  # identical: loss 0
    targets[10:20] = boxes[10:20] + 100  # far apart: no intersection, loss near 2
    targets[20:30] = boxes[20:30] + torch.tensor([0.5, 0.5, -0.5, -0.5])  # inside
    ours_in = boxes.clone().requires_grad_(True)
    ref_in = boxes.clone().requires_grad_(True)
    ours = generalized_iou_loss(ours_in, targets)
    ref = torchvision.ops.generalized_box_iou_loss(ref_in, targets, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert ours[:10].abs().max() < 1e-6 and (ours[10:20] > 1.5).all()
    ours.sum().backward()
    ref.sum().backward()
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)
