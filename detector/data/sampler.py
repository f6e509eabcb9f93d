"""Deterministic, resumable batching: the same batches and augmentations after a restart.

Exact resume needs two things a stock DataLoader does not give: the order of an epoch must
be a function of (seed, epoch) only, so a resumed run can skip the batches already seen; and
the random augmentation of a sample must not depend on which worker process drew it, so each
sample is augmented under its own seed derived from (seed, epoch, index). The sampler hands
the epoch to the dataset with every index, so the loader's worker processes can live for the
whole run (their copy of the dataset never needs updating). ``train_loader`` reads such
batches in worker processes that leave stopping to the training process.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detector.data.coco import collate_detection

T = TypeVar("T")

SampleKey = tuple[int, int]
"""``(epoch, index)``: which sample, and the epoch whose augmentation it gets."""


class EpochBatchSampler(Sampler[list[SampleKey]]):
    """Shuffled batches of sample keys, reproducible per epoch, starting at any batch.

    Call :meth:`set_epoch` before iterating. With ``world_size`` > 1 (data-parallel training),
    ``batch_size`` is the batch of all processes together: every process draws the same
    batches and keeps its share (``rank``, ``rank + world_size``, ...), so an iteration means
    the same thing, and resumes at the same place, whatever the number of processes.
    """

    def __init__(
        self,
        *,
        num_samples: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("cannot batch an empty dataset")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        """Batches in a whole epoch (the last one may be smaller)."""
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for b in range(self.start_batch, len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                # A short last batch is wrapped around so that no process gets nothing.
                batch = (batch * self.world_size)[: max(len(batch), self.world_size)]
                batch = batch[self.rank :: self.world_size]
            yield [(self.epoch, index) for index in batch]


class SeededSamples(Dataset[T], Generic[T]):
    """Wraps a dataset so sample ``i`` of epoch ``e`` is always augmented the same way:
    indexed by :data:`SampleKey` ``(e, i)``."""

    def __init__(self, dataset: Dataset[T], *, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> T:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


def train_loader(
    dataset: Dataset[T], sampler: EpochBatchSampler, *, num_workers: int, pin_memory: bool
) -> DataLoader[T]:
    """Batches of ``dataset`` in ``sampler``'s order, collated as lists of images and targets.

    Iterate it once per epoch (after ``sampler.set_epoch``): its worker processes start with
    the first epoch and serve every later one, instead of starting again (and reading their
    first batch) at every epoch.
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_detection,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_stop_signals,
        persistent_workers=num_workers > 0,
    )


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers get the stop signals too (the terminal's Ctrl-C, torchrun's process-group
    SIGTERM). The run must stop through the main process, which checkpoints and then shuts
    them down, so they must not die mid-batch under it."""
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
