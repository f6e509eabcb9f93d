"""The share of a BCCD training epoch spent in validation, with pycocotools and faster-coco-eval.

One run: trains ``configs/bccd_r18.yaml`` on the real BCCD train split for ``--epochs`` at a
small size (validation off, so the training wall time is the training alone), then runs on the
val split, with the trained model, exactly what the trainer runs after every epoch: the
validation loss pass, the detection pass, and the scoring of those (real) detections, with
both backends interleaved (``--repeats`` each, median). The share of an epoch in validation =
validation / (training epoch + validation), with each backend's scoring time.

    .venv/bin/python bench/eval_share.py [--size 160] [--epochs 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from detector.data.coco import CocoDetection
from detector.engine.trainer import fit
from detector.evaluate.backends import EVAL_BACKENDS
from detector.evaluate.coco import score_detections
from detector.evaluate.runner import predict_dataset, validation_loss
from detector.predict import Predictor
from detector.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "datasets" / "bccd")
    p.add_argument("--size", type=int, default=160, help="train and eval shorter side (px)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    ann, images = args.bccd / "annotations", args.bccd / "images"
    longest = args.size * 4 // 3
    cfg = load_recipe(
        ROOT / "configs" / "bccd_r18.yaml",
        [
            f"data.train.annotations={ann / 'instances_train.json'}",
            f"data.train.images={images}",
            f"data.train_min_sizes=[{args.size}]",
            f"data.eval_min_size={args.size}",
            f"data.max_size={longest}",
            "data.num_workers=1",
            f"solver.epochs={args.epochs}",
            "solver.steps=[]",
            "solver.warmup_iters=5",
        ],
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; BCCD at {args.size} px")
    with tempfile.TemporaryDirectory() as tmp:
        train_s, _ = _timed(lambda: fit(cfg, Path(tmp)))
        predictor = Predictor.load(Path(tmp) / "checkpoints" / "last.pt", device="cpu")
    val = CocoDetection.from_files(
        ann / "instances_val.json", images, transforms=predictor.transforms
    )
    model, device = predictor.model, torch.device("cpu")
    loss_s, _ = _timed(lambda: validation_loss(model, val, device=device, batch_size=8))
    start = time.perf_counter()
    detections = list(predict_dataset(model, val, device=device))
    detect_s = time.perf_counter() - start
    times: dict[str, list[float]] = {b: [] for b in EVAL_BACKENDS}
    for _ in range(args.repeats):
        for backend in EVAL_BACKENDS:
            start = time.perf_counter()
            score_detections(val.coco, detections, backend=backend)
            times[backend].append(time.perf_counter() - start)
    epoch_s = train_s / args.epochs
    print(f"training: {epoch_s:.1f} s per epoch (205 images)")
    print(f"validation on {len(val)} images, {len(detections)} detections: loss pass {loss_s:.1f}"
          f" s, detection pass {detect_s:.1f} s")  # fmt: skip
    print("\n| backend | scoring s | validation s | epoch + validation s | share in validation |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        score_s = statistics.median(values)
        validation = loss_s + detect_s + score_s
        share = validation / (epoch_s + validation)
        print(f"| {name} | {score_s:.3f} [{min(values):.3f}-{max(values):.3f}] | "
              f"{validation:.1f} | {epoch_s + validation:.1f} | {share:.1%} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
