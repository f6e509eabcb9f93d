"""Anchor fit: the best possible recall per class, and a fix when it is low."""

from __future__ import annotations

from pathlib import Path

from detector.config import DataConfig, ModelConfig
from detector.data.shapes import ShapesSpec, make_shapes
from detector.data.validate import CleanCoco, load_coco
from detector.model.anchor_fit import WARN_BELOW, anchor_fit

DATA = DataConfig(train_min_sizes=(128,), eval_min_size=128, max_size=128)


def _coco(tmp_path: Path, *, lo: float, hi: float) -> CleanCoco:
    spec = ShapesSpec(num_images=12, size_px=128, seed=0, min_object_frac=lo, max_object_frac=hi)
    return load_coco(make_shapes(tmp_path, spec), tmp_path / "images")


def test_matching_anchors_fit_every_class(tmp_path: Path) -> None:
    fit = anchor_fit(
        _coco(tmp_path, lo=0.2, hi=0.4), ModelConfig(anchor_sizes=(16, 32, 64, 128, 256)), DATA
    )
    assert not fit.weak() and fit.suggested_sizes is None
    assert all(c.recall is not None and c.recall >= WARN_BELOW for c in fit.classes if c.num_boxes)
    assert "LOW" not in fit.to_text()


def test_small_objects_under_the_smallest_anchor_are_flagged_with_a_fix(tmp_path: Path) -> None:
    coco = _coco(tmp_path, lo=0.12, hi=0.16)  # 15-20 px objects, smallest anchor 32 px
    fit = anchor_fit(coco, ModelConfig(), DATA)
    assert fit.weak() and all(c.recall is not None and c.recall < 0.5 for c in fit.weak())
    assert fit.suggested_sizes is not None and fit.suggested_sizes[0] < 32
    fixed = anchor_fit(coco, ModelConfig(anchor_sizes=fit.suggested_sizes), DATA)
    assert not fixed.weak()
    text = fit.to_text()
    assert "LOW" in text and "model.anchor_sizes=[" in text


def test_objects_too_small_for_the_stride_get_no_false_fix(tmp_path: Path) -> None:
    # 6-8 px objects sit between P3 anchor centres 8 px apart: no anchor size reaches IoU 0.5.
    fit = anchor_fit(_coco(tmp_path, lo=0.05, hi=0.06), ModelConfig(), DATA)
    assert fit.weak() and fit.suggested_sizes is None
    assert "larger image size" in fit.to_text()
