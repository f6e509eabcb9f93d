"""COCO evaluation: faster-coco-eval (our default) against pycocotools, side by side.

What is timed is one :func:`detector.evaluate.coco.score_detections` call, i.e. everything the
trainer pays after the detections are gathered: building the COCO ground-truth index and the
result object, ``evaluate`` + ``accumulate`` + ``summarize``, and our per-class extras (AP,
AP50, AP75, AR100, PR curve and best-F1 threshold of every class).

Cases:
- ``bccd-val`` / ``bccd-test``: the real BCCD ground truth (``--bccd``, read by path; 87 and 72
  images, 3 classes) with detections generated from it (every true box twice, jittered, with
  random scores, ~10% under another class, then false positives up to 100 per image).
- ``coco``: COCO val2017's size, generated: 5,000 images, 80 classes, ~36,000 boxes (Poisson
  7.3 per image, 1% crowd), 100 detections per image (500,000) made the same way.

Checked before timing (else the script exits non-zero): both backends give the same 12 summary
numbers and per-class metrics, PR curves and thresholds (to 1e-9). Timing: one warm-up call of
each, then ``--repeats`` rounds (pycocotools, faster-coco-eval, pycocotools, ...); median and
[min-max]; ratio = pycocotools / faster-coco-eval.

    .venv/bin/python bench/evaluate.py [--cases bccd-val bccd-test coco] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detector.data.validate import Category, CleanCoco, ImageRecord, ValidationReport, load_coco
from detector.evaluate.backends import EVAL_BACKENDS, EvalBackend
from detector.evaluate.coco import CLASS_KEYS, SUMMARY_KEYS, CocoMetrics, Detection
from detector.evaluate.coco import score_detections as score

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-9


def generated_gt(num_images: int, num_classes: int, boxes_per_image: float, seed: int) -> CleanCoco:
    """COCO-like ground truth: 640x480 images, boxes of every size, 1% crowd."""
    rng = np.random.default_rng(seed)
    images = []
    for image_id in range(1, num_images + 1):
        n = int(rng.poisson(boxes_per_image))
        w = rng.uniform(4, 320, n)
        h = rng.uniform(4, 320, n)
        x = rng.uniform(0, 1, n) * (640 - w)
        y = rng.uniform(0, 1, n) * (480 - h)
        images.append(
            ImageRecord(
                id=image_id,
                file_name=f"{image_id:012d}.jpg",
                path=Path("/nonexistent"),
                width=640,
                height=480,
                boxes=tuple(
                    (float(a), float(b), float(a + c), float(b + d))
                    for a, b, c, d in zip(x, y, w, h, strict=True)
                ),
                category_ids=tuple(int(c) for c in rng.integers(1, num_classes + 1, n)),
                crowd=tuple(bool(c) for c in rng.random(n) < 0.01),
            )
        )
    report = ValidationReport(annotations_path=Path("gt.json"), image_dir=Path(), strict=False)
    categories = tuple(Category(id=i, name=f"class{i}") for i in range(1, num_classes + 1))
    return CleanCoco(categories=categories, images=tuple(images), report=report)


def noisy_detections(gt: CleanCoco, per_image: int, seed: int) -> list[Detection]:
    """Every true box twice (jittered, ~10% relabelled), then false positives up to
    ``per_image`` detections per image; scores uniform, the false ones lower on average."""
    rng = np.random.default_rng(seed)
    cat_ids = [c.id for c in gt.categories]
    out: list[Detection] = []
    for img in gt.images:
        made = 0
        for box, cat in zip(img.boxes, img.category_ids, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            for _ in range(2):
                if made == per_image:
                    break
                j = rng.normal(0, 0.1, 4) * (w, h, w, h)
                label = cat if rng.random() < 0.9 else int(rng.choice(cat_ids))
                bbox = (box[0] + j[0], box[1] + j[1], max(1.0, w + j[2]), max(1.0, h + j[3]))
                out.append(_det(img.id, label, bbox, float(rng.uniform(0.05, 1.0))))
                made += 1
        for _ in range(per_image - made):
            w, h = (float(v) for v in rng.uniform(4, 320, 2))
            x, y = float(rng.uniform(0, img.width - w)), float(rng.uniform(0, img.height - h))
            label = int(rng.choice(cat_ids))
            out.append(_det(img.id, label, (x, y, w, h), float(rng.uniform(0.05, 0.6))))
    return out


def _det(image_id: int, cat: int, bbox: tuple[float, ...], s: float) -> Detection:
    x, y, w, h = (float(v) for v in bbox)
    return Detection(image_id=image_id, category_id=cat, bbox=(x, y, w, h), score=s)


def _max_difference(a: CocoMetrics, b: CocoMetrics) -> float:
    """The largest difference between two metric sets; inf where one is None and not the other."""
    pairs = [(a.summary[k], b.summary[k]) for k in SUMMARY_KEYS]
    for ca, cb in zip(a.per_class, b.per_class, strict=True):
        pairs += [(getattr(ca, k), getattr(cb, k)) for k in (*CLASS_KEYS, "best_f1")]
        pairs.append((ca.best_f1_threshold, cb.best_f1_threshold))
        pairs += list(zip(ca.pr_curve, cb.pr_curve, strict=True))
    worst = 0.0
    for x, y in pairs:
        if (x is None) != (y is None):
            return float("inf")
        if x is not None and y is not None:
            worst = max(worst, abs(x - y))
    return worst


def _timed(gt: CleanCoco, dets: list[Detection], backend: EvalBackend) -> float:
    start = time.perf_counter()
    score(gt, dets, backend=backend)
    return time.perf_counter() - start


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _case(name: str, bccd: Path, seed: int) -> tuple[CleanCoco, list[Detection]]:
    if name == "coco":
        gt = generated_gt(5000, 80, 7.3, seed)
    else:
        split = name.removeprefix("bccd-")
        gt = load_coco(bccd / "annotations" / f"instances_{split}.json", bccd / "images")
    return gt, noisy_detections(gt, 100, seed + 1)


def _fmt(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} [{min(times):.3f}-{max(times):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["bccd-val", "bccd-test", "coco"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bccd", type=Path, default=ROOT.parent / "shared" / "datasets" / "bccd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cpu = _cpu_name()
    print(f"device: CPU {cpu!r}, {os.cpu_count()} logical CPUs; python {platform.python_version()}")
    print(f"torch threads {torch.get_num_threads()} (unused here); backends {EVAL_BACKENDS}")
    rows = []
    failed = False
    for name in args.cases:
        gt, dets = _case(name, args.bccd, args.seed)
        boxes = sum(len(img.boxes) for img in gt.images)
        results = {b: score(gt, dets, backend=b) for b in EVAL_BACKENDS}  # also the warm-up
        diff = _max_difference(results["pycocotools"], results["faster_coco_eval"])
        print(
            f"{name}: check: largest difference between the backends {diff:.1e} (tolerance {TOL})"
        )
        print(f"{name}: AP {results['pycocotools'].summary['AP']:.4f}")
        if diff > TOL:
            failed = True
            continue
        times: dict[str, list[float]] = {b: [] for b in EVAL_BACKENDS}
        for _ in range(args.repeats):
            for backend in EVAL_BACKENDS:
                times[backend].append(_timed(gt, dets, backend))
        ref, ours = times["pycocotools"], times["faster_coco_eval"]
        ratio = statistics.median(ref) / statistics.median(ours)
        rows.append(
            f"| {name} | {len(gt.images)} | {len(gt.categories)} | {boxes} | {len(dets)} | "
            f"{_fmt(ref)} | {_fmt(ours)} | {ratio:.2f}x |"
        )
        print(rows[-1], flush=True)
    print()
    print("| case | images | classes | GT boxes | detections | pycocotools s | faster-coco-eval s "
          "| ratio (ref/ours) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
