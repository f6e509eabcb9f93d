"""Which torch device a recipe's or a caller's ``device`` name means.

Its own module because training and inference both need it, and inference must not import
the training loop.
"""

from __future__ import annotations

import warnings
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


class SlowPrecisionWarning(UserWarning):
    """The recipe asks for a precision this device only emulates."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 at speed: a CUDA GPU with bf16 units (Ampere and
    later), or a CPU on which oneDNN has bf16 kernels (AVX-512, at best AVX-512 BF16 or AMX).
    Elsewhere bf16 is emulated, and autocast to it is many times slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    # torch's own check for oneDNN's bf16 kernels (private, but there is no public one).
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_warning(amp: Literal["off", "fp16", "bf16"], device: torch.device) -> str | None:
    """Why ``solver.amp`` will be slow on ``device`` (bf16 where it is only emulated), if so."""
    if amp != "bf16" or native_bf16(device):
        return None
    return (
        f"solver.amp=bf16: this {device.type} has no native bf16 (oneDNN needs AVX-512, "
        "best with AVX-512 BF16 or AMX; CUDA needs Ampere or later), so bf16 is "
        "emulated and training is many times slower than with solver.amp=off"
    )


def autocast_dtype(amp: Literal["off", "fp16", "bf16"], device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``solver.amp`` on ``device``: bf16 on CUDA and on the CPU
    (oneDNN; a :class:`SlowPrecisionWarning` where it is only emulated), fp16 on CUDA only;
    None for full precision."""
    if amp == "bf16":
        # Kept where emulated, not replaced by fp32: the numbers then match the recipe on
        # every host.
        if (slow := precision_warning(amp, device)) is not None:
            warnings.warn(slow, SlowPrecisionWarning, stacklevel=2)
        return torch.bfloat16
    if amp == "fp16" and device.type == "cuda":
        return torch.float16
    return None
