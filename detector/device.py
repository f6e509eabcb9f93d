"""Which torch device a recipe's or a caller's ``device`` name means.

Its own module because training and inference both need it, and inference must not import
the training loop.
"""

from __future__ import annotations

from typing import Literal

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; asking for
    CUDA on a host without it is an error rather than a silent fall back to the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the recipe asks for device=cuda but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(amp: Literal["off", "fp16", "bf16"], device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``solver.amp`` on ``device``: bf16 on CUDA and on the CPU
    (oneDNN), fp16 on CUDA only; None for full precision."""
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16" and device.type == "cuda":
        return torch.float16
    return None
