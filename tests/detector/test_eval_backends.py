"""faster-coco-eval against pycocotools: the same metrics, to 1e-9, on awkward generated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.data.validate import Category, CleanCoco, ImageRecord, ValidationReport
from detector.evaluate.backends import EVAL_BACKENDS, run_cocoeval
from detector.evaluate.coco import CLASS_KEYS, SUMMARY_KEYS, CocoMetrics, Detection, coco_dict
from detector.evaluate.coco import score_detections as score
from detector.recipe import load_recipe

TOL = 1e-9
CATEGORIES = {1: "a", 2: "b", 5: "c", 7: "never_annotated", 9: "only_crowd"}


def _gt(seed: int = 0) -> CleanCoco:
    """30 images: random boxes of every size (some exactly on the 32² / 96² area borders),
    crowd boxes, negatives; category 7 has no box, category 9 only crowd boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for image_id in range(1, 31):
        boxes: list[tuple[float, float, float, float]] = []
        cats: list[int] = []
        crowd: list[bool] = []
        if image_id % 7 != 0:  # every 7th image is a negative
            for _ in range(int(rng.integers(1, 9))):
                w, h = (float(v) for v in rng.uniform(3, 250, 2))
                x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h))
                boxes.append((x, y, x + w, y + h))
                cats.append(int(rng.choice([1, 2, 5])))
                crowd.append(bool(rng.random() < 0.1))
            boxes += [(10.0, 10.0, 42.0, 42.0), (100.0, 100.0, 196.0, 196.0)]  # 32², 96² px
            cats += [1, 2]
            crowd += [False, False]
        if image_id % 5 == 0:
            boxes.append((300.0, 200.0, 500.0, 400.0))
            cats.append(9)
            crowd.append(True)
        images.append(
            ImageRecord(
                id=image_id * 3,  # not 1..N
                file_name=f"{image_id}.jpg",
                path=Path("/nonexistent") / f"{image_id}.jpg",
                width=640,
                height=480,
                boxes=tuple(boxes),
                category_ids=tuple(cats),
                crowd=tuple(crowd),
            )
        )
    report = ValidationReport(annotations_path=Path("gt.json"), image_dir=Path(), strict=False)
    categories = tuple(Category(id=i, name=n) for i, n in CATEGORIES.items())
    return CleanCoco(categories=categories, images=tuple(images), report=report)


def _detections(gt: CleanCoco, seed: int = 1) -> list[Detection]:
    """Jittered true boxes (twice, sometimes the wrong class), false positives of every
    category, scores rounded to 2 decimals so that ties happen; images 4 and 8 get none;
    one image gets 150 (past maxDets 100)."""
    rng = np.random.default_rng(seed)
    out: list[Detection] = []
    for n, img in enumerate(gt.images, start=1):
        if n in (4, 8):
            continue
        for box, cat in zip(img.boxes, img.category_ids, strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            for _ in range(2):
                j = rng.normal(0, 0.12, 4) * np.array([w, h, w, h])
                label = cat if rng.random() < 0.85 else int(rng.choice(list(CATEGORIES)))
                bbox = (box[0] + j[0], box[1] + j[1], max(1.0, w + j[2]), max(1.0, h + j[3]))
                out.append(_det(img.id, label, bbox, rng))
        for _ in range(150 if n == 2 else int(rng.integers(0, 6))):
            w, h = (float(v) for v in rng.uniform(2, 200, 2))
            bbox = (float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), w, h)
            out.append(_det(img.id, int(rng.choice(list(CATEGORIES))), bbox, rng))
    return out


def _det(image_id: int, cat: int, bbox: tuple[float, ...], rng: np.random.Generator) -> Detection:
    x, y, w, h = (float(v) for v in bbox)
    score = round(float(rng.uniform(0.01, 1.0)), 2)
    return Detection(image_id=image_id, category_id=cat, bbox=(x, y, w, h), score=score)


def _assert_close(a: float | None, b: float | None, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None and b is not None:
        assert abs(a - b) <= TOL, f"{what}: {a} vs {b}"


def _assert_same(ref: CocoMetrics, ours: CocoMetrics) -> None:
    for key in SUMMARY_KEYS:
        _assert_close(ref.summary[key], ours.summary[key], key)
    assert [c.category_id for c in ref.per_class] == [c.category_id for c in ours.per_class]
    for r, o in zip(ref.per_class, ours.per_class, strict=True):
        for key in (*CLASS_KEYS, "best_f1", "best_f1_threshold"):
            _assert_close(getattr(r, key), getattr(o, key), f"{key}/{r.name}")
        np.testing.assert_allclose(o.pr_curve, r.pr_curve, rtol=0, atol=TOL, err_msg=r.name)
    assert (ref.num_images, ref.num_detections) == (ours.num_images, ours.num_detections)


def test_the_raw_arrays_agree_to_1e_9() -> None:
    gt = _gt()
    dets = [
        {
            "image_id": d.image_id,
            "category_id": d.category_id,
            "bbox": list(d.bbox),
            "score": d.score,
        }
        for d in _detections(gt)
    ]
    ids = [img.id for img in gt.images]
    ref, ours = (
        run_cocoeval(coco_dict(gt), [dict(d) for d in dets], ids, backend=b) for b in EVAL_BACKENDS
    )
    assert ref.cat_ids == ours.cat_ids == sorted(CATEGORIES)
    for name in ("stats", "precision", "recall", "scores", "iou_thrs", "rec_thrs"):
        a, b = getattr(ref, name), getattr(ours, name)
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=0, atol=TOL, err_msg=name)
    # The data exercise what they are meant to: defined and undefined slices, real scores.
    assert (ref.recall == -1).any() and (ref.recall > 0).any()
    assert 0 < ref.stats[0] < 1


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_agree_between_backends(seed: int) -> None:
    gt = _gt(seed)
    dets = _detections(gt, seed + 10)
    ref = score(gt, dets, backend="pycocotools")
    ours = score(gt, dets, backend="faster_coco_eval")
    _assert_same(ref, ours)
    never = next(c for c in ours.per_class if c.name == "never_annotated")
    assert never.AP is None and never.best_f1_threshold is None
    assert any(c.best_f1_threshold is not None for c in ours.per_class)


def test_no_detections_at_all_agree() -> None:
    gt = _gt()
    ref, ours = score(gt, [], backend="pycocotools"), score(gt, [], backend="faster_coco_eval")
    _assert_same(ref, ours)
    assert ours.summary["AP"] == 0.0


def test_the_default_backend_is_faster_coco_eval_and_pycocotools_can_be_chosen() -> None:
    recipe = Path(__file__).parents[2] / "configs" / "shapes_tiny.yaml"
    assert load_recipe(recipe).eval.backend == "faster_coco_eval"
    assert load_recipe(recipe, ["eval.backend=pycocotools"]).eval.backend == "pycocotools"
    with pytest.raises(ValueError, match=r"eval\.backend"):
        load_recipe(recipe, ["eval.backend=cocoapi"])
