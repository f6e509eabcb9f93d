"""Losses for dense detectors (classification, and the GIoU box loss), and the weighting of
loss terms.

All functions are pure. Conventions: ``K`` classes; sigmoid losses take one logit per class
and a 0/1 (or soft) target per class; the softmax loss takes ``C`` logits and an integer
class per row. The focal modulating factor ``(1 - p_t) ** gamma`` multiplies every element
*before* any reduction.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["none", "mean", "sum"]
Alpha = float | Tensor | None


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: Alpha = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Focal loss of Lin et al. (2017) on independent per-class sigmoids.

    ``FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)``.

    Args:
        logits: float[..., K], raw scores.
        targets: float[..., K], 1 for the true class, 0 otherwise (soft values allowed).
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``): a scalar, a
            float[K] tensor (one weight per class), or None / a negative number for none.
        gamma: focusing parameter >= 0; 0 gives the alpha-balanced cross-entropy.
        reduction: "none" -> float[..., K]; "mean" or "sum" -> a scalar.
        weight: broadcast to float[..., K] and multiplied in before the reduction; a weight
            of 0 leaves an element out without the indexing that waits for a GPU.
    """
    # BCE-with-logits is log-sum-exp stable, so logits of +-100 stay finite.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1 - p_t from sigmoid(-x) and sigmoid(x) directly: ``1 - p_t`` cancels to exactly 0 in
    # fp32 once |logit| > ~17 (an easy negative), and (1 - p_t) ** gamma with gamma < 1 then
    # has an infinite derivative, a NaN gradient (0.5 x 0 ** -0.5 x sigmoid' = inf x 0).
    miss = targets * torch.sigmoid(-logits) + (1 - targets) * torch.sigmoid(logits)
    loss = ce * _modulation(miss, gamma)
    loss = _apply_alpha(loss, targets, alpha)
    return _reduce(loss, reduction, weight)


def alpha_balanced_ce(
    logits: Tensor,
    targets: Tensor,
    alpha: Alpha = 0.25,
    reduction: Reduction = "none",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """The paper's alpha-balanced binary cross-entropy ``-alpha_t * log(p_t)``.

    Arguments and shapes as :func:`sigmoid_focal_loss`; equal to it with ``gamma = 0``.
    """
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _reduce(_apply_alpha(ce, targets, alpha), reduction, weight)


def softmax_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: Alpha = None,
    gamma: float = 2.0,
    reduction: Reduction = "none",
    *,
    weight: Tensor | None = None,
) -> Tensor:
    """Multi-class focal loss on a softmax: ``-alpha_y * (1 - p_y) ** gamma * log(p_y)``.

    Args:
        logits: float[N, C], one score per class (background included if the model has one).
        targets: int64[N], the true class of each row.
        alpha: None (no weighting), a scalar applied to every row, or float[C] per class.
        gamma: focusing parameter >= 0; 0 gives (class-weighted) softmax cross-entropy.
        reduction: "none" -> float[N]; "mean" or "sum" -> a scalar.
        weight: float[N] (or broadcastable), multiplied in before the reduction.
    """
    log_p = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -_modulation(-torch.expm1(log_p), gamma) * log_p
    if isinstance(alpha, Tensor):
        loss = loss * alpha.to(loss)[targets]
    elif alpha is not None and alpha >= 0:
        loss = loss * alpha
    return _reduce(loss, reduction, weight)


