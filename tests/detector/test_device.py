"""Which precisions the device computes natively, judged against torch's own CPU probes."""

from __future__ import annotations

import warnings

import torch

from detector.device import SlowPrecisionWarning, autocast_dtype, native_bf16

CPU = torch.device("cpu")


def test_native_bf16_follows_the_cpus_vector_units() -> None:
    # oneDNN's bf16 kernels need AVX-512: on AVX2 and below it only emulates bf16; with
    # AVX-512 BF16 or AMX it has them. Each host checks the half that applies to it.
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX", "AVX2"):
        assert not native_bf16(CPU)
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert native_bf16(CPU)


def test_bf16_warns_exactly_where_it_is_emulated() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert autocast_dtype("bf16", CPU) == torch.bfloat16
        assert autocast_dtype("off", CPU) is None
        assert autocast_dtype("fp16", CPU) is None  # fp16 autocast is CUDA-only
    slow = [w for w in caught if issubclass(w.category, SlowPrecisionWarning)]
    assert len(slow) == (0 if native_bf16(CPU) else 1)
    assert all("solver.amp=off" in str(w.message) for w in slow)
