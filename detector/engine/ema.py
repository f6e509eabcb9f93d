"""An exponential moving average of the weights, the model a run evaluates and ships.

``solver.ema_decay`` turns it on. Short from-scratch runs need the decay to ramp up: with a fixed
0.999 over ~1,200 iterations the random initial weights would still carry 0.999^1200 = 30% of
the average. So the decay at update ``t`` is ``decay * (1 - exp(-t / ramp))`` (the ramp that
YOLOv5 and timm's EMA use), which follows the raw weights closely early on and averages over
about ``1 / (1 - decay)`` iterations late. Buffers (BatchNorm statistics) are averaged as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from detector.config import SolverConfig


def ramped_decay(*, decay: float, ramp_iters: int, updates: int) -> float:
    """The decay used for update number ``updates`` (1-based)."""
    return decay * (1.0 - math.exp(-updates / ramp_iters))


class WeightEma:
    """The averaged copy of ``model``; :meth:`update` after every optimiser step."""

    def __init__(self, model: nn.Module, *, decay: float, ramp_iters: int) -> None:
        self.decay = decay
        self.ramp_iters = ramp_iters
        self.updates = 0
        # torch's AveragedModel holds the deep copy and averages parameters and buffers
        # alike; the ramped decay is the average function given to it.
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.requires_grad_(False)
        # The deep copy already holds the starting weights: every update averages.
        self.averaged.n_averaged.fill_(1)

    @property
    def module(self) -> nn.Module:
        """The averaged model itself (same class and state-dict keys as the trained one)."""
        module: nn.Module = self.averaged.module
        return module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.averaged.update_parameters(model)

    def _average(
        self,
        averaged: Sequence[Tensor],
        current: Sequence[Tensor],
        num_averaged: Tensor | int,
    ) -> None:
        # Called once per (device, dtype) group of tensors; the step count is ours.
        del num_averaged
        weight = 1.0 - ramped_decay(
            decay=self.decay, ramp_iters=self.ramp_iters, updates=self.updates
        )
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # integer buffers (BatchNorm's step count) follow
                a.copy_(c)

    def checkpoint(self, *, trained: nn.Module) -> dict[str, Any]:
        """What a checkpoint keeps beside the average (which it keeps as ``model``)."""
        return {"trained": trained.state_dict(), "updates": self.updates}

    def restore(self, weights: dict[str, Tensor], *, updates: int) -> None:
        """Continue an average saved as ``weights`` after ``updates`` steps."""
        self.module.load_state_dict(weights)
        self.updates = updates


def build_ema(model: nn.Module, solver: SolverConfig) -> WeightEma | None:
    """The average ``solver.ema_decay`` asks for, or None."""
    if solver.ema_decay is None:
        return None
    return WeightEma(model, decay=solver.ema_decay, ramp_iters=solver.ema_ramp_iters)
