"""Reading weights (local files, or torchvision's by name from its cache) and loading them
with a clear report of what did not fit.

Nothing is ever downloaded here (:mod:`detector.model.weight_names` says where a named file
must be). Pickled files are read with ``torch.load(weights_only=True)``, which refuses
arbitrary code. Files written before torchvision 0.13 (its COCO RetinaNet among them) name
the FPN and head convolutions the old way; :func:`upgrade_legacy_names` renames them as
torchvision's own ``_load_from_state_dict`` hooks do, so every key is checked by name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models._api import WeightsEnum

from detector.model.weight_names import (
    WeightsNotCachedError,
    backbone_weights,
    cached_file,
    is_weights_name,
    model_weights,
    weights_label,
)

log = logging.getLogger(__name__)

# Keys that carry no learned state and that some layer kinds have and others lack
# (BatchNorm2d has num_batches_tracked, FrozenBatchNorm2d does not).
_STATELESS_SUFFIXES = ("num_batches_tracked",)


CLASS_LOGITS = "head.classification_head.cls_logits."
"""The one layer whose shape follows the dataset's class count."""
_LEGACY_FPN = re.compile(r"^(.*\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")
"""FPN blocks became Conv2dNormActivation in torchvision 0.13: ``inner_blocks.0.weight`` is
``inner_blocks.0.0.weight`` now."""
_LEGACY_HEAD = re.compile(r"^(.*_head\.conv)\.(\d+)\.(weight|bias)$")
"""So did the head towers, whose ReLUs no longer take an index: ``conv.{2i}`` is ``conv.{i}.0``."""


class WeightsError(ValueError):
    """Weights that cannot be read, or that do not fit the model."""


class MissingWeightsError(WeightsError):
    """Named torchvision weights that are not in the local cache."""


@dataclass(frozen=True)
class LoadReport:
    source: str
    loaded: tuple[str, ...]
    skipped_mismatched: tuple[str, ...]
    ignored_unexpected: tuple[str, ...]
    refit: tuple[str, ...] = ()
    """Class-logit tensors of another class count, left at their init."""

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.refit:
            text += (
                "; the class logits are another dataset's (other classes) and start from their"
                f" init: {', '.join(self.refit)}"
            )
        if self.skipped_mismatched:
            text += f"; skipped (shape differs): {', '.join(self.skipped_mismatched)}"
        return text


def resolve_backbone_state(
    ref: str | os.PathLike[str], *, backbone: str
) -> tuple[dict[str, Tensor], str]:
    """The state dict ``model.backbone_weights`` names, and where it came from."""
    ref = os.fspath(ref)
    if is_weights_name(ref):
        weights = backbone_weights(ref, backbone=backbone)
        return read_state_dict(_cached(weights)), weights_label(weights)
    return read_state_dict(Path(ref)), ref


def resolve_model_state(
    ref: str | os.PathLike[str], *, backbone: str, variant: str
) -> tuple[dict[str, Tensor], str]:
    """The state dict ``model.weights`` names, and where it came from."""
    ref = os.fspath(ref)
    if is_weights_name(ref):
        weights = model_weights(ref, backbone=backbone, variant=variant)
        return read_state_dict(_cached(weights)), weights_label(weights)
    return read_state_dict(Path(ref)), ref


def _cached(weights: WeightsEnum) -> Path:
    try:
        return cached_file(weights)
    except WeightsNotCachedError as exc:
        raise MissingWeightsError(str(exc)) from None


def upgrade_legacy_names(state: dict[str, Tensor], own: Iterable[str]) -> dict[str, Tensor]:
    """``state`` with pre-0.13 torchvision names renamed to the model's, where that fits."""
    names = set(own)
    return {_modern_name(key, names): value for key, value in state.items()}


def _modern_name(key: str, own: set[str]) -> str:
    if key in own:
        return key
    if match := _LEGACY_FPN.match(key):
        new = f"{match[1]}.0.{match[2]}"
    elif (match := _LEGACY_HEAD.match(key)) and int(match[2]) % 2 == 0:
        new = f"{match[1]}.{int(match[2]) // 2}.0.{match[3]}"
    else:
        return key
    return new if new in own else key


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat ``name -> tensor`` mapping from a ``.safetensors`` or a torch file.

    Torch files may hold the mapping itself or wrap it as ``{"model": ...}`` (our checkpoints)
    or ``{"state_dict": ...}``.
    """
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, a pickle with code in it, a wrong format
        raise WeightsError(f"cannot read weights from {path}: {exc}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return obj


def load_into(
    module: nn.Module,
    state: dict[str, Tensor],
    *,
    source: str,
    skip_mismatched: bool = False,
    ignore_unexpected: Iterable[str] = (),
    optional: Iterable[str] = (),
    refit: Iterable[str] = (),
) -> LoadReport:
    """Copy ``state`` into ``module``; refuse with every mismatch named unless told to skip.

    Args:
        source: where the weights came from, for error messages.
        skip_mismatched: leave parameters whose shape differs at their initial values
            (fine-tuning on a dataset with other classes) instead of failing.
        ignore_unexpected: key prefixes present in the file that the module is known not to
            have (e.g. ``fc.`` of a classification ResNet); other unexpected keys are an error.
        optional: key prefixes of the module that a file may lack (they keep their init).
        refit: key prefixes whose shape may differ (the class logits of a file trained on
            other classes): left at their init and reported, never an error.
    """
    own = module.state_dict()
    state = upgrade_legacy_names(state, own)
    ignore, refit = tuple(ignore_unexpected), tuple(refit)
    refitted = tuple(
        k
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and k.startswith(refit) and refit
    )
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and k not in refitted
    ]
    missing = [
        k
        for k in own
        if k not in state
        and not k.endswith(_STATELESS_SUFFIXES)
        and not k.startswith(tuple(optional))
    ]
    unexpected = [
        k
        for k in state
        if k not in own and not k.startswith(ignore) and not k.endswith(_STATELESS_SUFFIXES)
    ]
    problems = []
    if mismatched and not skip_mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if missing:
        problems.append(f"missing in file ({len(missing)}): " + ", ".join(missing[:10]))
    if unexpected:
        problems.append(f"not in model ({len(unexpected)}): " + ", ".join(unexpected[:10]))
    if problems:
        hint = " (set model.skip_mismatched_weights=true to fine-tune)" if mismatched else ""
        raise WeightsError(
            f"weights from {source} do not fit the model{hint}:\n  " + "\n  ".join(problems)
        )
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(fitting, strict=False)
    report = LoadReport(
        source=source,
        loaded=tuple(fitting),
        skipped_mismatched=tuple(m.split(":")[0] for m in mismatched),
        ignored_unexpected=tuple(k for k in state if k not in own),
        refit=refitted,
    )
    log.log(logging.WARNING if refitted or mismatched else logging.INFO, report.summary())
    return report
