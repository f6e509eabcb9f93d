"""COCO bbox evaluation with pycocotools, returned as typed, JSON-able metrics.

Units: boxes are COCO ``[x, y, w, h]`` in original image pixels; every metric is a fraction in
0..1 (``None`` where COCO has nothing to average, i.e. no ground truth in that slice).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pydantic import BaseModel, ConfigDict

from detector.data.validate import CleanCoco

# The order of ``COCOeval.stats`` (see ``COCOeval.summarize``).
SUMMARY_KEYS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
CLASS_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "AR100")

# Indices into the area (A) and maxDets (M) axes of ``COCOeval.eval`` for the default params:
# areaRngLbl = ["all", "small", "medium", "large"], maxDets = [1, 10, 100].
_AREA_ALL = 0
_MAXDETS_100 = 2


class Detection(BaseModel):
    """One predicted box: COCO ids, ``bbox`` = ``[x, y, w, h]`` in original image pixels."""

    model_config = ConfigDict(frozen=True)

    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    score: float


class ClassMetrics(BaseModel):
    """Metrics of one category (area "all", maxDets 100; ``None`` where it has no ground truth).

    ``pr_curve``: precision at COCO's 101 recall points 0.00, 0.01, ..., 1.00 at IoU 0.5
    (interpolated, as COCO does); 0.0 where that recall is never reached, and all 0.0 when the
    class has no ground truth (COCO's -1 is mapped to 0.0 so the curve is always 101 floats).
    ``best_f1`` / ``best_f1_threshold``: the best F1 = 2PR/(P+R) over that grid at IoU 0.5 and
    the detection score reaching it (keep detections with ``score >= threshold``); the
    threshold is ``None`` when no detection of the class is correct.
    """

    model_config = ConfigDict(frozen=True)

    category_id: int
    name: str
    AP: float | None
    AP50: float | None
    AP75: float | None
    AR100: float | None
    pr_curve: list[float]
    best_f1: float | None
    best_f1_threshold: float | None


class CocoMetrics(BaseModel):
    """The 12 COCO numbers (``summary``, keys ``SUMMARY_KEYS``) and per-class metrics."""

    model_config = ConfigDict(frozen=True)

    summary: dict[str, float | None]
    per_class: list[ClassMetrics]
    num_images: int
    num_detections: int

    def _values(self) -> dict[str, float | None]:
        values = dict(self.summary)
        for cls in self.per_class:
            for key in CLASS_KEYS:
                values[f"{key}/{cls.name}"] = getattr(cls, key)
        return values

    def value(self, name: str) -> float | None:
        """``"AP"``, ``"AP50"``, ... or per class ``"AP/<class name>"`` (also AP50, AP75, AR100)."""
        values = self._values()
        if name not in values:
            raise KeyError(f"unknown metric {name!r}; available: {', '.join(values)}")
        return values[name]

    def to_table(self) -> str:
        """Plain-text table: the 12 numbers, then one row per class; percentages, "-" for None."""
        width = max([len("class"), *(len(c.name) for c in self.per_class)])
        lines = [f"{key:<6} {_pct(self.summary.get(key)):>6}" for key in SUMMARY_KEYS]
        header = " ".join(f"{k:>6}" for k in (*CLASS_KEYS, "F1@thr"))
        lines += ["", f"{'class':<{width}} {header}"]
        for cls in self.per_class:
            cells = [_pct(getattr(cls, key)) for key in CLASS_KEYS] + [_pct(cls.best_f1_threshold)]
            lines.append(f"{cls.name:<{width}} " + " ".join(f"{cell:>6}" for cell in cells))
        lines.append(
            f"\n{self.num_images} images, {self.num_detections} detections; percent; F1@thr ="
            " the score threshold with the best F1 at IoU 0.5"
        )
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pycocotools prints progress on every call; keep the caller's stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def coco_dict(gt: CleanCoco) -> dict[str, Any]:
    """``gt`` as a COCO annotation dict (the JSON layout); boxes xyxy -> xywh, area = w * h."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for img in gt.images:
        images.append(
            {"id": img.id, "file_name": img.file_name, "width": img.width, "height": img.height}
        )
        for box, cat, crowd in zip(img.boxes, img.category_ids, img.crowd, strict=True):
            x0, y0, x1, y1 = box
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    # COCOeval treats a matched id of 0 as "unmatched": ids start at 1.
                    "id": len(annotations) + 1,
                    "image_id": img.id,
                    "category_id": cat,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": c.id, "name": c.name} for c in gt.categories]
    return {"images": images, "annotations": annotations, "categories": categories}


def ground_truth(gt: CleanCoco) -> COCO:
    """An in-memory ``pycocotools`` COCO object of ``gt`` (no files written)."""
    coco = COCO()
    coco.dataset = coco_dict(gt)
    with _quiet():
        coco.createIndex()
    return coco


def _results(coco_gt: COCO, detections: Sequence[Detection]) -> COCO:
    """The detections as a COCO result object; an empty one when there are none."""
    unknown = {d.image_id for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(unknown)}")
    if detections:
        anns = [
            {
                "image_id": d.image_id,
                "category_id": d.category_id,
                "bbox": list(d.bbox),
                "score": d.score,
            }
            for d in detections
        ]
        with _quiet():
            return coco_gt.loadRes(anns)
    # loadRes indexes anns[0] and fails on []; an empty result scores 0 wherever GT exists.
    res = COCO()
    res.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with _quiet():
        res.createIndex()
    return res


def _run_cocoeval(coco_gt: COCO, coco_dt: COCO, image_ids: list[int]) -> COCOeval:
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    # Every GT image, negatives included: their false positives must count.
    evaluator.params.imgIds = image_ids
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_defined(values: NDArray[np.float64]) -> float | None:
    """Mean over entries > -1 (COCO's marker for "no ground truth"), as ``summarize`` does."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else None


def _iou_index(evaluator: COCOeval, iou: float) -> int:
    return int(np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))[0])


def _best_f1(
    precision: NDArray[np.float64], recall: NDArray[np.float64], scores: NDArray[np.float64]
) -> tuple[float | None, float | None]:
    """Best F1 over the recall grid and its score threshold.

    Args:
        precision, scores: float[R] at IoU 0.5 for one class (-1 everywhere if it has no GT).
        recall: float[R], COCO's recall grid.
    """
    if (precision < 0).all():
        return None, None
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    best = int(np.argmax(f1))  # first maximum: the highest threshold reaching that F1
    if f1[best] <= 0:
        return 0.0, None
    return float(f1[best]), float(scores[best])


def _class_metrics(evaluator: COCOeval, k: int, category_id: int, name: str) -> ClassMetrics:
    """Metrics of the k-th category of ``evaluator.params.catIds`` (area all, maxDets 100)."""
    precision = evaluator.eval["precision"][:, :, k, _AREA_ALL, _MAXDETS_100]  # [T, R]
    scores = evaluator.eval["scores"][:, :, k, _AREA_ALL, _MAXDETS_100]  # [T, R]
    recall = evaluator.eval["recall"][:, k, _AREA_ALL, _MAXDETS_100]  # [T]
    t50, t75 = _iou_index(evaluator, 0.5), _iou_index(evaluator, 0.75)
    best_f1, threshold = _best_f1(precision[t50], evaluator.params.recThrs, scores[t50])
    return ClassMetrics(
        category_id=category_id,
        name=name,
        AP=_mean_defined(precision),
        AP50=_mean_defined(precision[t50]),
        AP75=_mean_defined(precision[t75]),
        AR100=_mean_defined(recall),
        pr_curve=[max(0.0, float(p)) for p in precision[t50]],
        best_f1=best_f1,
        best_f1_threshold=threshold,
    )


def score_detections(gt: CleanCoco, detections: Sequence[Detection]) -> CocoMetrics:
    """COCO bbox metrics of ``detections`` against ``gt`` over all of its images.

    Raises:
        ValueError: a detection names an image that is not in ``gt``.
    """
    coco_gt = ground_truth(gt)
    evaluator = _run_cocoeval(coco_gt, _results(coco_gt, detections), [img.id for img in gt.images])
    summary = {
        key: (None if stat == -1 else float(stat))
        for key, stat in zip(SUMMARY_KEYS, evaluator.stats, strict=True)
    }
    names = {c.id: c.name for c in gt.categories}
    per_class = [
        _class_metrics(evaluator, k, int(cat_id), names[cat_id])
        for k, cat_id in enumerate(evaluator.params.catIds)
    ]
    return CocoMetrics(
        summary=summary,
        per_class=per_class,
        num_images=len(gt.images),
        num_detections=len(detections),
    )
