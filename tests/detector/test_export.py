"""ONNX export: parity with PyTorch is checked, and a wrong export is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from detector.engine.checkpoint import BEST
from detector.export import OnnxRunner, check_parity, export_onnx
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
    assert report.ok and report.torch_detections > 0, report.summary()
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
    assert not bad.ok and "DISAGREE" in bad.summary()


def test_export_refuses_what_it_cannot_check(trained_run: TrainedRun, tmp_path: Path) -> None:
    predictor = Predictor.load(trained_run.workdir / "checkpoints" / BEST, device="cpu")
    with pytest.raises(ValueError, match="at least one sample image"):
        export_onnx(predictor, tmp_path / "m.onnx", sample_images=[])
    image = read_rgb(next((trained_run.shapes / "images").glob("val_*.png")))
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(predictor, tmp_path / "m.onnx", sample_images=[image], input_size=(100, 96))
    assert not (tmp_path / "m.onnx").exists()
