"""The COCOeval engines behind :func:`detector.evaluate.coco.score_detections`.

``pycocotools`` is the reference; ``faster_coco_eval`` is its C++ port (matching and
accumulation in one native call), several times faster on large validation sets. Both are
driven through the same COCO API and must give the very same arrays (a test compares them to
1e-9). faster-coco-eval departs from pycocotools where parameters are customised: with other
``maxDets`` or area ranges its ``stats`` has another length and order, and it adds AR50/AR75,
mIoU and mAUC after the 12 numbers (``all_stats``). :func:`_check_params` therefore refuses to
read any evaluator whose parameters are not the COCO defaults, where both agree.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

EvalBackend = Literal["pycocotools", "faster_coco_eval"]
EVAL_BACKENDS: tuple[EvalBackend, ...] = get_args(EvalBackend)

# The COCO detection defaults: the layout of ``stats`` and ``eval`` that coco.py reads.
_MAX_DETS = [1, 10, 100]
_AREA_LABELS = ["all", "small", "medium", "large"]
_AREA_RANGES = [[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]]
_NUM_STATS = 12


@dataclass(frozen=True)
class CocoEvalArrays:
    """What ``COCOeval.accumulate`` + ``summarize`` produce, as plain arrays.

    T IoU thresholds, R recall points, K categories, A area ranges, M maxDets values:
    ``stats`` float[12] (``-1`` where there is nothing to average), ``precision`` and
    ``scores`` float[T, R, K, A, M], ``recall`` float[T, K, A, M] (``-1``: no ground truth),
    ``iou_thrs`` float[T], ``rec_thrs`` float[R], ``cat_ids`` the K category ids in order.
    """

    stats: NDArray[np.float64]
    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    scores: NDArray[np.float64]
    iou_thrs: NDArray[np.float64]
    rec_thrs: NDArray[np.float64]
    cat_ids: list[int]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pycocotools prints progress on every call; keep the caller's stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _silent(*args: object, **kwargs: object) -> None:
    del args, kwargs


def _api(backend: EvalBackend) -> tuple[Callable[[], Any], Callable[[Any, Any], Any]]:
    """``(make an empty COCO, make a bbox COCOeval(gt, dt))`` of ``backend``."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, lambda gt, dt: COCOeval(gt, dt, iouType="bbox")
    if backend == "faster_coco_eval":
        import faster_coco_eval

        def make_eval(gt: Any, dt: Any) -> Any:
            # separate_eval=False: match and accumulate in one native call. extra_calc=False:
            # no per-annotation tp/fp flags written back into the annotation dicts.
            return faster_coco_eval.COCOeval_faster(
                gt,
                dt,
                iouType="bbox",
                print_function=_silent,
                extra_calc=False,
                lvis_style=False,
                separate_eval=False,
            )

        return lambda: faster_coco_eval.COCO(print_function=_silent), make_eval
    raise ValueError(f"unknown evaluation backend {backend!r}: one of {', '.join(EVAL_BACKENDS)}")


def _index(make_coco: Callable[[], Any], dataset: dict[str, Any]) -> Any:
    coco = make_coco()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _results(make_coco: Callable[[], Any], coco_gt: Any, anns: list[dict[str, Any]]) -> Any:
    if anns:
        with _quiet():
            return coco_gt.loadRes(anns)
    # pycocotools' loadRes indexes anns[0]; an empty result scores 0 wherever GT exists.
    empty = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    return _index(make_coco, empty)


def _check_params(evaluator: Any) -> None:
    """Refuse parameters where the two libraries' outputs are laid out differently."""
    p = evaluator.params
    expected_iou = np.linspace(0.5, 0.95, 10)
    expected_rec = np.linspace(0.0, 1.0, 101)
    problems = [
        name
        for name, ok in (
            ("maxDets", list(p.maxDets) == _MAX_DETS),
            ("areaRngLbl", list(p.areaRngLbl) == _AREA_LABELS),
            ("areaRng", np.allclose(np.asarray(p.areaRng, dtype=float), _AREA_RANGES)),
            ("iouThrs", np.allclose(p.iouThrs, expected_iou)),
            ("recThrs", np.allclose(p.recThrs, expected_rec)),
            ("useCats", bool(p.useCats)),
            ("iouType", p.iouType == "bbox"),
        )
        if not ok
    ]
    if problems:
        raise RuntimeError(f"COCOeval parameters are not the COCO defaults: {', '.join(problems)}")


def run_cocoeval(
    gt: dict[str, Any],
    detections: list[dict[str, Any]],
    image_ids: Sequence[int],
    *,
    backend: EvalBackend,
) -> CocoEvalArrays:
    """Evaluate, accumulate and summarise bbox ``detections`` against ``gt`` on ``image_ids``.

    Args:
        gt: a COCO annotation dict (annotation ids from 1: COCOeval reads 0 as "unmatched").
        detections: COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh,
            ``score``), every ``image_id`` in ``gt``; the dicts are extended in place.
        image_ids: the images scored, negatives included (their false positives count).
    """
    make_coco, make_eval = _api(backend)
    coco_gt = _index(make_coco, gt)
    evaluator = make_eval(coco_gt, _results(make_coco, coco_gt, detections))
    evaluator.params.imgIds = list(image_ids)
    _check_params(evaluator)
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)
    if stats.shape != (_NUM_STATS,):
        raise RuntimeError(f"{backend} returned {stats.shape} summary numbers, not {_NUM_STATS}")
    return CocoEvalArrays(
        stats=stats,
        precision=np.asarray(evaluator.eval["precision"], dtype=np.float64),
        recall=np.asarray(evaluator.eval["recall"], dtype=np.float64),
        scores=np.asarray(evaluator.eval["scores"], dtype=np.float64),
        iou_thrs=np.asarray(evaluator.params.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(evaluator.params.recThrs, dtype=np.float64),
        cat_ids=[int(c) for c in evaluator.params.catIds],
    )
