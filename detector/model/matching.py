"""Anchor matching for a whole batch at once, and the RetinaNet that trains with it.

torchvision's :class:`RetinaNet` matches anchors one image at a time (``box_iou`` and its
``Matcher`` per image), and its ``Matcher`` assigns by boolean-mask indexing, which on a GPU
waits for the device three times per image before it can queue the next kernel. Here the
ground truth is padded once to ``(N, M)`` and every step is a batched tensor op, so the loss
of a batch queues without a single wait. The matches are the same as torchvision's (the
rules below are its ``Matcher(allow_low_quality_matches=True)``, ties included), which
``tests/detector/test_matching.py`` checks against it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.models.detection import RetinaNet

BACKGROUND = -1
IGNORE = -2

IOU_ELEMENTS_PER_CHUNK = 2**25
"""How many (box, anchor) IoU values are built at once: 32 M floats (128 MiB) per
intermediate. A batch of BCCD (8 x 30 boxes x 27 k anchors) fits in one go; a crowded COCO
batch is matched a few images at a time instead of in one matrix many GiB large."""


class PaddedTargets(NamedTuple):
    """A batch's ground truth padded to the most boxes (and crowd regions) of any image."""

    boxes: Tensor
    """float[N, M, 4] xyxy; padding rows are zeros. M >= 1."""
    labels: Tensor
    """int64[N, M] in 0..K-1; -1 on padding rows."""
    crowd: Tensor
    """float[N, C, 4] xyxy crowd regions (C may be 0); padding rows are zeros."""
    crowd_valid: Tensor
    """bool[N, C]: which crowd rows are real."""

    @property
    def valid(self) -> Tensor:
        """bool[N, M]: which box rows are real."""
        return self.labels >= 0


