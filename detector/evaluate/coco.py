"""COCO bbox evaluation, returned as typed, JSON-able metrics (engines: ``backends.py``).

Units: boxes are COCO ``[x, y, w, h]`` in original image pixels; every metric is a fraction in
0..1 (``None`` where COCO has nothing to average, i.e. no ground truth in that slice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from detector.data.validate import CleanCoco
from detector.evaluate.backends import CocoEvalArrays, EvalBackend, run_cocoeval

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


def _result_dicts(gt: CleanCoco, detections: Sequence[Detection]) -> list[dict[str, Any]]:
    unknown = {d.image_id for d in detections} - {img.id for img in gt.images}
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(unknown)}")
    return [
        {
            "image_id": d.image_id,
            "category_id": d.category_id,
            "bbox": list(d.bbox),
            "score": d.score,
        }
        for d in detections
    ]


def _mean_defined(values: NDArray[np.float64]) -> float | None:
    """Mean over entries > -1 (COCO's marker for "no ground truth"), as ``summarize`` does."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else None


def _iou_index(arrays: CocoEvalArrays, iou: float) -> int:
    return int(np.flatnonzero(np.isclose(arrays.iou_thrs, iou))[0])


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


def _class_metrics(arrays: CocoEvalArrays, k: int, category_id: int, name: str) -> ClassMetrics:
    """Metrics of the k-th category of ``arrays.cat_ids`` (area all, maxDets 100)."""
    precision = arrays.precision[:, :, k, _AREA_ALL, _MAXDETS_100]  # [T, R]
    scores = arrays.scores[:, :, k, _AREA_ALL, _MAXDETS_100]  # [T, R]
    recall = arrays.recall[:, k, _AREA_ALL, _MAXDETS_100]  # [T]
    t50, t75 = _iou_index(arrays, 0.5), _iou_index(arrays, 0.75)
    best_f1, threshold = _best_f1(precision[t50], arrays.rec_thrs, scores[t50])
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


def score_detections(
    gt: CleanCoco,
    detections: Sequence[Detection],
    *,
    backend: EvalBackend = "faster_coco_eval",
) -> CocoMetrics:
    """COCO bbox metrics of ``detections`` against ``gt`` over all of its images.

    ``backend``: the COCOeval engine; both give the same numbers (``backends.py``).

    Raises:
        ValueError: a detection names an image that is not in ``gt``.
    """
    arrays = run_cocoeval(
        coco_dict(gt),
        _result_dicts(gt, detections),
        [img.id for img in gt.images],
        backend=backend,
    )
    summary = {
        key: (None if stat == -1 else float(stat))
        for key, stat in zip(SUMMARY_KEYS, arrays.stats, strict=True)
    }
    names = {c.id: c.name for c in gt.categories}
    per_class = [
        _class_metrics(arrays, k, cat_id, names[cat_id]) for k, cat_id in enumerate(arrays.cat_ids)
    ]
    return CocoMetrics(
        summary=summary,
        per_class=per_class,
        num_images=len(gt.images),
        num_detections=len(detections),
    )
