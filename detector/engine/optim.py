"""Optimiser with parameter groups, and the per-iteration learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from detector.config import SolverConfig

_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over trainable parameters; norm weights and biases may get their own decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm_or_bias = isinstance(module, _NORM_TYPES) or name == "bias"
            (no_decay if is_norm_or_bias else decay).append(param)
    norm_decay = (
        cfg.weight_decay if cfg.weight_decay_norm_bias is None else cfg.weight_decay_norm_bias
    )
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": norm_decay},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def total_iterations(cfg: SolverConfig, *, iters_per_epoch: int) -> int:
    """The run's length in iterations, whichever unit the budget is in."""
    if cfg.max_iters is not None:
        return cfg.max_iters
    assert cfg.epochs is not None
    return cfg.epochs * iters_per_epoch


def lr_factor(cfg: SolverConfig, iteration: int, *, iters_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at ``iteration`` (0-based): linear warmup, then the schedule."""
    total = total_iterations(cfg, iters_per_epoch=iters_per_epoch)
    if cfg.scheduler == "cosine":
        progress = min(1.0, iteration / max(1, total))
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        unit = 1 if cfg.max_iters is not None else iters_per_epoch
        drops = sum(iteration >= step * unit for step in cfg.steps)
        factor = cfg.lr_decay**drops
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SolverConfig, *, iters_per_epoch: int
) -> LambdaLR:
    """Stepped once per iteration."""
    return LambdaLR(optimizer, lambda it: lr_factor(cfg, it, iters_per_epoch=iters_per_epoch))
