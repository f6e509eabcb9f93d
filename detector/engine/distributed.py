"""Data-parallel training across processes (``torchrun``): who we are, and the few collectives.

A run started by ``torchrun --nproc-per-node N`` has ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its
environment; :func:`from_env` joins the process group (NCCL on CUDA, Gloo on the CPU). Without
them the run is a single process and every helper here is a no-op, so the training loop has one
code path.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, events and logs."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each rank's own GPU (``cuda:LOCAL_RANK``) when training on CUDA."""
        if requested.type == "cuda" and self.enabled:
            if self.local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"rank {self.rank} needs cuda:{self.local_rank}, but this host has "
                    f"{torch.cuda.device_count()} GPU(s)"
                )
            return torch.device("cuda", self.local_rank)
        return requested

    def wrap(self, model: nn.Module, *, sync_batchnorm: bool) -> nn.Module:
        """``model`` wrapped for DDP in a multi-process run (gradients averaged over ranks);
        ``model`` itself in a single process."""
        if not self.enabled:
            return model
        device = next(model.parameters()).device
        if sync_batchnorm and device.type == "cuda":
            # Replaces the BatchNorm children in place (the RetinaNet itself is no BatchNorm).
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: the learned loss weights exist but only train with
        # loss.weighting=uncertainty.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def mean(self, values: Mapping[str, float], device: torch.device) -> dict[str, float]:
        """The average over ranks of each value (same keys on every rank)."""
        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}

    def weighted_mean(
        self,
        values: Mapping[str, float],
        *,
        keys: Sequence[str],
        weight: int,
        device: torch.device,
    ) -> dict[str, float]:
        """Each key's mean over ranks weighted by ``weight`` (a rank's image count). Every rank
        passes the same ``keys``, even one with nothing to report (weight 0), so the collective
        always matches."""
        if not self.enabled:
            return {k: values[k] for k in keys if k in values}
        row = [values.get(k, 0.0) * weight for k in keys] + [float(weight)]
        tensor = torch.tensor(row, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        total = tensor[-1].item()
        return {
            k: float(v) / max(total, 1.0) for k, v in zip(keys, tensor[:-1].tolist(), strict=True)
        }

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on some rank (a stop request, say)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([int(flag)], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if not self.enabled:
            return items
        parts: list[list[Any] | None] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in (part or [])]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not data-parallel at all): the one that writes.
    Readable before (or without) joining the process group, from the environment alone."""
    return os.environ.get("RANK", "0") == "0"


def rank_environment(*, rank: int, world_size: int, port: int) -> dict[str, str]:
    """The environment torchrun gives rank ``rank`` of ``world_size`` processes on this host,
    for a launcher that starts the ranks itself; :func:`from_env` reads it back."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (once per process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    found = Dist(rank=rank, world_size=world_size, local_rank=local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(found.device(device))  # which checks the GPU exists
        elif "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=30),  # evaluation on rank 0 can take a while
        )
    return found


def local_devices() -> int:
    """How many processes this host can train one job on: its visible GPUs, or, with none,
    the CPU cores this process may use (each Gloo process then takes a share of them)."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return usable_cpus()


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
