"""Torchvision weights by name: which file a name means, where the cache keeps it, and fetching.

``model.backbone_weights`` and ``model.weights`` may name torchvision weights instead of a
file: a full name (``ResNet50_Weights.IMAGENET1K_V2``, resolved with
:func:`torchvision.models.get_weight`) or an alias resolved for the recipe's backbone and
variant (the table below). Files live where torchvision's own download keeps them:
``torch.hub.get_dir()/checkpoints/<the file name of the weights' url>`` (``$TORCH_HOME/hub``).

Loading never downloads (a training job or a test must not reach the internet halfway):
a name whose file is not cached raises :class:`WeightsNotCachedError` naming the file and the
folder to put it in. :func:`pull` (``retinanet weights pull NAME...``) is the one place that
downloads, with torchvision's own hash check.

This module depends on torch and torchvision only, so that the recipe can check names.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import get_model_weights, get_weight
from torchvision.models._api import WeightsEnum

ALIASES = ("imagenet", "coco")
"""``imagenet``: the backbone's default torchvision ImageNet weights (``<Backbone>_Weights.
DEFAULT``); ``coco``: torchvision's COCO RetinaNet of the variant (ResNet-50 only)."""
RETINANET_ARCHITECTURES = {"v1": "retinanet_resnet50_fpn", "v2": "retinanet_resnet50_fpn_v2"}
"""torchvision's model names of the two variants; their COCO weights need ``resnet50``."""
MODEL_PREFIX = "model:"
"""``model:<id>``: a model of the service's (resolved by the service, never here)."""
_FULL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*_Weights\.[A-Za-z0-9_]+$")


class WeightsNameError(ValueError):
    """A name that is no torchvision weights, or weights of another architecture."""


class WeightsNotCachedError(FileNotFoundError):
    """Named weights whose file is not in torchvision's cache (and we never download)."""


def is_weights_name(ref: str) -> bool:
    """Whether ``ref`` is meant as a torchvision name (an alias or ``X_Weights.Y``), not a path.

    A local file literally called ``imagenet`` is reached as ``./imagenet``.
    """
    return ref in ALIASES or bool(_FULL_NAME.match(ref))


def backbone_weights(ref: str, *, backbone: str) -> WeightsEnum:
    """The ImageNet weights ``ref`` names for ``backbone`` (a torchvision model name)."""
    kind = get_model_weights(backbone)
    if ref == "imagenet":
        return kind.DEFAULT
    if ref == "coco":
        raise WeightsNameError(
            "coco names a whole RetinaNet: set model.weights=coco, not backbone_weights"
        )
    return _of_kind(_lookup(ref), kind, what=f"backbone {backbone}")


def model_weights(ref: str, *, backbone: str, variant: str) -> WeightsEnum:
    """The whole-RetinaNet (COCO) weights ``ref`` names for ``backbone`` and ``variant``."""
    architecture = RETINANET_ARCHITECTURES[variant]
    if backbone != "resnet50":
        raise WeightsNameError(
            f"torchvision's COCO RetinaNets have a resnet50 backbone, not {backbone}: "
            f"set model.backbone=resnet50, or start from model.backbone_weights=imagenet"
        )
    kind = get_model_weights(architecture)
    if ref == "coco":
        return kind.DEFAULT
    if ref == "imagenet":
        raise WeightsNameError(
            "imagenet names backbone weights: set model.backbone_weights=imagenet"
        )
    return _of_kind(_lookup(ref), kind, what=f"model.variant {variant} ({architecture})")


def any_weights(ref: str, *, backbone: str = "resnet50", variant: str = "v1") -> WeightsEnum:
    """Any torchvision weights by full name; an alias for ``backbone`` and ``variant``."""
    if ref == "imagenet":
        return backbone_weights(ref, backbone=backbone)
    if ref == "coco":
        return model_weights(ref, backbone=backbone, variant=variant)
    return _lookup(ref)


def file_name(weights: WeightsEnum) -> str:
    """The cache's file name: the last part of the url, as ``torch.hub`` names it."""
    return Path(urlparse(weights.url).path).name


def cache_dir() -> Path:
    """Where torchvision's downloads live: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(weights: WeightsEnum) -> Path:
    """The cached file of ``weights``; :class:`WeightsNotCachedError` when it is not there."""
    path = cache_dir() / file_name(weights)
    if not path.is_file():
        raise WeightsNotCachedError(
            f"torchvision weights {weights_label(weights)} are not in the cache and are never "
            f"downloaded during training: put {file_name(weights)} (from {weights.url}) in "
            f"{cache_dir()} (set TORCH_HOME to move the cache), or run "
            f"`retinanet weights pull {weights_label(weights)}` on a host with internet"
        )
    return path


def pull(weights: WeightsEnum) -> Path:
    """Download ``weights`` into the cache (hash checked) unless there; returns the file."""
    weights.get_state_dict(progress=True, check_hash=True)
    return cached_file(weights)


def weights_label(weights: WeightsEnum) -> str:
    """``ResNet50_Weights.IMAGENET1K_V2``: the full name torchvision resolves."""
    return f"{type(weights).__name__}.{weights.name}"


def _lookup(ref: str) -> WeightsEnum:
    try:
        return get_weight(ref)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsNameError(f"{ref!r} is not a torchvision weights name ({exc})") from None


def _of_kind(weights: WeightsEnum, kind: type[WeightsEnum], *, what: str) -> WeightsEnum:
    if not isinstance(weights, kind):
        names = ", ".join(f"{kind.__name__}.{member.name}" for member in kind)
        raise WeightsNameError(
            f"{weights_label(weights)} are not weights for {what}; it takes: {names}"
        )
    return weights
