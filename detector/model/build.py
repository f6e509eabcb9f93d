"""``build_model``: the one place where recipe values become RetinaNet modules.

Explicit wiring, no registry: a ResNet body, an FPN producing P3-P7, an anchor generator,
our focal head, and torchvision's :class:`RetinaNet` to drive them.
"""

from __future__ import annotations

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

from detector.config import LossConfig, ModelConfig
from detector.model.heads import BoxRegressionHead, FocalClassificationHead, FocalRetinaNetHead
from detector.model.weights import load_into, read_state_dict

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
    """ResNet body + FPN: P3-P5 from C3-C5, P6-P7 from P5. Output channels ``cfg.fpn_channels``."""
    norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
    body = getattr(torchvision.models, cfg.backbone)(weights=None, norm_layer=norm_layer)
    if cfg.backbone_weights is not None:
        load_into(
            body,
            read_state_dict(cfg.backbone_weights),
            source=str(cfg.backbone_weights),
            ignore_unexpected=("fc.",),
        )
    _freeze_stages(body, trainable=cfg.trainable_backbone_layers)
    c3_channels = body.inplanes // 4  # inplanes is C5's width after construction
    return BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[c3_channels, c3_channels * 2, c3_channels * 4],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels),
    )


def build_anchor_generator(cfg: ModelConfig) -> AnchorGenerator:
    """``scales_per_octave`` sizes per level (s, s*2^(1/n), ...) times every aspect ratio."""
    octave = [2 ** (i / cfg.scales_per_octave) for i in range(cfg.scales_per_octave)]
    sizes = tuple(tuple(base * o for o in octave) for base in cfg.anchor_sizes)
    return AnchorGenerator(sizes=sizes, aspect_ratios=(cfg.aspect_ratios,) * len(sizes))


def build_head(
    cfg: ModelConfig, loss: LossConfig, *, num_anchors: int, num_classes: int
) -> nn.Module:
    """Our focal head, or torchvision's stock head when ``cfg.head == "torchvision"``."""
    if cfg.head == "torchvision":
        stock: nn.Module = RetinaNetHead(cfg.fpn_channels, num_anchors, num_classes)
        return stock
    classification = FocalClassificationHead(
        in_channels=cfg.fpn_channels,
        num_anchors=num_anchors,
        num_classes=num_classes,
        num_convs=cfg.head_convs,
        channels=cfg.head_channels,
        prior_prob=cfg.prior_prob,
        loss=loss.classification,
        alpha=loss.alpha,
        gamma=loss.gamma,
        compile_loss=loss.compile,
    )
    regression = BoxRegressionHead(
        in_channels=cfg.fpn_channels,
        num_anchors=num_anchors,
        num_convs=cfg.head_convs,
        channels=cfg.head_channels,
        loss=loss.box,
        smooth_l1_beta=loss.smooth_l1_beta,
    )
    return FocalRetinaNetHead(
        classification_head=classification,
        regression_head=regression,
        weighting=loss.weighting,
        cls_weight=loss.cls_weight,
        box_weight=loss.box_weight,
    )


def build_model(cfg: ModelConfig, loss: LossConfig, *, num_classes: int) -> RetinaNet:
    """A RetinaNet with our focal head; ``num_classes`` excludes background.

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
    )
    model = RetinaNet(
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
        load_into(
            model,
            read_state_dict(cfg.weights),
            source=str(cfg.weights),
            skip_mismatched=cfg.skip_mismatched_weights,
            optional=("head.log_vars",),  # our learned loss weights; stock files lack them
        )
    return model


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
