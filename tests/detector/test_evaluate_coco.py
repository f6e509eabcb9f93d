"""COCO scoring against hand-built ground truth and against pycocotools run the classic way."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.validate import Category, CleanCoco, ImageRecord, ValidationReport
from detector.evaluate.coco import (
    SUMMARY_KEYS,
    ClassMetrics,
    CocoMetrics,
    Detection,
    score_detections,
)

Box = tuple[float, float, float, float]

CAT, DOG, BIRD = 3, 17, 25  # non-contiguous COCO ids on purpose
NAMES = {CAT: "cat", DOG: "dog", BIRD: "bird"}


def _image(
    image_id: int, size: tuple[int, int], objects: list[tuple[Box, int, bool]]
) -> ImageRecord:
    """``size`` = (width, height); ``objects`` = (xyxy box, category id, crowd)."""
    name = f"img{image_id}.jpg"
    return ImageRecord(
        id=image_id,
        file_name=name,
        path=Path("/nonexistent") / name,
        width=size[0],
        height=size[1],
        boxes=tuple(box for box, _, _ in objects),
        category_ids=tuple(cat for _, cat, _ in objects),
        crowd=tuple(crowd for _, _, crowd in objects),
    )


def _clean(images: list[ImageRecord], names: dict[int, str] | None = None) -> CleanCoco:
    names = NAMES if names is None else names
    categories = tuple(Category(id=i, name=n) for i, n in sorted(names.items()))
    report = ValidationReport(annotations_path=Path("gt.json"), image_dir=Path(), strict=False)
    return CleanCoco(categories=categories, images=tuple(images), report=report)


@pytest.fixture
def gt() -> CleanCoco:
    """Small (< 32² px), medium and large boxes, a crowd box and a negative image."""
    return _clean(
        [
            _image(
                1, (640, 480), [((10, 10, 310, 250), CAT, False), ((400, 50, 460, 110), DOG, False)]
            ),
            _image(
                4,
                (500, 400),
                [
                    ((20, 20, 40, 40), CAT, False),  # small: 20 x 20
                    ((100, 100, 400, 350), DOG, False),
                    ((50, 200, 150, 300), DOG, True),  # crowd: never needs detecting
                ],
            ),
            _image(9, (300, 300), []),  # negative
            _image(
                12,
                (800, 600),
                [((100, 100, 170, 160), BIRD, False), ((300, 300, 350, 350), CAT, False)],
            ),
        ]
    )


def _xywh(box: Box) -> Box:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


def _perfect(gt: CleanCoco, *, with_crowd: bool = False) -> list[Detection]:
    return [
        Detection(image_id=img.id, category_id=cat, bbox=_xywh(box), score=1.0)
        for img in gt.images
        for box, cat, crowd in zip(img.boxes, img.category_ids, img.crowd, strict=True)
        if with_crowd or not crowd
    ]


def _shifted(gt: CleanCoco, fraction: float) -> list[Detection]:
    """Every box moved right by ``fraction`` of its width."""
    out = []
    for det in _perfect(gt):
        x, y, w, h = det.bbox
        out.append(det.model_copy(update={"bbox": (x + fraction * w, y, w, h)}))
    return out


def _noisy(gt: CleanCoco, seed: int = 0) -> list[Detection]:
    """Jittered true boxes (twice each), false positives on every image, random scores."""
    rng = np.random.default_rng(seed)
    out = []
    for img in gt.images:
        for box, cat in zip(img.boxes, img.category_ids, strict=True):
            x, y, w, h = _xywh(box)
            for _ in range(2):
                jitter = rng.normal(0, 0.15, 4) * np.array([w, h, w, h])
                out.append(
                    Detection(
                        image_id=img.id,
                        category_id=cat,
                        bbox=(
                            x + jitter[0],
                            y + jitter[1],
                            max(1.0, w + jitter[2]),
                            max(1.0, h + jitter[3]),
                        ),
                        score=float(rng.uniform(0.05, 1.0)),
                    )
                )
        for _ in range(3):
            x, y = rng.uniform(0, img.width / 2), rng.uniform(0, img.height / 2)
            out.append(
                Detection(
                    image_id=img.id,
                    category_id=int(rng.choice([CAT, DOG, BIRD])),
                    bbox=(x, y, float(rng.uniform(5, 150)), float(rng.uniform(5, 150))),
                    score=float(rng.uniform(0.05, 1.0)),
                )
            )
    return out


def _wrong_class(gt: CleanCoco) -> list[Detection]:
    """Every true box, but the dogs are called birds."""
    swap = {DOG: BIRD}
    return [
        d.model_copy(update={"category_id": swap.get(d.category_id, d.category_id)})
        for d in _perfect(gt)
    ]


def _classic_eval(
    gt: CleanCoco, detections: list[Detection], tmp_path: Path, cat_ids: list[int] | None = None
) -> list[float | None]:
    """pycocotools the documented way: JSON files on disk, ``COCO(file)``, ``loadRes(file)``."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for img in gt.images:
        images.append(
            {"id": img.id, "file_name": img.file_name, "width": img.width, "height": img.height}
        )
        for box, cat, crowd in zip(img.boxes, img.category_ids, img.crowd, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img.id,
                    "category_id": cat,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    categories: list[dict[str, Any]] = [{"id": c.id, "name": c.name} for c in gt.categories]
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "results.json"
    gt_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    res_file.write_text(json.dumps([d.model_dump() for d in detections]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        evaluator = COCOeval(coco, coco.loadRes(str(res_file)), iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [None if s == -1 else float(s) for s in evaluator.stats]


def _class(metrics: CocoMetrics, category_id: int) -> ClassMetrics:
    return next(c for c in metrics.per_class if c.category_id == category_id)


def test_perfect_predictions_score_one_and_crowd_need_not_be_found(gt: CleanCoco) -> None:
    for detections in (_perfect(gt), _perfect(gt, with_crowd=True)):
        metrics = score_detections(gt, detections)
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
            assert metrics.summary[key] == pytest.approx(1.0), key
        assert [c.category_id for c in metrics.per_class] == [CAT, DOG, BIRD]
        for cls in metrics.per_class:
            assert cls.name == NAMES[cls.category_id]
            assert pytest.approx(1.0) == cls.AP
            assert pytest.approx(1.0) == cls.AR100
            assert len(cls.pr_curve) == 101
            assert cls.pr_curve == pytest.approx([1.0] * 101)
            assert cls.best_f1 == pytest.approx(1.0)
            assert cls.best_f1_threshold == 1.0
        assert metrics.num_images == 4
        assert metrics.num_detections == len(detections)


def test_shifted_boxes_score_lower(gt: CleanCoco) -> None:
    perfect = score_detections(gt, _perfect(gt)).summary["AP"]
    shifted = score_detections(gt, _shifted(gt, 0.15)).summary["AP"]
    assert perfect is not None and shifted is not None
    assert 0.0 < shifted < perfect


def test_wrong_category_scores_zero_for_that_class(gt: CleanCoco) -> None:
    metrics = score_detections(gt, _wrong_class(gt))
    assert _class(metrics, DOG).AP == 0.0
    assert _class(metrics, DOG).best_f1_threshold is None
    assert pytest.approx(1.0) == _class(metrics, CAT).AP
    bird = _class(metrics, BIRD).AP  # the dogs called birds are false positives, tied at 1.0
    assert bird is not None and bird < 1.0


@pytest.mark.parametrize("make", [_perfect, _wrong_class, lambda g: _shifted(g, 0.3), _noisy])
def test_summary_equals_classic_pycocotools(gt: CleanCoco, make: Any, tmp_path: Path) -> None:
    detections = make(gt)
    metrics = score_detections(gt, detections)
    expected = _classic_eval(gt, detections, tmp_path)
    for key, want in zip(SUMMARY_KEYS, expected, strict=True):
        got = metrics.summary[key]
        if want is None:
            assert got is None, key
        else:
            assert got == pytest.approx(want, abs=1e-9), key


def test_per_class_equals_single_class_cocoeval(gt: CleanCoco, tmp_path: Path) -> None:
    detections = _noisy(gt, seed=1)
    metrics = score_detections(gt, detections)
    for cat_id in (CAT, DOG, BIRD):
        stats = _classic_eval(gt, detections, tmp_path, cat_ids=[cat_id])
        cls = _class(metrics, cat_id)
        for got, want in (
            (cls.AP, stats[0]),
            (cls.AP50, stats[1]),
            (cls.AP75, stats[2]),
            (cls.AR100, stats[8]),
        ):
            assert got == pytest.approx(want, abs=1e-9)
        assert metrics.value(f"AP/{NAMES[cat_id]}") == cls.AP


def test_none_where_there_is_no_ground_truth() -> None:
    gt = _clean(
        [_image(1, (400, 400), [((0, 0, 200, 200), CAT, False)])], {CAT: "cat", 40: "zebra"}
    )
    metrics = score_detections(gt, _perfect(gt))
    assert metrics.summary["APs"] is None and metrics.summary["ARs"] is None
    assert metrics.summary["APm"] is None and metrics.summary["ARm"] is None
    assert metrics.summary["APl"] == pytest.approx(1.0)
    zebra = _class(metrics, 40)
    for value in (
        zebra.AP,
        zebra.AP50,
        zebra.AP75,
        zebra.AR100,
        zebra.best_f1,
        zebra.best_f1_threshold,
    ):
        assert value is None
    assert zebra.pr_curve == [0.0] * 101
    assert metrics.value("AP/zebra") is None


def test_zero_detections_score_zero(gt: CleanCoco) -> None:
    metrics = score_detections(gt, [])
    assert metrics.num_detections == 0
    assert metrics.summary["AP"] == 0.0
    assert metrics.summary["AR100"] == 0.0
    assert all(c.AP == 0.0 and c.best_f1_threshold is None for c in metrics.per_class)


def test_detection_on_unknown_image_is_an_error(gt: CleanCoco) -> None:
    with pytest.raises(ValueError, match="999"):
        score_detections(
            gt, [Detection(image_id=999, category_id=CAT, bbox=(0, 0, 5, 5), score=0.5)]
        )


def _line_gt(n: int) -> CleanCoco:
    """``n`` separate 50 x 50 cats in one image."""
    return _clean(
        [_image(1, (1000, 100), [((100 * i, 0, 100 * i + 50, 50), CAT, False) for i in range(n)])]
    )


def _det(gt: CleanCoco, index: int | None, score: float) -> Detection:
    """A detection on the ``index``-th true box, or far from every box when ``index`` is None."""
    box = (900.0, 60.0, 30.0, 30.0) if index is None else _xywh(gt.images[0].boxes[index])
    return Detection(image_id=1, category_id=CAT, bbox=box, score=score)


def test_best_f1_threshold_keeps_the_true_positives() -> None:
    gt = _line_gt(2)
    metrics = score_detections(gt, [_det(gt, 0, 0.9), _det(gt, 1, 0.8), _det(gt, None, 0.3)])
    cat = _class(metrics, CAT)
    assert cat.best_f1 == pytest.approx(1.0)
    assert cat.best_f1_threshold == pytest.approx(0.8)


def test_best_f1_threshold_trades_precision_for_recall() -> None:
    # Ranked: TP .9, FP .7, TP .5, FP .3 over 3 cats -> F1 is best at recall 2/3, score 0.5.
    gt = _line_gt(3)
    dets = [_det(gt, 0, 0.9), _det(gt, None, 0.7), _det(gt, 1, 0.5), _det(gt, None, 0.3)]
    cat = _class(score_detections(gt, dets), CAT)
    assert cat.best_f1_threshold == pytest.approx(0.5)
    p, r = 2 / 3, 0.66  # COCO's interpolated precision at the grid recall 0.66
    assert cat.best_f1 == pytest.approx(2 * p * r / (p + r), rel=1e-6)


def test_value_lookup(gt: CleanCoco) -> None:
    metrics = score_detections(gt, _noisy(gt))
    assert metrics.value("AP") == metrics.summary["AP"]
    assert metrics.value("AR100/dog") == _class(metrics, DOG).AR100
    with pytest.raises(KeyError, match="AP50/bird"):
        metrics.value("AP/horse")


def test_table_and_json(gt: CleanCoco) -> None:
    metrics = score_detections(gt, _noisy(gt))
    table = metrics.to_table()
    for name in NAMES.values():
        assert name in table
    ap = metrics.summary["AP"]
    assert ap is not None and f"{100 * ap:.1f}" in table
    dumped = json.loads(metrics.model_dump_json())
    assert dumped["summary"]["AP"] == pytest.approx(ap)
    assert CocoMetrics.model_validate_json(metrics.model_dump_json()) == metrics
    no_small = score_detections(
        _clean([_image(1, (400, 400), [((0, 0, 200, 200), CAT, False)])]), []
    )
    assert "-" in no_small.to_table()
