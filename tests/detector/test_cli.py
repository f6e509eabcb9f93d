"""The ``retinanet`` command, run as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "detector.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_shapes")
    _run("make-shapes", root, "--images", "24", "--val-images", "8", "--size", "96", "--seed", "1")
    return root


def test_make_shapes_then_validate_ok(shapes: Path) -> None:
    ann = shapes / "annotations" / "instances_train.json"
    assert len(json.loads(ann.read_text())["images"]) == 24
    proc = _run("validate", ann, shapes / "images")
    assert ": OK:" in proc.stdout and "errors 0" in proc.stdout
    report = json.loads(_run("validate", ann, shapes / "images", "--json").stdout)
    assert report["num_images"] == 24 and report["num_boxes"] > 0


def test_validate_exits_non_zero_on_errors_and_names_them(shapes: Path, tmp_path: Path) -> None:
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    data["images"][0]["file_name"] = "missing.png"
    data["images"].append(dict(data["images"][1]))  # duplicate id
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    proc = _run("validate", bad, shapes / "images", check=False)
    assert proc.returncode == 1
    assert (
        "FAILED" in proc.stdout
        and "missing_image" in proc.stdout
        and "duplicate_image_id" in proc.stdout
    )


def test_bad_paths_and_recipes_are_one_clear_line(shapes: Path, tmp_path: Path) -> None:
    proc = _run("validate", tmp_path / "nope.json", shapes / "images", check=False)
    assert proc.returncode == 1 and "annotations file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("recipe", CONFIGS / "shapes_tiny.yaml", "--set", "loss.gama=1", check=False)
    assert proc.returncode == 2 and "loss.gama: unknown key (allowed:" in proc.stderr
    ann = shapes / "annotations" / "instances_train.json"
    args: list[str | Path] = ["--data-train", ann, shapes / "images", "--out", tmp_path / "run"]
    proc = _run(
        "train", CONFIGS / "shapes_tiny.yaml", *args, "--set", "model.backbone=vgg", check=False
    )
    assert proc.returncode == 2 and "model.backbone" in proc.stderr and "resnet18" in proc.stderr


@pytest.mark.slow
def test_train_eval_predict(shapes: Path, tmp_path: Path) -> None:
    ann = shapes / "annotations" / "instances_train.json"
    val = shapes / "annotations" / "instances_val.json"
    images = shapes / "images"
    out = tmp_path / "run"
    sizes = [
        "--set",
        "data.train_min_sizes=[96]",
        "--set",
        "data.eval_min_size=96",
        "--set",
        "data.max_size=96",
    ]
    budget: list[str | Path] = ["--set", "solver.epochs=2", "--set", "solver.steps=[1]", *sizes]
    train: list[str | Path] = [
        "train",
        CONFIGS / "shapes_tiny.yaml",
        "--data-train",
        ann,
        images,
        "--out",
        out,
    ]
    proc = _run(*train, "--data-val", val, images, "--data-test", val, images, *budget)
    assert "trained 6 iterations (2 epochs)" in proc.stdout
    assert "anchor fit" in proc.stderr and "test (best.pt)" in proc.stdout
    test_metrics = json.loads((out / "metrics_test.json").read_text())
    assert len(test_metrics["summary"]) == 12 and len(test_metrics["per_class"]) == 3

    evaluated = json.loads(
        _run("eval", out / "checkpoints" / "best.pt", "--data", val, images, "--json").stdout
    )
    assert evaluated["summary"] == test_metrics["summary"]

    image = images / json.loads(val.read_text())["images"][0]["file_name"]
    drawn = tmp_path / "drawn"
    proc = _run(
        "predict",
        out / "checkpoints" / "best.pt",
        image,
        "--score-threshold",
        "0.0",
        "--draw",
        drawn,
    )
    (result,) = json.loads(proc.stdout)
    assert result["image"] == str(image)
    for det in result["detections"]:
        assert det["category_name"] in {"circle", "square", "triangle"} and len(det["bbox"]) == 4
        assert 0.0 <= det["score"] <= 1.0
    assert (drawn / f"{image.stem}.png").stat().st_size > 0

    # The model file predicts as the checkpoint it was exported from.
    model_file = tmp_path / "model.safetensors"
    _run("export", out / "checkpoints" / "best.pt", "--format", "safetensors", "--out", model_file)
    again = _run("predict", model_file, image, "--score-threshold", "0.0")
    assert json.loads(again.stdout)[0]["detections"] == result["detections"]
    proc = _run("export", model_file, "--format", "onnx", "--out", tmp_path / "m.onnx", check=False)
    assert proc.returncode == 1 and "--images" in proc.stderr
    proc = _run("predict", model_file, image, "--classes", "9", check=False)
    assert proc.returncode == 1 and "unknown class ids [9]" in proc.stderr

    proc = _run("predict", out / "checkpoints" / "best.pt", tmp_path / "missing.png", check=False)
    assert proc.returncode == 1 and "image not found" in proc.stderr

    # Resuming a finished run trains nothing more and ends the same.
    proc = _run(*train, "--resume", *budget)
    assert "trained 6 iterations (2 epochs)" in proc.stdout
