"""The training engine, for real on generated shapes: learning, exact resume, halts, stopping."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.config import TrainConfig
from detector.data.coco import CocoDetection
from detector.data.transforms import build_transforms
from detector.device import SlowPrecisionWarning, native_bf16
from detector.engine.callbacks import (
    Callback,
    StepEvent,
    StopOnSignal,
    Trainer,
    start_payload,
)
from detector.engine.checkpoint import BEST, LAST, load_checkpoint
from detector.engine.trainer import NonFiniteLossError, fit
from detector.engine.trainer import Trainer as TrainingLoop
from detector.evaluate.runner import evaluate
from detector.model.build import build_model
from detector.predict import Predictor
from tests.trained import TrainedRun, shapes_recipe

_recipe = shapes_recipe


class StopAt(Callback):
    """Simulates a crash right after iteration ``n`` (and its checkpoint, if one was due)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        if event.iteration == self.n:
            raise KeyboardInterrupt


class SignalAt(Callback):
    """Sends this process a real SIGTERM during iteration ``n``'s callbacks (a preemption)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        if event.iteration == self.n:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_training_learns_far_beyond_an_untrained_model(trained_run: TrainedRun) -> None:
    cfg, result, workdir = trained_run.cfg, trained_run.result, trained_run.workdir
    assert result.metrics is not None and result.iterations == 120
    torch.manual_seed(0)
    untrained = build_model(cfg.model, cfg.loss, num_classes=3)
    predictor = Predictor.load(workdir / "checkpoints" / LAST)
    assert cfg.data.val is not None
    baseline = evaluate(untrained, _val_set(cfg), device=torch.device("cpu"), batch_size=8).value(
        "AP50"
    )
    trained = result.metrics.value("AP50")
    assert baseline is not None and trained is not None
    assert baseline < 0.02, baseline
    assert trained > 0.15, result.metrics.to_table()
    # Checkpoints and events are there, and the predictor scores the same as the loop did.
    assert (workdir / "checkpoints" / BEST).exists()
    again = predictor.evaluate(cfg.data.val.annotations, cfg.data.val.images)
    assert again.value("AP50") == pytest.approx(trained, abs=1e-9)
    events = (workdir / "events.jsonl").read_text().splitlines()
    assert sum('"type": "step"' in e for e in events) == 120 and '"type": "end"' in events[-1]


def _val_set(cfg: TrainConfig) -> CocoDetection:
    assert cfg.data.val is not None
    return CocoDetection.from_files(
        cfg.data.val.annotations,
        cfg.data.val.images,
        transforms=build_transforms(cfg.data, train=False),
    )


@pytest.mark.slow
@pytest.mark.parametrize("killed_at", [6, 12])
def test_a_run_killed_after_an_epochs_last_step_still_ends_that_epoch(
    shapes: Path, tmp_path: Path, killed_at: int
) -> None:
    """A periodic ``last.pt`` saved at an epoch's last step, then a crash before the epoch's
    end: the resumed run validates and reports that epoch (mid-run, and the run's last) with
    the train-loss means of all its steps, exactly as the uninterrupted run does."""
    overrides = ("solver.epochs=2", "solver.steps=[1]", "checkpoint_period_iters=6")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    fit(_recipe(shapes, *overrides), whole)
    with pytest.raises(KeyboardInterrupt):
        fit(_recipe(shapes, *overrides), parts, callbacks=[StopAt(killed_at)])  # 6 per epoch
    saved = load_checkpoint(parts / "checkpoints" / LAST)
    assert (saved["state"]["iteration"], saved["state"]["batch_in_epoch"]) == (killed_at, 6)
    assert saved["step_event"]["iteration"] == killed_at  # the progress a resume can report
    result = fit(_recipe(shapes, *overrides), parts, resume=True)
    assert result.metrics is not None and (result.iterations, result.epochs) == (12, 2)

    def history(workdir: Path) -> list[tuple[int, dict[str, float], float]]:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        return [(r["epoch"], r["train_losses"], r["metrics"]["summary"]["AP"]) for r in rows]

    assert history(parts) == history(whole) and [e for e, _, _ in history(whole)] == [1, 2]


@pytest.mark.slow
def test_resume_is_exact(shapes: Path, tmp_path: Path) -> None:
    """Interrupted mid-epoch and resumed, a run ends with bit-identical weights and weight
    average (``solver.ema_decay``; without it, exact resume is the two-process test's)."""
    overrides = (
        "solver.epochs=2",
        "solver.steps=[1]",
        "solver.warmup_iters=4",
        "checkpoint_period_iters=4",
        "data.photometric=true",
        "loss.weighting=uncertainty",
        "solver.ema_decay=0.9",
        "solver.ema_ramp_iters=2",
    )
    whole = tmp_path / "whole"
    result = fit(_recipe(shapes, *overrides), whole)
    parts = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        fit(_recipe(shapes, *overrides), parts, callbacks=[StopAt(4)])  # mid epoch 1 of 6 batches
    assert load_checkpoint(parts / "checkpoints" / LAST)["state"]["iteration"] == 4
    # In epoch 2, a SIGTERM: the run stops after that step and saves it (no periodic save due).
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stopper:
        stopped = fit(
            _recipe(shapes, *overrides), parts, callbacks=[SignalAt(7), stopper], resume=True
        )
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the caller's again
    assert (stopped.iterations, stopped.stop_reason) == (7, "stopped by SIGTERM")
    assert load_checkpoint(parts / "checkpoints" / LAST)["state"]["iteration"] == 7
    fit(_recipe(shapes, *overrides), parts, resume=True)
    a = load_checkpoint(whole / "checkpoints" / LAST)
    b = load_checkpoint(parts / "checkpoints" / LAST)
    assert a["state"] == b["state"] and a["state"]["iteration"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["scheduler"] == b["scheduler"]
    assert a["ema"]["updates"] == b["ema"]["updates"] == 12
    for name, tensor in a["ema"]["trained"].items():
        assert torch.equal(tensor, b["ema"]["trained"][name]), name
    # The average is what was validated and what a checkpoint's reader gets.
    trained, averaged = a["ema"]["trained"], a["model"]
    assert any(not torch.equal(trained[k], averaged[k]) for k in averaged)
    cfg = _recipe(shapes, *overrides)
    assert cfg.data.val is not None and result.metrics is not None
    shipped = Predictor.load(whole / "checkpoints" / LAST)
    again = shipped.evaluate(cfg.data.val.annotations, cfg.data.val.images)
    assert again.value("AP") == pytest.approx(result.metrics.value("AP"), abs=1e-9)


@pytest.mark.slow
class WorkerProcesses(Callback):
    """The child processes alive at each epoch's end, beyond those alive at the start."""

    def __init__(self) -> None:
        self.before = {p.pid for p in multiprocessing.active_children()}
        self.seen: list[set[int | None]] = []

    def on_epoch_end(self, trainer: Trainer, event: Any) -> None:
        self.seen.append({p.pid for p in multiprocessing.active_children()} - self.before)


def test_loader_workers_serve_every_epoch_and_augment_as_one_process_does(
    shapes: Path, tmp_path: Path
) -> None:
    """The epoch reaches long-lived workers with every sample, so 2 workers over 2 epochs of
    random augmentation train exactly what the training process alone trains."""
    overrides = ("solver.epochs=2", "solver.steps=[]", "data.photometric=true")
    workers = WorkerProcesses()
    fit(_recipe(shapes, *overrides, "data.num_workers=2"), tmp_path / "w", callbacks=[workers])
    first, second = workers.seen
    assert len(first) == 2 and second == first  # the same two processes in both epochs
    assert not {p.pid for p in multiprocessing.active_children()} & first  # gone with the run
    fit(_recipe(shapes, *overrides, "data.num_workers=0"), tmp_path / "main")
    a = load_checkpoint(tmp_path / "w" / "checkpoints" / LAST)["model"]
    b = load_checkpoint(tmp_path / "main" / "checkpoints" / LAST)["model"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_non_finite_loss_halts_and_keeps_the_last_good_checkpoint(
    shapes: Path, tmp_path: Path
) -> None:
    cfg = _recipe(
        shapes,
        "solver.optimizer=sgd",
        "solver.lr=1e6",
        "solver.warmup_iters=0",
        "solver.clip_grad_norm=null",
        "checkpoint_period_iters=1",
    )
    with pytest.raises(NonFiniteLossError, match=r"at iteration (\d+) \(epoch 1\)") as err:
        fit(cfg, tmp_path)
    failed_at = int(err.value.args[0].split("iteration ")[1].split(" ")[0])
    ckpt = load_checkpoint(tmp_path / "checkpoints" / LAST)
    assert ckpt["state"]["iteration"] == failed_at - 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


@pytest.mark.slow
def test_early_stopping_fires(shapes: Path, tmp_path: Path) -> None:
    # A learning rate too small to change anything: AP cannot improve, patience runs out.
    cfg = _recipe(
        shapes,
        "solver.lr=1e-12",
        "solver.epochs=6",
        "solver.steps=[]",
        "early_stopping.metric=AP50/circle",
        "early_stopping.patience=2",
    )
    result = fit(cfg, tmp_path)
    assert result.stop_reason is not None and "AP50/circle" in result.stop_reason
    assert result.epochs == 3 and result.iterations == 18


class Numerics(Callback):
    """Records each step's summed loss and the dtypes and layouts the first conv computes in."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: set[torch.dtype] = set()
        self.channels_last: set[bool] = set()
        self.start: dict[str, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        assert isinstance(trainer, TrainingLoop)
        self.start = start_payload(trainer)
        conv = trainer.model.backbone.body.conv1

        def record(module: torch.nn.Module, _: object, out: torch.Tensor) -> None:
            self.dtypes.add(out.dtype)
            self.channels_last.add(out.is_contiguous(memory_format=torch.channels_last))

        conv.register_forward_hook(record)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        self.losses.append(sum(event.losses.values()))


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_on_the_cpu_train_as_fp32_does(
    shapes: Path, tmp_path: Path
) -> None:
    """``solver.amp=bf16`` runs the network in bf16 on the CPU (the 4x of
    bench/cpu_train_step.py on AMX CPUs), and the run follows the fp32 run's loss curve; on a
    CPU that only emulates bf16 (AVX2) it says that it will be slow."""
    budget = (
        "solver.epochs=4",
        "solver.steps=[3]",
        "solver.warmup_iters=4",
        "eval.period_epochs=4",
    )
    runs, slow = {}, {}
    for name, numerics in {
        "fp32": (),
        "bf16": ("solver.amp=bf16", "solver.channels_last=true"),
    }.items():
        runs[name] = Numerics()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(_recipe(shapes, *budget, *numerics), tmp_path / name, callbacks=[runs[name]])
        slow[name] = any(issubclass(w.category, SlowPrecisionWarning) for w in caught)
    assert slow == {"fp32": False, "bf16": not native_bf16(torch.device("cpu"))}
    for name, run in runs.items():  # the start event carries it to the service's job history
        warned = [w for w in run.start["warnings"] if w.startswith("solver.amp=bf16: ")]
        assert len(warned) == int(slow[name]), run.start["warnings"]
    # Validation (losses and metrics) runs in fp32 either way.
    assert (runs["fp32"].dtypes, runs["bf16"].dtypes) == (
        {torch.float32},
        {torch.float32, torch.bfloat16},
    )
    assert runs["fp32"].channels_last == {False} and runs["bf16"].channels_last == {True}
    first, last = runs["fp32"].losses[0], sum(runs["fp32"].losses[-6:]) / 6
    bf16_last = sum(runs["bf16"].losses[-6:]) / 6
    assert last < 0.6 * first, runs["fp32"].losses
    assert bf16_last == pytest.approx(last, rel=0.15), (runs["fp32"].losses, runs["bf16"].losses)
