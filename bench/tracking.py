"""What experiment tracking costs a training run: the same tiny recipe with tracking off and on.

Cases (same recipe, data, seed; only ``tracking`` differs):

- ``off``: ``tracking.tensorboard=false`` (the per-epoch ``metrics.jsonl`` is always written);
- ``tensorboard``: the default: event files with every step's scalars, and at each evaluation
  the 12 COCO numbers, per-class AP, the PR-curve image and ``tracking.images`` validation
  images drawn (one forward pass each);
- ``mlflow`` (with ``--mlflow``): the default plus an MLflow run in a local file store.

Each round trains every case once (A B C A B C ...), ``fit`` only (``finalize``'s plots are
after training); time = wall seconds of ``fit``; median and [min-max] over the rounds;
ratio = case / off. Data: generated shapes (``detector.data.shapes``), evaluated every epoch.

    .venv/bin/python bench/tracking.py [--rounds 3] [--epochs 3] [--images 48] [--mlflow]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detector.config import TrainConfig
from detector.data.shapes import ShapesSpec, make_shapes_splits
from detector.engine.trainer import fit
from detector.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def recipe(shapes: Path, args: argparse.Namespace, *overrides: str) -> TrainConfig:
    data = [
        f"data.{split}.{key}={shapes / path}"
        for split in ("train", "val")
        for key, path in (
            ("annotations", f"annotations/instances_{split}.json"),
            ("images", "images"),
        )
    ]
    size = args.size
    return load_recipe(
        CONFIGS / "shapes_tiny.yaml",
        [
            *data,
            f"data.train_min_sizes=[{size}]",
            f"data.eval_min_size={size}",
            f"data.max_size={size}",
            f"solver.epochs={args.epochs}",
            "solver.steps=[]",
            f"solver.batch_size={args.batch_size}",
            "solver.warmup_iters=1",
            f"device={args.device}",
            *overrides,
        ],
    )


def cases(args: argparse.Namespace, root: Path) -> dict[str, tuple[str, ...]]:
    found = {"off": ("tracking.tensorboard=false",), "tensorboard": ()}
    if args.mlflow:
        found["mlflow"] = (f"tracking.mlflow_uri={(root / 'mlruns').as_uri()}",)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=48, help="training images (val: a third)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mlflow", action="store_true", help="also an MLflow file-store case")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = ShapesSpec(num_images=1, size_px=args.size, seed=0)
        splits = [("train", args.images), ("val", max(1, args.images // 3))]
        make_shapes_splits(root / "shapes", spec, splits=splits)
        configs = {
            name: recipe(root / "shapes", args, *extra) for name, extra in cases(args, root).items()
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        iterations = 0
        for r in range(args.rounds):
            for name, cfg in configs.items():
                started = time.perf_counter()
                result = fit(cfg, root / f"run-{name}-{r}")
                times[name].append(time.perf_counter() - started)
                iterations = result.iterations
                print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    report(args, times, iterations)


def report(args: argparse.Namespace, times: dict[str, list[float]], iterations: int) -> None:
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}; {args.epochs} epochs x "
        f"{iterations // args.epochs} iterations (batch {args.batch_size}, {args.size} px), "
        f"evaluated every epoch; {args.rounds} rounds\n"
    )
    off = statistics.median(times["off"])
    print("| case | fit s, median [min-max] | per iteration ms | ratio (case/off) |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} [{min(values):.2f}-{max(values):.2f}] | "
            f"{1000 * median / iterations:.1f} | {median / off:.3f} |"
        )


if __name__ == "__main__":
    main()
