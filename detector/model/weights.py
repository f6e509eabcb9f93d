"""Reading weights from local files and loading them with a clear report of what did not fit.

Nothing is ever downloaded: a real GPU host points the recipe at a file it already has
(a torchvision ResNet or RetinaNet state dict, one of our checkpoints, or safetensors).
Pickled files are read with ``torch.load(weights_only=True)``, which refuses arbitrary code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# Keys that carry no learned state and that some layer kinds have and others lack
# (BatchNorm2d has num_batches_tracked, FrozenBatchNorm2d does not).
_STATELESS_SUFFIXES = ("num_batches_tracked",)


class WeightsError(ValueError):
    """Weights that cannot be read, or that do not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    loaded: tuple[str, ...]
    skipped_mismatched: tuple[str, ...]
    ignored_unexpected: tuple[str, ...]


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
) -> LoadReport:
    """Copy ``state`` into ``module``; refuse with every mismatch named unless told to skip.

    Args:
        source: where the weights came from, for error messages.
        skip_mismatched: leave parameters whose shape differs at their initial values
            (fine-tuning on a dataset with other classes) instead of failing.
        ignore_unexpected: key prefixes present in the file that the module is known not to
            have (e.g. ``fc.`` of a classification ResNet); other unexpected keys are an error.
        optional: key prefixes of the module that a file may lack (they keep their init).
    """
    own = module.state_dict()
    ignore = tuple(ignore_unexpected)
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
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
    return LoadReport(
        loaded=tuple(fitting),
        skipped_mismatched=tuple(m.split(":")[0] for m in mismatched),
        ignored_unexpected=tuple(k for k in state if k not in own),
    )
