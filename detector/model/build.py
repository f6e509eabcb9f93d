"""``build_model``: the one place where recipe values become RetinaNet modules.

Explicit wiring, no registry: a ResNet (or MobileNetV3) body, an FPN producing P3-P7, an
anchor generator, our focal head, and torchvision's :class:`RetinaNet` to drive them.
Parameter names are torchvision's, so its RetinaNet files (``variant`` v1 or v2) load by name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torchvision
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import GROUP_NORM_GROUPS, LossConfig, ModelConfig
from detector.model.heads import (
    BoxRegressionHead,
    FocalClassificationHead,
    FocalRetinaNetHead,
)
from detector.model.losses import AUTO_ALPHA_MEAN, frequency_alpha
from detector.model.matching import BatchMatchingRetinaNet
from detector.model.weights import (
    CLASS_LOGITS,
    load_into,
    resolve_backbone_state,
    resolve_model_state,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BACKBONE_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


class PadNormalizeTransform(GeneralizedRCNNTransform):
    """Normalises and pads a batch, but never resizes: the data pipeline already did.

    Resizing in the loader workers (on uint8, in parallel) instead of in the model keeps the
    training step lean and lets multi-scale training live with the other augmentations.
    Predictions therefore come out in the coordinates of the image the model was given.
    """

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


def build_backbone(cfg: ModelConfig) -> BackboneWithFPN:
    """Body + FPN: P3-P5 from C3-C5 (strides 8, 16, 32), P6-P7 from P5 (``v1``) or from C5
    (``v2``, as torchvision's ``retinanet_resnet50_fpn_v2``). Output channels ``fpn_channels``."""
    if cfg.backbone == "mobilenet_v3_large":
        body, return_layers, in_channels = _mobilenet_body(cfg)
    else:
        body, return_layers, in_channels = _resnet_body(cfg)
    p6_from = in_channels[-1] if cfg.variant == "v2" else cfg.fpn_channels
    return BackboneWithFPN(
        body,
        return_layers=return_layers,
        in_channels_list=in_channels,
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelP6P7(p6_from, cfg.fpn_channels),
    )


_Body = tuple[nn.Module, dict[str, str], list[int]]
"""A classification net's feature part, the children giving C3-C5, and their widths."""


def _norm_layer(cfg: ModelConfig, *, bn_eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """The backbone's norm for ``channels`` features; GroupNorm takes the largest group count
    up to 32 that divides them (MobileNet's 24- or 40-wide blocks)."""
    if cfg.norm == "gn":
        return lambda channels: nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, channels), channels)
    return partial(FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d, eps=bn_eps)


def _resnet_body(cfg: ModelConfig) -> _Body:
    body = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=_norm_layer(cfg))
    _load_backbone_weights(body, cfg)
    _freeze_stages(body, trainable=cfg.trainable_backbone_layers)
    c3_channels = body.inplanes // 4  # inplanes is C5's width after construction
    return (
        body,
        {"layer2": "0", "layer3": "1", "layer4": "2"},
        [c3_channels, c3_channels * 2, c3_channels * 4],
    )


def _mobilenet_body(cfg: ModelConfig) -> _Body:
    """MobileNetV3-Large's ``features``; C3-C5 are the last blocks at strides 8, 16, 32."""
    # MobileNetV3 is trained with BatchNorm eps 1e-3; its ImageNet statistics assume it.
    net = torchvision.models.mobilenet_v3_large(
        weights=None, norm_layer=_norm_layer(cfg, bn_eps=1e-3)
    )
    _load_backbone_weights(net, cfg)
    features = net.features
    # The strided blocks start the stages (as torchvision's _mobilenet_extractor finds them):
    # outputs at strides 2, 4, 8, 16, 32 start at these indices.
    starts = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    ends = [starts[3] - 1, starts[4] - 1, len(features) - 1]  # C3, C4, C5
    trainable = cfg.trainable_backbone_layers
    for block in features[: len(features) if trainable == 0 else starts[5 - trainable]]:
        block.requires_grad_(False)
    widths = [_out_channels(features[i]) for i in ends]
    return features, {str(i): str(level) for level, i in enumerate(ends)}, widths


def _out_channels(block: nn.Module) -> int:
    return int(getattr(block, "out_channels", 0)) or next(
        m.out_channels for m in reversed(list(block.modules())) if isinstance(m, nn.Conv2d)
    )


def _load_backbone_weights(net: nn.Module, cfg: ModelConfig) -> None:
    if cfg.backbone_weights is None:
        return
    state, source = resolve_backbone_state(cfg.backbone_weights, backbone=cfg.backbone)
    load_into(net, state, source=source, ignore_unexpected=("fc.",))


def build_anchor_generator(cfg: ModelConfig) -> AnchorGenerator:
    """``scales_per_octave`` sizes per level (s, s*2^(1/n), ...) times every aspect ratio."""
    octave = [2 ** (i / cfg.scales_per_octave) for i in range(cfg.scales_per_octave)]
    sizes = tuple(tuple(base * o for o in octave) for base in cfg.anchor_sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(cfg.aspect_ratios,) * len(sizes))


