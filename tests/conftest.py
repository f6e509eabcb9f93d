"""Shared fixtures: one real training run on generated shapes, reused by the tests that need a
trained model (learning, prediction, export, the models API).

Under pytest-xdist each worker is its own session, so a session fixture would be made once per
worker: the two costly ones are made once for the whole run instead (``_once``)."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from filelock import FileLock

from detector.data.shapes import ShapesSpec, make_shapes_splits
from detector.engine.callbacks import JsonlEvents
from detector.engine.distributed import usable_cpus
from detector.engine.trainer import fit
from tests.trained import TrainedRun, shapes_recipe

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, give each worker its share of the cores (and the processes it starts,
    through ``OMP_NUM_THREADS``): workers that each spin up every core run slower together."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, usable_cpus() // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], T]) -> T:
    """``make(folder)``, computed by the first xdist worker that asks and loaded by the others.

    The folder and the pickled value live beside the workers' own temporary roots, so that no
    worker's end of session removes what another still reads. Values must be read-only to the
    tests: every worker shares the one folder.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # a plain run: nothing to share
        return make(factory.mktemp(name))
    root = factory.getbasetemp().parent
    value_file = root / f"{name}.pickle"
    with FileLock(str(root / f"{name}.lock")):
        if value_file.is_file():
            value: T = pickle.loads(value_file.read_bytes())
            return value
        # A fresh folder each time: if the first worker's ``make`` failed, the next one starts
        # clean and fails with the real error, not on a half-made folder.
        value = make(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))
        value_file.write_bytes(pickle.dumps(value))
        return value


def _make_shapes(root: Path) -> Path:
    make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=96, seed=3), splits=[("train", 48), ("val", 16)]
    )
    return root


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _once(tmp_path_factory, "shapes", _make_shapes)


@pytest.fixture(scope="session")
def trained_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The recipe's 20 epochs (120 iterations), evaluated at epochs 10 and 20."""

    def train(workdir: Path) -> TrainedRun:
        cfg = shapes_recipe(shapes, "eval.period_epochs=10")
        result = fit(cfg, workdir, callbacks=[JsonlEvents(path=workdir / "events.jsonl")])
        return TrainedRun(shapes=shapes, workdir=workdir, cfg=cfg, result=result)

    return _once(tmp_path_factory, "trained", train)
