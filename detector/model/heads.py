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

from detector.model.losses import (
    alpha_balanced_ce,
    compiled,
    sigmoid_focal_loss,
    uncertainty_weighted,
)

BACKGROUND = -1
IGNORE = -2

ClassificationLoss = Literal["sigmoid_focal", "alpha_balanced_ce"]
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


def conv_tower(*, in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` 3x3 conv + ReLU layers, initialised as in the paper (N(0, 0.01), bias 0)."""
    layers = [
        Conv2dNormActivation(in_channels if i == 0 else channels, channels, norm_layer=None)
        for i in range(num_convs)
    ]
    tower = nn.Sequential(*layers)
    for module in tower.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            assert module.bias is not None  # Conv2dNormActivation has a bias when norm is None
            nn.init.zeros_(module.bias)
    return tower


class FocalClassificationHead(RetinaNetClassificationHead):
    """Per-anchor class scores with a sigmoid focal loss (or its alpha-balanced CE baseline).

    Output: ``float[N, HWA, K]`` logits, one sigmoid per class (no background logit).
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
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, prior_probability=prior_prob)
        self.conv = conv_tower(in_channels=in_channels, channels=channels, num_convs=num_convs)
        out_in = channels if num_convs > 0 else in_channels
        self.cls_logits = nn.Conv2d(out_in, num_anchors * num_classes, kernel_size=3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        # Start every anchor at p = prior_prob so the many easy negatives do not swamp the
        # first iterations with a huge loss.
        bias = -math.log((1 - prior_prob) / prior_prob)
        nn.init.constant_(self.cls_logits.bias, bias)  # type: ignore[arg-type]
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
        logits = head_outputs["cls_logits"].float()  # (N, R, K); the loss runs in fp32 under AMP
        gt = gather_matched(targets, matched_idxs)
        foreground = gt.matched >= 0  # (N, R)
        one_hot = F.one_hot(gt.labels, self.num_classes).to(logits.dtype)  # (N, R, K)
        one_hot *= foreground.unsqueeze(-1)
        valid = gt.matched != IGNORE
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
    ) -> None:
        super().__init__(in_channels, num_anchors)
        self.conv = conv_tower(in_channels=in_channels, channels=channels, num_convs=num_convs)
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
        return {
            "cls_logits": self.classification_head(x),
            "bbox_regression": self.regression_head(x),
        }

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