def pad_targets(targets: list[dict[str, Tensor]]) -> PaddedTargets:
    """Pad N images' ``boxes`` float[M_i, 4], ``labels`` int64[M_i] and optional
    ``crowd_boxes`` float[C_i, 4] to common sizes (every size is known on the host, so
    nothing here waits for the device)."""
    boxes = pad_sequence([t["boxes"] for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"] for t in targets], batch_first=True, padding_value=-1)
    if boxes.shape[1] == 0:  # no image has a box: one padding row keeps gathers well-defined
        boxes = boxes.new_zeros(len(targets), 1, 4)
        labels = labels.new_full((len(targets), 1), -1)
    crowds = [t.get("crowd_boxes", boxes.new_zeros(0, 4)) for t in targets]
    crowd = pad_sequence(crowds, batch_first=True)
    crowd_valid = pad_sequence(
        [torch.ones(len(c), dtype=torch.bool, device=boxes.device) for c in crowds],
        batch_first=True,
    )
    return PaddedTargets(boxes=boxes, labels=labels, crowd=crowd, crowd_valid=crowd_valid)


def batched_box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """float[N, M, 4] and float[N, R, 4] xyxy -> float[N, M, R] IoU.

    One coordinate at a time and in place: each step is one pass over an (N, M, R) tensor,
    where the (N, M, R, 2) corners of ``torchvision.ops.box_iou`` take twice the memory
    traffic (what bounds this on a CPU).
    """
    b = boxes.unbind(-1)  # 4 x (N, M)
    a = anchors.unbind(-1)  # 4 x (N, R)

    def overlap(lo: int, hi: int) -> Tensor:  # (N, M, R) overlap along one axis
        side = torch.minimum(b[hi][:, :, None], a[hi][:, None, :])
        return side.sub_(torch.maximum(b[lo][:, :, None], a[lo][:, None, :])).clamp_(min=0)

    inter = overlap(0, 2).mul_(overlap(1, 3))
    area_b = (b[2] - b[0]) * (b[3] - b[1])  # (N, M)
    area_a = (a[2] - a[0]) * (a[3] - a[1])  # (N, R)
    union = (area_b[:, :, None] + area_a[:, None, :]).sub_(inter)
    return inter.div_(union)


def match_anchors(
    gt: PaddedTargets,
    anchors: Tensor,
    *,
    fg_iou: float,
    bg_iou: float,
    max_elements: int = IOU_ELEMENTS_PER_CHUNK,
) -> Tensor:
    """Each anchor's ground-truth index, or BACKGROUND / IGNORE, as torchvision's ``Matcher``.

    An anchor takes the box it overlaps most: matched at IoU >= ``fg_iou``, ignored in
    [``bg_iou``, ``fg_iou``), background below. Then every box also claims the anchors it
    overlaps most (ties included), which take the box *they* overlap most, so that no box is
    left without a positive anchor (the "low-quality matches" of Faster R-CNN).

    Args:
        gt: the padded batch.
        anchors: float[N, R, 4] xyxy.
        max_elements: the most IoU values built at once; whole images are matched together
            up to it (at least one image at a time).

    Returns:
        int64[N, R].
    """
    n, m = gt.labels.shape
    per_chunk = max(1, max_elements // max(1, m * anchors.shape[1]))
    valid = gt.valid
    chunks = [
        _match_chunk(
            gt.boxes[i : i + per_chunk],
            valid[i : i + per_chunk],
            anchors[i : i + per_chunk],
            fg_iou=fg_iou,
            bg_iou=bg_iou,
        )
        for i in range(0, n, per_chunk)
    ]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _match_chunk(
    boxes: Tensor, valid: Tensor, anchors: Tensor, *, fg_iou: float, bg_iou: float
) -> Tensor:
    """:func:`match_anchors` on float[n, M, 4] boxes, bool[n, M], float[n, R, 4] anchors."""
    # Padding rows score -1, below any real IoU: never an anchor's best box, never a claimant.
    iou = batched_box_iou(boxes, anchors).masked_fill_(~valid[:, :, None], -1.0)  # (n, M, R)
    best_iou, best_box = iou.max(dim=1)  # (n, R)
    matched = torch.where(
        best_iou >= fg_iou,
        best_box,
        torch.where(best_iou >= bg_iou, IGNORE, BACKGROUND),
    )
    claimed = (iou == iou.amax(dim=2, keepdim=True)).logical_and_(valid[:, :, None])
    return torch.where(claimed.any(dim=1), best_box, matched)  # claimed: (n, M, R)


def ignore_crowd(gt: PaddedTargets, anchors: Tensor, matched: Tensor, *, min_ioa: float) -> Tensor:
    """Turn background anchors mostly inside a crowd region into ignored ones.

    A crowd box marks many objects that are not labelled one by one: an anchor there is
    neither a positive nor a trustworthy negative.

    Args:
        gt: the padded batch, whose ``crowd`` regions are used.
        anchors: float[N, R, 4] xyxy.
        matched: int64[N, R] from :func:`match_anchors`.
        min_ioa: intersection over anchor area from which an anchor is ignored.

    Returns:
        int64[N, R].
    """
    if gt.crowd.shape[1] == 0:
        return matched
    lt = torch.max(anchors[:, :, None, :2], gt.crowd[:, None, :, :2])  # (N, R, C, 2)
    rb = torch.min(anchors[:, :, None, 2:], gt.crowd[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # (N, R, C)
    area = ((anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])).clamp(
        min=1e-6
    )
    ioa = torch.where(gt.crowd_valid[:, None, :], inter / area[..., None], -1.0).amax(dim=2)
    return torch.where((matched == BACKGROUND) & (ioa >= min_ioa), IGNORE, matched)


class BatchMatchingRetinaNet(RetinaNet):
    """torchvision's RetinaNet, whose training loss matches the whole batch's anchors at once
    and hands the head batched tensors: ``head.compute_loss(gt, head_outputs, anchors,
    matched)`` with :class:`PaddedTargets`, float[N, R, 4] anchors and int64[N, R] matches.

    Only the loss differs; inference, weights and parameter names are torchvision's.
    """

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
    ) -> dict[str, Tensor]:
        gt = pad_targets(targets)
        stacked = torch.stack(anchors)  # (N, R, 4)
        matched = match_anchors(
            gt,
            stacked,
            fg_iou=self.proposal_matcher.high_threshold,
            bg_iou=self.proposal_matcher.low_threshold,
        )
        losses: dict[str, Tensor] = self.head.compute_loss(gt, head_outputs, stacked, matched)
        return losses
