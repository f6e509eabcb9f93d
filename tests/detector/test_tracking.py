"""Experiment tracking, read back with the trackers' own readers: TensorBoard's
``EventAccumulator`` and MLflow's ``MlflowClient``, after real training on shapes."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.engine.callbacks import Callback, EpochEvent, Trainer
from detector.engine.tracking_history import epoch_scalars, read_history
from detector.engine.tracking_mlflow import MlflowSender, flatten, run_file
from detector.engine.tracking_tensorboard import tensorboard_dir
from detector.engine.trainer import fit
from detector.final import finalize
from detector.plots import CURVES_SIZE_PX, PR_SIZE_PX, write_plots
from tests.trained import TrainedRun, shapes_recipe

pytestmark = pytest.mark.slow

TINY = ("solver.epochs=2", "solver.steps=[]", "solver.batch_size=24", "solver.warmup_iters=1")
"""Two epochs of two iterations, each evaluated: seconds on 2 cores."""


def _accumulator(workdir: Path) -> EventAccumulator:
    events = EventAccumulator(
        str(tensorboard_dir(workdir)), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    return events


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensorboard_scalars_are_the_runs_numbers(trained_run: TrainedRun) -> None:
    events = _accumulator(trained_run.workdir)
    steps = [e for e in _jsonl(trained_run.workdir / "events.jsonl") if e["type"] == "step"]
    assert len(steps) == 120
    for name in ("train/classification", "train/bbox_regression", "train/lr"):
        logged = {s.step: s.value for s in events.Scalars(name)}
        key = name.removeprefix("train/")
        ours = {int(e["iteration"]): (e["lr"] if key == "lr" else e["losses"][key]) for e in steps}
        assert logged.keys() == ours.keys()
        assert list(logged.values()) == pytest.approx(list(ours.values()), rel=1e-6)
    history = read_history(trained_run.workdir)
    assert [r.epoch for r in history] == list(range(1, 21))
    evaluated = [r for r in history if r.metrics is not None]
    assert [r.epoch for r in evaluated] == [10, 20]
    assert evaluated[-1].metrics == trained_run.result.metrics
    for record in history:
        for name, value in epoch_scalars(record).items():
            if name.startswith(("val/", "coco/", "class/")):
                at_step = {s.step: s.value for s in events.Scalars(name)}
                assert at_step[record.iteration] == pytest.approx(value, rel=1e-6), name
    assert {f"coco/{k}" for k in ("AP", "AP50", "AR100")} <= set(events.Tags()["scalars"])
    assert "class/AP/circle" in events.Tags()["scalars"]
    # Per evaluation: the PR curves and tracking.images validation images, as PNGs.
    images = events.Tags()["images"]
    assert sorted(images) == ["pr_curves", *(f"val_images/{i}" for i in range(4))]
    shot = events.Images("val_images/0")
    assert [s.step for s in shot] == [r.iteration for r in evaluated]
    assert (shot[0].width, shot[0].height) == (2 * 96, 96)  # truth | predictions
    assert "recipe/text_summary" in events.Tags()["tensors"]


def test_plots_are_pngs_of_the_expected_size(trained_run: TrainedRun, tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_bytes((trained_run.workdir / "metrics.jsonl").read_bytes())
    written = write_plots(tmp_path)
    assert [p.name for p in written] == ["curves.png", "pr_curves.png"]
    for path, size in zip(written, (CURVES_SIZE_PX, PR_SIZE_PX), strict=True):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
    assert write_plots(tmp_path / "nothing") == []


def test_mlflow_run_holds_params_metrics_artifacts_tags_and_off_switch(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file store (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE for it); TensorBoard switched off."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    cfg = shapes_recipe(
        shapes,
        *TINY,
        "tracking.tensorboard=false",
        f"tracking.mlflow_uri={uri}",
        "tracking.run_name=job-1",
        "tracking.tags={job_id: job-1, train_dataset_id: ds-9}",
    )
    workdir = tmp_path / "run"
    fit(cfg, workdir)
    final = finalize(cfg, workdir)
    assert not tensorboard_dir(workdir).exists()  # the switch: no event file at all
    assert [p.name for p in final.plots] == ["curves.png", "pr_curves.png"]

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads(run_file(workdir).read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "job-1"
    assert {"job_id": "job-1", "train_dataset_id": "ds-9"}.items() <= run.data.tags.items()
    assert run.data.params == flatten(cfg.model_dump(mode="json"))
    history = read_history(workdir)
    assert [r.epoch for r in history] == [1, 2] and history[-1].metrics is not None
    for name in ("train/loss", "train/lr", "val/loss", "coco/AP", "coco/AP50", "class/AP/circle"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        assert logged == [(r.epoch, epoch_scalars(r)[name]) for r in history], name
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == [
        "plots/curves.png",
        "plots/pr_curves.png",
    ]
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/best.pt"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock(Callback):
    """When each epoch ended and when the run ended (after the tracking callbacks' hooks,
    which the trainer runs before the caller's)."""

    def __init__(self) -> None:
        self.epoch_ends: list[float] = []
        self.fit_end = 0.0

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        self.epoch_ends.append(time.monotonic())

    def on_fit_end(self, trainer: Trainer) -> None:
        self.fit_end = time.monotonic()


def test_mlflow_down_never_stalls_training(
    shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow's own HTTP retries take minutes on a refused connection (2 + 4 + ... + 64 s);
    the run never waits for them: only ``mlflow_wait_s`` at the end of fit and of finalize,
    and it says what it dropped. (Wall-clock bounds are loose: CI machines are busy.)"""
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = shapes_recipe(shapes, *TINY, f"tracking.mlflow_uri={uri}", "tracking.mlflow_wait_s=1")
    workdir = tmp_path / "run"
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="detector.engine.tracking_mlflow"):
        result = fit(cfg, workdir, callbacks=[clock])
        finalizing = time.monotonic()
        final = finalize(cfg, workdir)
        finalized = time.monotonic()
    assert result.iterations == 4 and final.checkpoint.exists() and len(final.plots) == 2
    assert not run_file(workdir).exists()
    dropped = [r for r in caplog.records if "still queued" in r.getMessage()]
    assert len(dropped) == 2  # at the end of fit, at the end of finalize
    assert clock.fit_end - clock.epoch_ends[-1] < 30
    assert finalized - finalizing < 60


def test_a_failing_call_is_logged_and_retried(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, so we retry
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = shapes_recipe(shapes, f"tracking.mlflow_uri={uri}")
    with caplog.at_level(logging.WARNING, logger="detector.engine.tracking_mlflow"):
        sender = MlflowSender(cfg=cfg, workdir=tmp_path, params={"a": "1"})
        sender.send("open", lambda client, run_id: None)
        assert sender.close(wait_s=60)  # 4 tries with 1 + 2 + 4 s between them, then dropped
    messages = [r.getMessage() for r in caplog.records]
    assert sum("open the run failed" in m for m in messages) == 4
    assert any("retrying in 2 s" in m for m in messages)
    assert any("no run, dropped: open" in m for m in messages)
