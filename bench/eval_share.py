"""The share of a BCCD training epoch spent in validation: one pass against two, and the
scoring with pycocotools against faster-coco-eval.

One run: trains ``configs/bccd_r18.yaml`` on the real BCCD train split for ``--epochs`` at a
small size (validation off, so the training wall time is the training alone), then, on the val
split with the trained model, what the trainer runs after every epoch, two ways interleaved
(``--repeats`` each, median): the two passes it ran until 2026-12-06 (the loss in training
mode with BatchNorm frozen, then the detections in eval mode: written out here as the
reference) and the one pass it runs now (:func:`detector.evaluate.runner.validate`: the loss
from the eval pass's own head outputs). The two must agree (loss terms within 1e-5, the same
detections) before anything is timed. Then the scoring of those (real) detections with both
backends, interleaved. Share of an epoch in validation = validation / (training epoch +
validation).

    .venv/bin/python bench/eval_share.py [--size 160] [--epochs 1] [--repeats 5] [--device cuda]
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
from detector.evaluate.runner import Validation, _loader, predict_dataset, validate
from detector.predict import Predictor
from detector.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


@torch.no_grad()
def two_passes(model: torch.nn.Module, val: CocoDetection, device: torch.device) -> Validation:
    """The validation of ``b63f2f5`` and before: a loss pass, then a detection pass."""
    model.train()  # torchvision's RetinaNet returns losses only in training mode
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    sums: dict[str, float] = {}
    batches = 0
    for images, targets in _loader(val, 8):
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        for name, value in model(images, targets).items():
            sums[name] = sums.get(name, 0.0) + float(value)
        batches += 1
    losses = {name: total / batches for name, total in sums.items()}
    found = list(predict_dataset(model, val, device=device))
    return Validation(losses=losses, detections=found)


def one_pass(model: torch.nn.Module, val: CocoDetection, device: torch.device) -> Validation:
    return validate(model, val, device=device, batch_size=8)


def check(ref: Validation, ours: Validation) -> None:
    for name, value in ref.losses.items():
        if abs(ours.losses[name] - value) > 1e-5 * abs(value):
            raise SystemExit(f"{name}: two passes {value}, one pass {ours.losses[name]}")
    if len(ref.detections) != len(ours.detections) or any(
        (a.image_id, a.category_id) != (b.image_id, b.category_id)
        or max(abs(x - y) for x, y in zip(a.bbox, b.bbox, strict=True)) > 1e-3
        or abs(a.score - b.score) > 1e-5
        for a, b in zip(ref.detections, ours.detections, strict=True)
    ):
        raise SystemExit("the one pass finds other detections than the two")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "datasets" / "bccd")
    p.add_argument("--size", type=int, default=160, help="train and eval shorter side (px)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
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
            f"device={args.device}",
            # On a GPU the recipe the GPU proof trains with: bf16 autocast, channels_last.
            *(["solver.amp=bf16", "solver.channels_last=true"] if args.device == "cuda" else []),
        ],
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; "
          f"BCCD at {args.size} px")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        train_s, _ = _timed(lambda: fit(cfg, Path(tmp)))
        predictor = Predictor.load(Path(tmp) / "checkpoints" / "last.pt", device=args.device)
    val = CocoDetection.from_files(
        ann / "instances_val.json", images, transforms=predictor.transforms
    )
    model = predictor.model
    device = predictor.device
    ref, ours = two_passes(model, val, device), one_pass(model, val, device)
    check(ref, ours)
    print(f"checked: loss terms {ref.losses} vs {ours.losses}; "
          f"{len(ours.detections)} detections alike")  # fmt: skip
    passes: dict[str, list[float]] = {"two passes (before)": [], "one pass (validate)": []}
    for _ in range(args.repeats):
        for name, run in zip(passes, (two_passes, one_pass), strict=True):
            start = time.perf_counter()
            run(model, val, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            passes[name].append(time.perf_counter() - start)
    times: dict[str, list[float]] = {b: [] for b in EVAL_BACKENDS}
    for _ in range(args.repeats):
        for backend in EVAL_BACKENDS:
            start = time.perf_counter()
            score_detections(val.coco, ours.detections, backend=backend)
            times[backend].append(time.perf_counter() - start)
    epoch_s = train_s / args.epochs
    print(f"training: {epoch_s:.1f} s per epoch (205 images)")
    print(f"validation on {len(val)} images, {len(ours.detections)} detections")
    print("\n| network passes | s | scoring s | validation s | epoch + validation s "
          "| share in validation |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for scoring, values in times.items():
        score_s = statistics.median(values)
        for name, rounds in passes.items():
            pass_s = statistics.median(rounds)
            validation = pass_s + score_s
            share = validation / (epoch_s + validation)
            print(f"| {name}, {scoring} | {pass_s:.1f} [{min(rounds):.1f}-{max(rounds):.1f}] "
                  f"| {score_s:.3f} | {validation:.1f} | {epoch_s + validation:.1f} "
                  f"| {share:.1%} |")  # fmt: skip
    ratio = statistics.median(passes["two passes (before)"]) / statistics.median(
        passes["one pass (validate)"]
    )
    print(f"\nnetwork passes, two / one: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