def generalized_iou_loss(boxes: Tensor, targets: Tensor, eps: float = 1e-7) -> Tensor:
    """``1 - GIoU`` of each box with its target (Rezatofighi et al. 2019), as
    ``torchvision.ops.generalized_box_iou_loss(reduction="none")`` computes it, but with the
    intersection clamped at 0 rather than masked: torchvision's boolean mask makes a GPU wait
    for the host, and gives the same values and gradients.

    Args:
        boxes: float[P, 4] xyxy predictions.
        targets: float[P, 4] xyxy.

    Returns:
        float[P], in [0, 2].
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    tx1, ty1, tx2, ty2 = targets.unbind(-1)
    width = (torch.min(x2, tx2) - torch.max(x1, tx1)).clamp(min=0)
    height = (torch.min(y2, ty2) - torch.max(y1, ty1)).clamp(min=0)
    inter = width * height
    union = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - inter
    hull = (torch.max(x2, tx2) - torch.min(x1, tx1)) * (torch.max(y2, ty2) - torch.min(y1, ty1))
    return 1 - (inter / (union + eps) - (hull - union) / (hull + eps))


def _modulation(miss: Tensor, gamma: float) -> Tensor:
    """``miss ** gamma`` (``miss = 1 - p_t``), with a finite gradient where ``miss`` is 0.

    The floor is the dtype's smallest normal number: below any value a loss can tell apart,
    and where it applies the clamp passes no gradient, so ``0 ** (gamma - 1)`` is never used.
    """
    if gamma == 0:
        return torch.ones_like(miss)
    return miss.clamp(min=torch.finfo(miss.dtype).tiny) ** gamma


AUTO_ALPHA_MEAN = 0.25
"""The mean of ``alpha: auto``'s per-class values: the paper's scalar default."""
AUTO_ALPHA_RANGE = (0.01, 0.99)


def frequency_alpha(
    counts: Sequence[int],
    *,
    mean: float = AUTO_ALPHA_MEAN,
    bounds: tuple[float, float] = AUTO_ALPHA_RANGE,
) -> tuple[float, ...]:
    """``loss.alpha: auto``: per-class weights of positives from the training set's boxes.

    ``alpha_c = mean * K * w_c / sum(w)`` with ``w_c = 1 / sqrt(f_c)``, ``f_c`` the class's
    share of the boxes (a class without boxes counts one), then clipped to ``bounds``. A rare
    class's few positives weigh more against its many negatives; the square root keeps a very
    rare class from taking all of the weight (inverse frequency itself over-corrects, as the
    class-balanced-loss literature found). Equal counts give the scalar default everywhere.

    Args:
        counts: int[K], boxes per class (crowd boxes excluded).
    """
    if not counts:
        raise ValueError("alpha: auto needs at least one class")
    total = sum(max(1, c) for c in counts)
    weights = [math.sqrt(total / max(1, c)) for c in counts]
    scale = mean * len(weights) / sum(weights)
    low, high = bounds
    return tuple(min(high, max(low, w * scale)) for w in weights)


def uncertainty_weighted(losses: dict[str, Tensor], log_vars: Tensor) -> dict[str, Tensor]:
    """Homoscedastic-uncertainty weighting of Kendall, Gal and Cipolla (2018).

    Each term becomes ``exp(-s_i) * L_i + s_i`` with a learned log-variance ``s_i``; the
    ``+ s_i`` keeps the weights from collapsing to zero.

    Args:
        losses: T scalar loss terms, in a fixed order.
        log_vars: float[T], one learned log-variance per term, in the same order.
    """
    if log_vars.shape != (len(losses),):
        raise ValueError(f"need {len(losses)} log-variances, got shape {tuple(log_vars.shape)}")
    return {
        name: torch.exp(-s) * value + s
        for (name, value), s in zip(losses.items(), log_vars.unbind(), strict=True)
    }


def compiled(loss_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Wrap ``loss_fn`` with torch.compile, falling back to eager if compiling fails.

    Compiling fuses the dozen elementwise passes of the focal loss (and of its backward) into
    one loop each, which is what makes it several times faster on big anchor sets. Toolchains
    differ between hosts (no C++ compiler, an old Triton), so a failure must never stop a run.
    """
    fast = torch.compile(loss_fn, dynamic=True)
    state = {"eager": False}

    def run(*args: object, **kwargs: object) -> Tensor:
        if state["eager"]:
            return loss_fn(*args, **kwargs)
        try:
            return fast(*args, **kwargs)
        except Exception as exc:
            # If the eager loss raises too, the arguments are at fault, not the compiler: that
            # error propagates and compiling stays on. Otherwise it was a backend error: stay
            # eager from now on.
            loss = loss_fn(*args, **kwargs)
            warnings.warn(f"torch.compile failed, using the eager loss: {exc}", stacklevel=2)
            state["eager"] = True
            return loss

    return run


def _apply_alpha(loss: Tensor, targets: Tensor, alpha: Alpha) -> Tensor:
    if alpha is None:
        return loss
    if isinstance(alpha, Tensor):
        alpha = alpha.to(loss)  # float[K] broadcasts over the trailing class dimension
    elif alpha < 0:
        return loss
    return loss * (alpha * targets + (1 - alpha) * (1 - targets))


def _reduce(loss: Tensor, reduction: Reduction, weight: Tensor | None = None) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
