"""RetinaNet heads with a focal classification loss computed over the whole batch at once.

Their forward passes are torchvision's; their losses take the batched ground truth and
matches of :class:`~detector.model.matching.BatchMatchingRetinaNet`. Anchor matches follow
torchvision's convention: ``>= 0`` the index of the matched ground-truth box, ``-1``
background, ``-2`` ignored (IoU between the background and foreground thresholds).

Unlike torchvision's heads, which loop over images and normalise each by its own number of
positives, every loss here is one call over ``(N, R, ...)`` tensors normalised by the number
of positive anchors in the whole batch, as in the paper. Anchors a loss leaves out get a
weight of 0 rather than being indexed away: boolean indexing makes a GPU stop and report how
many elements remain before the next kernel can be queued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetRegressionHead,
)
from torchvision.ops.misc import Conv2dNormActivation

from detector.config import GROUP_NORM_GROUPS
from detector.model.losses import (
    alpha_balanced_ce,
    compiled,
    generalized_iou_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
    uncertainty_weighted,
)
from detector.model.matching import IGNORE, PaddedTargets, ignore_crowd

ClassificationLoss = Literal["sigmoid_focal", "alpha_balanced_ce", "softmax_focal"]
BoxLoss = Literal["smooth_l1", "l1", "giou"]


class MatchedTargets(NamedTuple):
    """Ground truth gathered per anchor for a batch of N images with R anchors each."""

    matched: Tensor
    """int64[N, R]: matched box index, or BACKGROUND / IGNORE."""
    boxes: Tensor
    """float[N, R, 4] xyxy: the matched box of each anchor; where matched < 0 the anchor
    itself, a finite target that every box loss can compute (and then leaves out)."""
    labels: Tensor
    """int64[N, R] in 0..K-1: the matched label of each anchor (meaningless where
    matched < 0)."""
    positives: Tensor
    """float scalar: positive anchors in the whole batch, at least 1."""


def gather_matched(gt: PaddedTargets, anchors: Tensor, matched: Tensor) -> MatchedTargets:
    """Each anchor's matched box and label, gathered from the padded batch in one go.

    Args:
        gt: the batch's ground truth, padded to M boxes per image.
        anchors: float[N, R, 4] xyxy.
        matched: int64[N, R] from :func:`~detector.model.matching.match_anchors`.
    """
    index = matched.clamp(min=0)  # (N, R)
    foreground = matched >= 0  # (N, R)
    boxes = gt.boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))  # (N, R, 4)
    return MatchedTargets(
        matched=matched,
        boxes=torch.where(foreground.unsqueeze(-1), boxes, anchors),
        labels=gt.labels.gather(1, index).clamp(min=0),  # padding rows hold -1
        positives=foreground.sum().clamp(min=1).to(torch.float32),
    )


def conv_tower(
    *, in_channels: int, channels: int, num_convs: int, group_norm: bool = False
) -> nn.Sequential:
    """``num_convs`` 3x3 conv (+ GroupNorm(32)) + ReLU layers, initialised as in the paper
    (N(0, 0.01), bias 0). Parameter names are torchvision's (``conv.{i}.0.weight``, the norm
    ``conv.{i}.1``), so its RetinaNet files load by name."""
    norm = partial(nn.GroupNorm, GROUP_NORM_GROUPS) if group_norm else None
    layers = [
        Conv2dNormActivation(in_channels if i == 0 else channels, channels, norm_layer=norm)
        for i in range(num_convs)
    ]
    tower = nn.Sequential(*layers)
    for module in tower.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:  # no bias before a norm
                nn.init.zeros_(module.bias)
    return tower


def foreground_log_odds(logits: Tensor) -> Tensor:
    """float[..., K + 1] softmax logits (background last) -> float[..., K] log-odds whose
    sigmoid is each class's softmax probability: what torchvision's post-processing (which
    applies a sigmoid) and our exports expect of every head."""
    log_p = F.log_softmax(logits.float(), dim=-1)[..., :-1]
    # log(1 - p) = log(-expm1(log p)); p rounds to 1 at log p > -6e-8 in fp32.
    log_p = log_p.clamp(max=-1e-7)
    return log_p - torch.log(-torch.expm1(log_p))


class FocalClassificationHead(RetinaNetClassificationHead):
    """Per-anchor class scores with a sigmoid focal loss (or its alpha-balanced CE baseline),
    or a softmax focal loss over K classes + background.

    ``forward``: ``float[N, HWA, C]`` raw logits; C = K (one sigmoid per class) or K + 1
    (``softmax_focal``; background is class K). :meth:`outputs` gives what the RetinaNet
    reads: ``cls_logits`` float[N, HWA, K] whose sigmoid is the class probability, for every
    loss kind, and ``softmax_logits`` (the raw K + 1) for the softmax loss.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        channels: int = 256,
        prior_prob: float = 0.01,
        loss: ClassificationLoss = "sigmoid_focal",
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        compile_loss: bool = False,
        group_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, prior_probability=prior_prob)
        self.conv = conv_tower(
            in_channels=in_channels, channels=channels, num_convs=num_convs, group_norm=group_norm
        )
        self.num_outputs = num_classes + 1 if loss == "softmax_focal" else num_classes
        out_in = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(
            out_in, num_anchors * self.num_outputs, kernel_size=3, padding=1
        )
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        _init_prior(self.cls_logits, prior_prob=prior_prob, num_classes=num_classes, loss=loss)
        if isinstance(alpha, Sequence):
            if len(alpha) != num_classes:
                raise ValueError(
                    f"loss.alpha has {len(alpha)} values but the model has {num_classes} classes"
                )
            self.register_buffer(
                "alpha", torch.tensor(alpha, dtype=torch.float32), persistent=False
            )
        else:
            self.alpha: Tensor | float | None = alpha
        self.gamma = gamma
        self.loss_kind = loss
        self._focal = compiled(sigmoid_focal_loss) if compile_loss else sigmoid_focal_loss
        self.softmax_alpha: Tensor | None
        self.register_buffer(
            "softmax_alpha", softmax_class_alpha(alpha, num_classes), persistent=False
        )

    def forward(self, x: list[Tensor]) -> Tensor:
        """FPN levels float[N, C_in, H_l, W_l] -> float[N, sum_l H_l W_l A, C] raw logits."""
        out = []
        for features in x:
            logits = self.cls_logits(self.conv(features))  # (N, A*C, H, W)
            n, _, h, w = logits.shape
            logits = logits.view(n, -1, self.num_outputs, h, w).permute(0, 3, 4, 1, 2)
            out.append(logits.reshape(n, -1, self.num_outputs))  # (N, HWA, C)
        return torch.cat(out, dim=1)

    def outputs(self, x: list[Tensor]) -> dict[str, Tensor]:
        """``cls_logits`` (a sigmoid gives each class's probability) and, for the softmax
        loss, ``softmax_logits``."""
        logits = self(x)
        if self.loss_kind != "softmax_focal":
            return {"cls_logits": logits}
        return {"cls_logits": foreground_log_odds(logits), "softmax_logits": logits}

    def elementwise_loss(self, logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
        """Summed loss of float[..., K] logits against float[..., K] 0/1 targets, each element
        times ``weight`` (broadcast)."""
        if self.loss_kind == "alpha_balanced_ce":
            return alpha_balanced_ce(logits, targets, self.alpha, "sum", weight=weight)
        return self._focal(logits, targets, self.alpha, self.gamma, "sum", weight=weight)

    def compute_loss(self, gt: MatchedTargets, head_outputs: dict[str, Tensor]) -> Tensor:
        """Focal loss over all non-ignored anchors of the batch / batch-wide positive count."""
        foreground = gt.matched >= 0  # (N, R)
        kept = gt.matched != IGNORE
        if self.loss_kind == "softmax_focal":
            softmax = head_outputs["softmax_logits"].float()  # (N, R, K + 1)
            classes = torch.where(foreground, gt.labels, self.num_classes)  # (N, R); K: bg
            loss = softmax_focal_loss(
                softmax, classes, self.softmax_alpha, self.gamma, "sum", weight=kept.float()
            )
            return loss / gt.positives
        logits = head_outputs["cls_logits"].float()  # (N, R, K); the loss runs in fp32 under AMP
        # A comparison, not F.one_hot, which reads its input's range back on the CPU.
        classes = torch.arange(self.num_classes, device=logits.device)
        one_hot = (gt.labels.unsqueeze(-1) == classes) & foreground.unsqueeze(-1)  # (N, R, K)
        weight = kept.unsqueeze(-1).to(logits.dtype)  # (N, R, 1)
        return self.elementwise_loss(logits, one_hot.to(logits.dtype), weight) / gt.positives


class BoxRegressionHead(RetinaNetRegressionHead):
    """Per-anchor box deltas; loss over the batch's positive anchors only.

    Output: ``float[N, HWA, 4]`` deltas (dx, dy, dw, dh) relative to the anchors.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        num_convs: int = 4,
        channels: int = 256,
        loss: BoxLoss = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9.0,
        group_norm: bool = False,
    ) -> None:
        super().__init__(in_channels, num_anchors)
        self.conv = conv_tower(
            in_channels=in_channels, channels=channels, num_convs=num_convs, group_norm=group_norm
        )
        out_in = channels if num_convs > 0 else in_channels
        self.bbox_reg = nn.Conv2d(out_in, num_anchors * 4, kernel_size=3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)  # type: ignore[arg-type]
        self.loss_kind = loss
        self.smooth_l1_beta = smooth_l1_beta

    def compute_loss(
        self, gt: MatchedTargets, head_outputs: dict[str, Tensor], anchors: Tensor
    ) -> Tensor:
        """Box loss summed over the batch's positive anchors / their count.

        Args:
            gt: the batch's matches.
            head_outputs: ``bbox_regression`` float[N, R, 4].
            anchors: float[N, R, 4] xyxy.
        """
        deltas = head_outputs["bbox_regression"].float()  # (N, R, 4)
        flat_anchors, flat_boxes = anchors.flatten(0, 1), gt.boxes.flatten(0, 1)  # (N R, 4)
        if self.loss_kind == "giou":
            decoded = self.box_coder.decode_single(deltas.flatten(0, 1), flat_anchors)
            per_anchor = generalized_iou_loss(decoded, flat_boxes)
        else:
            target = self.box_coder.encode_single(flat_boxes, flat_anchors)  # (N R, 4)
            if self.loss_kind == "l1":
                per_element = F.l1_loss(deltas.flatten(0, 1), target, reduction="none")
            else:
                per_element = F.smooth_l1_loss(
                    deltas.flatten(0, 1), target, beta=self.smooth_l1_beta, reduction="none"
                )
            per_anchor = per_element.sum(dim=-1)
        # where, not a product: 0 x an overflow on some background anchor would be NaN.
        kept = torch.where(gt.matched.flatten() >= 0, per_anchor, 0.0)  # (N R,)
        return kept.sum() / gt.positives


class FocalRetinaNetHead(nn.Module):
    """Classification + regression heads, crowd handling and the weighting of the two losses."""

    def __init__(
        self,
        *,
        classification_head: FocalClassificationHead,
        regression_head: BoxRegressionHead,
        weighting: Literal["fixed", "uncertainty"] = "fixed",
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        crowd_ioa: float = 0.5,
    ) -> None:
        super().__init__()
        self.classification_head = classification_head
        self.regression_head = regression_head
        self.weighting = weighting
        self.fixed_weights: Tensor
        self.register_buffer(
            "fixed_weights", torch.tensor([cls_weight, box_weight]), persistent=False
        )
        # Learned log-variances (Kendall et al. 2018); only trained with weighting="uncertainty".
        self.log_vars = nn.Parameter(torch.zeros(2), requires_grad=weighting == "uncertainty")
        self.crowd_ioa = crowd_ioa

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {**self.classification_head.outputs(x), "bbox_regression": self.regression_head(x)}

    def compute_loss(
        self,
        gt: PaddedTargets,
        head_outputs: dict[str, Tensor],
        anchors: Tensor,
        matched: Tensor,
    ) -> dict[str, Tensor]:
        """``{"classification": scalar, "bbox_regression": scalar}``, already weighted.

        The total loss is the sum of the values.

        Args:
            gt: the batch's ground truth, padded.
            head_outputs: what :meth:`forward` returned.
            anchors: float[N, R, 4] xyxy.
            matched: int64[N, R] from :func:`~detector.model.matching.match_anchors`.
        """
        matched = ignore_crowd(gt, anchors, matched, min_ioa=self.crowd_ioa)
        targets = gather_matched(gt, anchors, matched)
        losses = {
            "classification": self.classification_head.compute_loss(targets, head_outputs),
            "bbox_regression": self.regression_head.compute_loss(targets, head_outputs, anchors),
        }
        if self.weighting == "uncertainty":
            return uncertainty_weighted(losses, self.log_vars)
        return {
            name: w * value
            for (name, value), w in zip(losses.items(), self.fixed_weights, strict=True)
        }


def softmax_class_alpha(alpha: float | Sequence[float] | None, num_classes: int) -> Tensor | None:
    """The softmax loss's weight of each of its K + 1 classes: ``alpha`` (or alpha_c) for the
    K object classes, ``1 - alpha`` (1 - the mean alpha_c) for the background, as the
    sigmoid loss weighs a positive against a negative. None: no weighting."""
    if alpha is None or (not isinstance(alpha, Sequence) and alpha < 0):
        return None
    fg = torch.tensor(alpha, dtype=torch.float32).expand(num_classes)
    return torch.cat([fg, (1 - fg.mean()).view(1)])


def _init_prior(conv: nn.Conv2d, *, prior_prob: float, num_classes: int, loss: str) -> None:
    """Start every anchor at foreground probability ``prior_prob`` per class, so the many
    easy negatives do not swamp the first iterations with a huge loss.

    Sigmoid: every bias ``-log((1 - pi) / pi)``. Softmax: object biases 0 and the background's
    ``log(1 / pi - K)`` (each object class then has probability pi; at least 0 when
    K * pi >= 1)."""
    assert conv.bias is not None
    if loss != "softmax_focal":
        nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))
        return
    with torch.no_grad():
        bias = conv.bias.view(-1, num_classes + 1)  # (A, K + 1)
        bias.zero_()
        bias[:, num_classes] = math.log(max(1 / prior_prob - num_classes, 1.0))
