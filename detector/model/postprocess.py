"""Dense RetinaNet outputs, and their selection into detections with per-call settings.

torchvision's ``RetinaNet.forward`` fixes the score threshold, NMS IoU and detection count when
the model is built. Splitting inference in two, a dense network (normalise, backbone, head,
anchors, box decoding: every anchor's box and class scores) and :func:`select_detections`
(threshold, per-level top-k, clip, class-wise NMS), lets each request choose its own settings,
and is the graph we export to ONNX: the same selection then runs after PyTorch or onnxruntime,
so the two can be compared exactly. The selection follows ``RetinaNet.postprocess_detections``
step for step; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms, clip_boxes_to_image


@dataclass(frozen=True)
class SelectOptions:
    """How dense outputs become detections (defaults: the model's recipe values)."""

    score_threshold: float = 0.05
    topk_candidates: int = 1000
    nms_iou: float = 0.5
    max_detections: int = 100
    class_thresholds: tuple[float, ...] | None = None
    """Per class (contiguous labels), the score to reach instead of ``score_threshold``
    (``>=``: a best-F1 threshold is itself a detection's score); above 1 drops the class.
    Applied before top-k and the detection cap, so a class filter or a high threshold
    elsewhere never crowds out the detections asked for."""


class Detections:
    """One image's detections: ``boxes`` float[D, 4] xyxy, ``scores`` float[D], ``labels``
    int64[D] (contiguous 0..K-1), sorted by score."""

    __slots__ = ("boxes", "labels", "scores")

    def __init__(self, *, boxes: Tensor, scores: Tensor, labels: Tensor) -> None:
        self.boxes, self.scores, self.labels = boxes, scores, labels


class DenseRetinaNet(nn.Module):
    """A trained RetinaNet up to, and including, box decoding; no data-dependent steps.

    Input: float[N, 3, H, W] RGB in [0, 1], H and W multiples of the size divisor, padded with
    :attr:`pad_value` (the mean colour, which normalises to 0 as torchvision's padding does).
    Output: ``boxes`` float[N, A, 4] xyxy in input pixels (not clipped), ``scores`` float[N, A, K]
    (sigmoid probabilities), anchors in level order; :attr:`anchors_per_level` splits A.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.anchor_generator = model.anchor_generator
        self.box_coder = model.box_coder
        mean = torch.tensor(model.transform.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.transform.image_std).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.size_divisible = int(model.transform.size_divisible)

    @property
    def pad_value(self) -> tuple[float, float, float]:
        r, g, b = self.mean.flatten().tolist()
        return (r, g, b)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        deltas, scores = self.network(images)
        return self.decode(deltas, images.shape[-2], images.shape[-1]), scores

    def network(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise, backbone, FPN, head: box ``deltas`` float[N, A, 4] (relative to the
        anchors) and ``scores`` float[N, A, K]. The part another runtime may run instead."""
        x = (images - self.mean) / self.std
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"].sigmoid()

    def decode(self, deltas: Tensor, height: int, width: int) -> Tensor:
        """The anchors of a ``height`` x ``width`` input moved by ``deltas`` float[N, A, 4]:
        boxes float[N, A, 4] xyxy in input pixels."""
        n = deltas.shape[0]
        # The anchor generator reads only the shapes of the feature maps: empty stand-ins of
        # each level's size (as anchors_per_level counts them) give the same anchors.
        strides = [2 ** (3 + i) for i in range(len(self.anchor_generator.sizes))]
        grids = [deltas.new_empty((1, 0, -(-height // s), -(-width // s))) for s in strides]
        frame = ImageList(deltas.new_empty((1, 0, height, width)), [(height, width)])
        # Every image of the batch shares the padded size, hence the anchors: one set, computed
        # once (a per-image list would also fix the batch size of an exported graph).
        anchors = self.anchor_generator(frame, grids)[0]  # (A, 4)
        boxes: Tensor = self.box_coder.decode_single(deltas.reshape(-1, 4), anchors.repeat(n, 1))
        return boxes.reshape(n, -1, 4)

    def anchors_per_level(self, height: int, width: int) -> list[int]:
        """Anchors of each FPN level for a padded input of ``height`` x ``width``."""
        per_location = self.anchor_generator.num_anchors_per_location()[0]
        strides = [2 ** (3 + i) for i in range(len(self.anchor_generator.sizes))]
        return [-(-height // s) * -(-width // s) * per_location for s in strides]


def pad_batch(
    images: Sequence[Tensor], *, size_divisible: int, pad_value: Sequence[float]
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack float[3, h_i, w_i] images into float[N, 3, H, W] with H, W multiples of
    ``size_divisible`` (at least every h_i, w_i); returns the batch and each (h_i, w_i)."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = -(-max(h for h, _ in sizes) // size_divisible) * size_divisible
    width = -(-max(w for _, w in sizes) // size_divisible) * size_divisible
    fill = torch.tensor(list(pad_value), dtype=images[0].dtype).view(3, 1, 1)
    batch = fill.expand(len(images), 3, height, width).clone()
    for out, im in zip(batch, images, strict=True):
        out[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    *,
    anchors_per_level: Sequence[int],
    image_size: tuple[int, int],
    options: SelectOptions,
) -> Detections:
    """One image's detections from its dense outputs.

    Args:
        boxes: float[A, 4] decoded xyxy boxes in input pixels.
        scores: float[A, K] class probabilities.
        anchors_per_level: how the A anchors split over the FPN levels.
        image_size: (h, w) of the image inside the padded input; boxes are clipped to it.
    """
    num_classes = scores.shape[-1]
    per_class = (
        None if options.class_thresholds is None else scores.new_tensor(options.class_thresholds)
    )
    kept_boxes, kept_scores, kept_labels = [], [], []
    levels = list(anchors_per_level)
    for level_boxes, level_scores in zip(
        torch.split(boxes, levels), torch.split(scores, levels), strict=True
    ):
        flat = level_scores.flatten()
        above = flat > options.score_threshold if per_class is None else level_scores >= per_class
        candidates = torch.where(above.flatten())[0]
        top, order = flat[candidates].topk(min(options.topk_candidates, len(candidates)))
        candidates = candidates[order]
        kept_boxes.append(clip_boxes_to_image(level_boxes[candidates // num_classes], image_size))
        kept_scores.append(top)
        kept_labels.append(candidates % num_classes)
    all_boxes, all_scores = torch.cat(kept_boxes), torch.cat(kept_scores)
    all_labels = torch.cat(kept_labels)
    keep = batched_nms(all_boxes, all_scores, all_labels, options.nms_iou)
    keep = keep[: options.max_detections]
    return Detections(boxes=all_boxes[keep], scores=all_scores[keep], labels=all_labels[keep])
