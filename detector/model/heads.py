"""RetinaNet heads with a focal classification loss computed over the whole batch at once.

They keep torchvision's head interface, so :class:`torchvision.models.detection.RetinaNet`
drives them unchanged. Anchor labels from the matcher (``matched_idxs``) follow torchvision's
convention: ``>= 0`` the index of the matched ground-truth box, ``-1`` background, ``-2``
ignored (IoU between the background and foreground thresholds).

Unlike torchvision's heads, which loop over images and normalise each by its own number of
positives, every loss here is one call over ``(N, R, ...)`` tensors normalised by the number
of positive anchors in the whole batch, as in the paper.
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
from torchvision.ops import box_area, generalized_box_iou_loss
from torchvision.ops.misc import Conv2dNormActivation

from detector.config import GROUP_NORM_GROUPS
from detector.model.losses import (
    alpha_balanced_ce,
    compiled,
    sigmoid_focal_loss,
    softmax_focal_loss,
    uncertainty_weighted,
)

BACKGROUND = -1
IGNORE = -2

ClassificationLoss = Literal["sigmoid_focal", "alpha_balanced_ce", "softmax_focal"]
BoxLoss = Literal["smooth_l1", "l1", "giou"]


class MatchedTargets(NamedTuple):
    """Ground truth gathered per anchor for a batch of N images with R anchors each."""

    matched: Tensor
    """int64[N, R]: matched box index, or BACKGROUND / IGNORE."""
    boxes: Tensor
    """float[N, R, 4] xyxy: the matched box of each anchor (meaningless where matched < 0)."""
    labels: Tensor
    """int64[N, R]: the matched label of each anchor (meaningless where matched < 0)."""


def gather_matched(
    targets: Sequence[dict[str, Tensor]], matched_idxs: Sequence[Tensor]
) -> MatchedTargets:
    """Pad each image's boxes to the batch maximum and gather them per anchor, in one go.

    Args:
        targets: N dicts with ``boxes`` float[M_i, 4] and ``labels`` int64[M_i].
        matched_idxs: N tensors int64[R].
    """
    matched = torch.stack(list(matched_idxs))  # (N, R)
    n, device = matched.shape[0], matched.device
    max_boxes = max(1, *(len(t["labels"]) for t in targets))
    boxes = torch.zeros(n, max_boxes, 4, device=device, dtype=targets[0]["boxes"].dtype)
    labels = torch.zeros(n, max_boxes, device=device, dtype=torch.int64)
    for i, t in enumerate(targets):  # a copy per image; the loss itself is batched
        boxes[i, : len(t["labels"])] = t["boxes"]
        labels[i, : len(t["labels"])] = t["labels"]
    index = matched.clamp(min=0)  # (N, R)
    return MatchedTargets(
        matched=matched,
        boxes=boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4)),  # (N, R, 4)
        labels=labels.gather(1, index),  # (N, R)
    )


def num_positives(matched: Tensor) -> Tensor:
    """Positive anchors in the whole batch, at least 1 (a float scalar for division)."""
    return (matched >= 0).sum().clamp(min=1).to(torch.float32)


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

    def elementwise_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Summed loss of float[P, K] logits against float[P, K] 0/1 targets."""
        if self.loss_kind == "alpha_balanced_ce":
            return alpha_balanced_ce(logits, targets, self.alpha, reduction="sum")
        return self._focal(logits, targets, self.alpha, self.gamma, "sum")

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        """Focal loss over all non-ignored anchors of the batch / batch-wide positive count."""
        gt = gather_matched(targets, matched_idxs)
        foreground = gt.matched >= 0  # (N, R)
        valid = gt.matched != IGNORE
        if self.loss_kind == "softmax_focal":
            softmax = head_outputs["softmax_logits"].float()  # (N, R, K + 1)
            classes = torch.where(foreground, gt.labels, self.num_classes)  # (N, R); K: bg
            loss = softmax_focal_loss(
                softmax[valid], classes[valid], self.softmax_alpha, self.gamma, "sum"
            )
            return loss / num_positives(gt.matched)
        logits = head_outputs["cls_logits"].float()  # (N, R, K); the loss runs in fp32 under AMP
        one_hot = F.one_hot(gt.labels, self.num_classes).to(logits.dtype)  # (N, R, K)
        one_hot *= foreground.unsqueeze(-1)
        return self.elementwise_loss(logits[valid], one_hot[valid]) / num_positives(gt.matched)


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
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        """Box loss summed over the batch's positive anchors / their count."""
        gt = gather_matched(targets, matched_idxs)
        foreground = gt.matched >= 0  # (N, R)
        deltas = head_outputs["bbox_regression"].float()[foreground]  # (P, 4)
        fg_anchors = torch.stack(anchors)[foreground]  # (P, 4)
        fg_boxes = gt.boxes[foreground]  # (P, 4)
        if self.loss_kind == "giou":
            decoded = self.box_coder.decode_single(deltas, fg_anchors)
            loss: Tensor = generalized_box_iou_loss(decoded, fg_boxes, reduction="sum")
        else:
            target_deltas = self.box_coder.encode_single(fg_boxes, fg_anchors)
            if self.loss_kind == "l1":
                loss = F.l1_loss(deltas, target_deltas, reduction="sum")
            else:
                loss = F.smooth_l1_loss(
                    deltas, target_deltas, beta=self.smooth_l1_beta, reduction="sum"
                )
        return loss / num_positives(gt.matched)


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
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """``{"classification": scalar, "bbox_regression": scalar}``, already weighted.

        The total loss is the sum of the values.
        """
        matched_idxs = ignore_crowd(targets, anchors, matched_idxs, min_ioa=self.crowd_ioa)
        losses = {
            "classification": self.classification_head.compute_loss(
                targets, head_outputs, matched_idxs
            ),
            "bbox_regression": self.regression_head.compute_loss(
                targets, head_outputs, anchors, matched_idxs
            ),
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


def ignore_crowd(
    targets: Sequence[dict[str, Tensor]],
    anchors: Sequence[Tensor],
    matched_idxs: Sequence[Tensor],
    *,
    min_ioa: float,
) -> list[Tensor]:
    """Turn background anchors mostly inside a crowd region into ignored ones.

    A crowd box marks many objects that are not labelled one by one: an anchor there is
    neither a positive nor a trustworthy negative.

    Args:
        targets: dicts that may hold ``crowd_boxes`` float[C, 4] xyxy.
        anchors: N tensors float[R, 4] xyxy.
        matched_idxs: N tensors int64[R].
        min_ioa: intersection over anchor area from which an anchor is ignored.
    """
    out = []
    for target, anchors_i, matched in zip(targets, anchors, matched_idxs, strict=True):
        crowd = target.get("crowd_boxes")
        if crowd is None or crowd.numel() == 0:
            out.append(matched)
            continue
        lt = torch.max(anchors_i[:, None, :2], crowd[None, :, :2])
        rb = torch.min(anchors_i[:, None, 2:], crowd[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=-1)  # (R, C)
        ioa = (inter / box_area(anchors_i).clamp(min=1e-6)[:, None]).amax(dim=1)  # (R,)
        out.append(torch.where((matched == BACKGROUND) & (ioa >= min_ioa), IGNORE, matched))
    return out
