"""ONNX export: parity with PyTorch is checked, and a wrong export is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from detector.engine.checkpoint import BEST
from detector.export import OnnxRunner, check_parity, compare_detections, export_onnx
from detector.model.postprocess import Detections, SelectOptions
from detector.predict import Predictor, read_rgb
from tests.trained import TrainedRun

pytestmark = pytest.mark.slow


def test_onnx_export_agrees_with_pytorch_and_a_tampered_one_is_refused(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    predictor = Predictor.load(trained_run.workdir / "checkpoints" / BEST, device="cpu")
    images = [read_rgb(p) for p in sorted((trained_run.shapes / "images").glob("val_*.png"))[:3]]
    out = tmp_path / "model.onnx"
    export = export_onnx(predictor, out, sample_images=images)
    assert out.is_file() and export.input_size == (96, 96)
    report = export.report
    assert report.ok and report.torch_detections > 0, report.summary
    assert report.max_box_diff_px <= 0.5 and report.max_score_diff <= 1e-3
    runner = OnnxRunner(out)
    assert [c["name"] for c in runner.metadata["classes"]] == ["circle", "square", "triangle"]
    assert runner.metadata["input_size"] == [96, 96]

    # Alter one convolution of the classification head: the check must catch it.
    model = onnx.load(str(out))
    init = max(
        (i for i in model.graph.initializer if "cls_logits" in i.name and i.dims[0] > 1),
        key=lambda i: int(np.prod(i.dims)),
    )
    weights = numpy_helper.to_array(init).copy()
    weights *= 1.5
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    bad = check_parity(predictor, tampered, images)
    assert not bad.ok and "DISAGREE" in bad.summary


def test_export_refuses_what_it_cannot_check(trained_run: TrainedRun, tmp_path: Path) -> None:
    predictor = Predictor.load(trained_run.workdir / "checkpoints" / BEST, device="cpu")
    with pytest.raises(ValueError, match="at least one sample image"):
        export_onnx(predictor, tmp_path / "m.onnx", sample_images=[])
    image = read_rgb(next((trained_run.shapes / "images").glob("val_*.png")))
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(predictor, tmp_path / "m.onnx", sample_images=[image], input_size=(100, 96))
    assert not (tmp_path / "m.onnx").exists()


def _detections(*rows: tuple[float, int, float]) -> Detections:
    """(x offset, label, score) rows: 10-px boxes along a line."""
    return Detections(
        boxes=torch.tensor([[x, 0.0, x + 10.0, 10.0] for x, _, _ in rows]),
        labels=torch.tensor([label for _, label, _ in rows]),
        scores=torch.tensor([score for _, _, score in rows]),
    )


def test_only_detections_at_the_edge_of_what_is_kept_may_go_unmatched() -> None:
    options = SelectOptions(score_threshold=0.05, max_detections=3)
    torch_side = _detections((0, 0, 0.9), (20, 1, 0.6), (40, 2, 0.0502))
    onnx_side = _detections((0.1, 0, 0.9001), (20, 1, 0.6))  # 0.0502 fell under 0.05 here
    near = compare_detections(torch_side, onnx_side, options=options)
    assert (near.matched, near.borderline) == (2, 1)
    assert near.box_diff == pytest.approx(0.1, rel=1e-4) and near.score_diff == pytest.approx(
        1e-4, rel=1e-2
    )
    # A confident detection only one runtime finds is a real disagreement.
    missing = compare_detections(torch_side, _detections((0, 0, 0.9)), options=options)
    assert (missing.matched, missing.borderline) == (1, 1)  # 0.6 is not at any edge
    # At the cap, the last place goes to either of two near-equal scores.
    capped = _detections((0, 0, 0.9), (20, 1, 0.6), (40, 2, 0.3))
    swapped = _detections((0, 0, 0.9), (20, 1, 0.6), (60, 0, 0.2995))
    cut = compare_detections(capped, swapped, options=options)
    assert (cut.matched, cut.borderline) == (2, 2)
