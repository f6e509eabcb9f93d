"""Shared fixtures: one real training run on generated shapes, reused by the tests that need a
trained model (learning, prediction, export, the models API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.data.shapes import ShapesSpec, make_shapes_splits
from detector.engine.callbacks import JsonlEvents
from detector.engine.trainer import fit
from tests.trained import TrainedRun, shapes_recipe


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=96, seed=3), splits=[("train", 48), ("val", 16)]
    )
    return root


@pytest.fixture(scope="session")
def trained_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The recipe's 20 epochs (120 iterations), evaluated at epochs 10 and 20."""
    workdir = tmp_path_factory.mktemp("trained")
    cfg = shapes_recipe(shapes, "eval.period_epochs=10")
    result = fit(cfg, workdir, callbacks=[JsonlEvents(path=workdir / "events.jsonl")])
    return TrainedRun(shapes=shapes, workdir=workdir, cfg=cfg, result=result)