def build_head(
    cfg: ModelConfig,
    loss: LossConfig,
    *,
    num_anchors: int,
    num_classes: int,
    class_counts: Sequence[int] | None = None,
) -> nn.Module:
    """Our focal head, or torchvision's stock head when ``cfg.head == "torchvision"``."""
    group_norm = cfg.variant == "v2"
    if cfg.head == "torchvision":
        norm = partial(nn.GroupNorm, GROUP_NORM_GROUPS) if group_norm else None
        stock: nn.Module = RetinaNetHead(
            cfg.fpn_channels, num_anchors, num_classes, norm_layer=norm
        )
        return stock
    classification = FocalClassificationHead(
        in_channels=cfg.fpn_channels,
        num_anchors=num_anchors,
        num_classes=num_classes,
        num_convs=cfg.head_convs,
        channels=cfg.head_channels,
        prior_prob=cfg.prior_prob,
        loss=loss.classification,
        alpha=resolve_alpha(loss.alpha, class_counts),
        gamma=loss.gamma,
        compile_loss=loss.compile,
        group_norm=group_norm,
    )
    regression = BoxRegressionHead(
        in_channels=cfg.fpn_channels,
        num_anchors=num_anchors,
        num_convs=cfg.head_convs,
        channels=cfg.head_channels,
        loss=loss.box,
        smooth_l1_beta=loss.smooth_l1_beta,
        group_norm=group_norm,
    )
    return FocalRetinaNetHead(
        classification_head=classification,
        regression_head=regression,
        weighting=loss.weighting,
        cls_weight=loss.cls_weight,
        box_weight=loss.box_weight,
    )


def build_model(
    cfg: ModelConfig,
    loss: LossConfig,
    *,
    num_classes: int,
    class_counts: Sequence[int] | None = None,
) -> RetinaNet:
    """A RetinaNet with our focal head; ``num_classes`` excludes background.

    ``class_counts``: the training set's boxes per class, which ``loss.alpha: auto`` needs
    (without them, as at inference where no loss is computed, it stands for the scalar 0.25).

    In training mode ``model(images, targets)`` returns ``{"classification", "bbox_regression"}``
    losses whose sum is the total; in eval mode ``model(images)`` returns per image
    ``{"boxes": float[D, 4] xyxy, "scores": float[D], "labels": int64[D] in 0..K-1}``.
    """
    anchor_generator = build_anchor_generator(cfg)
    head = build_head(
        cfg,
        loss,
        num_anchors=anchor_generator.num_anchors_per_location()[0],
        num_classes=num_classes,
        class_counts=class_counts,
    )
    # Our head's loss takes the batch-wise matches; the stock head keeps torchvision's loop.
    detector = RetinaNet if cfg.head == "torchvision" else BatchMatchingRetinaNet
    model = detector(
        build_backbone(cfg),
        num_classes,
        anchor_generator=anchor_generator,
        head=head,
        score_thresh=cfg.score_thresh,
        nms_thresh=cfg.nms_thresh,
        detections_per_img=cfg.detections_per_img,
        fg_iou_thresh=cfg.fg_iou,
        bg_iou_thresh=cfg.bg_iou,
        topk_candidates=cfg.topk_candidates,
    )
    model.transform = PadNormalizeTransform(
        min_size=1, max_size=1, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    )
    if cfg.weights is not None:
        state, source = resolve_model_state(cfg.weights, backbone=cfg.backbone, variant=cfg.variant)
        load_into(
            model,
            state,
            source=source,
            skip_mismatched=cfg.skip_mismatched_weights,
            optional=("head.log_vars",),  # our learned loss weights; stock files lack them
            refit=(CLASS_LOGITS,),  # another dataset's classes: every other layer is reused
        )
    return model


def resolve_alpha(
    alpha: float | tuple[float, ...] | str | None,
    class_counts: Sequence[int] | None,
) -> float | tuple[float, ...] | None:
    """``alpha``, with ``auto`` (the one string the recipe allows) replaced by its per-class
    values (see :func:`~detector.model.losses.frequency_alpha`)."""
    if not isinstance(alpha, str):
        return alpha
    if class_counts is None:
        return AUTO_ALPHA_MEAN
    per_class = frequency_alpha(class_counts)
    log.info("loss.alpha auto: %s", ", ".join(f"{a:.3f}" for a in per_class))
    return per_class


def _freeze_stages(body: nn.Module, *, trainable: int) -> None:
    """Freeze all but the last ``trainable`` ResNet stages (5 = train everything)."""
    train = _BACKBONE_STAGES[:trainable] + (("bn1",) if trainable == 5 else ())
    for name, param in body.named_parameters():
        if not name.startswith(train):
            param.requires_grad_(False)


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter counts, for logs and the CLI."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}
