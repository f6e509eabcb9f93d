"""The training loader over several epochs: worker processes started for every epoch (the
trainer until 2026-12-06) against workers that live for the whole run (``train_loader`` now).

BCCD's train split with ``configs/bccd_r18.yaml``'s training transforms (random resize to a
288-352 px shorter side, flips, photometric changes), batches of the recipe's size, as the
trainer reads them: :class:`~detector.data.sampler.SeededSamples` under an
:class:`~detector.data.sampler.EpochBatchSampler`. No model: what is timed is the loader
alone, the part of an epoch that does not get faster with a faster GPU. Per epoch: the wait
for its first batch and the whole epoch's wall time; the two loaders alternate epoch by epoch
(A B A B ...) in one process, and each loader's first epoch (both start workers then) is
reported apart from the later ones. Both must yield the same batches (checked on the last
epoch: every image tensor equal).

    .venv/bin/python bench/loader_epochs.py [--workers 2] [--epochs 4] [--bccd PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from detector.data.coco import CocoDetection, collate_detection
from detector.data.sampler import EpochBatchSampler, SeededSamples, train_loader
from detector.data.transforms import build_transforms
from detector.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
Batches = DataLoader[tuple[Tensor, dict[str, Tensor]]]


def epoch(
    loader: Batches, sampler: EpochBatchSampler, index: int
) -> tuple[float, float, list[Tensor]]:
    """Seconds to the first batch, seconds for the epoch, the epoch's first image per batch."""
    sampler.set_epoch(index)
    start = time.perf_counter()
    batches: Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]] = iter(loader)
    images, _ = next(batches)
    first = time.perf_counter() - start
    seen = [images[0]]
    for images, _ in batches:
        seen.append(images[0])
    return first, time.perf_counter() - start, seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "datasets" / "bccd")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    cfg = load_recipe(ROOT / "configs" / "bccd_r18.yaml")
    dataset = CocoDetection.from_files(
        args.bccd / "annotations" / "instances_train.json",
        args.bccd / "images",
        transforms=build_transforms(cfg.data, train=True),
    )
    seeded = SeededSamples(dataset, seed=cfg.seed)
    samplers = {
        name: EpochBatchSampler(
            num_samples=len(dataset), batch_size=cfg.solver.batch_size, seed=cfg.seed
        )
        for name in ("fresh workers every epoch", "workers for the run")
    }
    fresh_name, lasting_name = samplers
    loaders: dict[str, Batches] = {
        fresh_name: DataLoader(  # train_loader's arguments, but workers end with each epoch
            seeded,
            batch_sampler=samplers[fresh_name],
            num_workers=args.workers,
            collate_fn=collate_detection,
        ),
        lasting_name: train_loader(
            seeded, samplers[lasting_name], num_workers=args.workers, pin_memory=False
        ),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; BCCD train "
        f"({len(dataset)} images), batch {cfg.solver.batch_size}, {args.workers} workers, "
        f"{args.epochs} epochs per loader, alternating"
    )
    first_s: dict[str, list[float]] = {n: [] for n in loaders}
    epoch_s: dict[str, list[float]] = {n: [] for n in loaders}
    last: dict[str, list[Tensor]] = {}
    for e in range(args.epochs):
        for name, loader in loaders.items():
            first, whole, last[name] = epoch(loader, samplers[name], e)
            first_s[name].append(first)
            epoch_s[name].append(whole)
            print(f"epoch {e + 1}, {name}: first batch {first:.2f} s, epoch {whole:.2f} s")
    a, b = last.values()
    if len(a) != len(b) or not all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
        raise SystemExit("the two loaders read different batches")
    print("\nchecked: the last epoch's batches are the same from both loaders\n")
    print("| loader | 1st epoch: first batch s | later epochs: first batch s | 1st epoch s "
          "| later epochs s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for name in loaders:
        later_first, later = first_s[name][1:], epoch_s[name][1:]
        spread = f"[{min(later):.2f}-{max(later):.2f}]"
        print(f"| {name} | {first_s[name][0]:.2f} | {statistics.median(later_first):.2f} "
              f"[{min(later_first):.2f}-{max(later_first):.2f}] | {epoch_s[name][0]:.2f} "
              f"| {statistics.median(later):.2f} {spread} |")  # fmt: skip
    fresh, lasting = (statistics.median(epoch_s[n][1:]) for n in loaders)
    print(f"\nlater epochs, fresh / lasting: {fresh / lasting:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
