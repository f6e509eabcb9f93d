"""Helpers for the shared training run (the fixtures are in ``conftest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.config import TrainConfig
from detector.engine.trainer import FitResult
from detector.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class TrainedRun:
    shapes: Path
    """A generated COCO folder: annotations/instances_{train,val}.json and images/."""
    workdir: Path
    """The run's folder: checkpoints/{last,best}.pt and events.jsonl."""
    cfg: TrainConfig
    result: FitResult


def shapes_recipe(shapes: Path, *overrides: str) -> TrainConfig:
    """``shapes_tiny`` on ``shapes`` at 96 px."""
    data = [
        f"data.train.annotations={shapes / 'annotations/instances_train.json'}",
        f"data.train.images={shapes / 'images'}",
        f"data.val.annotations={shapes / 'annotations/instances_val.json'}",
        f"data.val.images={shapes / 'images'}",
        "data.train_min_sizes=[96]",
        "data.eval_min_size=96",
        "data.max_size=96",
    ]
    return load_recipe(CONFIGS / "shapes_tiny.yaml", [*data, *overrides])
