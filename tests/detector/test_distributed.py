"""Data-parallel training for real: two processes under torchrun, Gloo on the CPU."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detector.data.sampler import EpochBatchSampler
from detector.engine.checkpoint import load_checkpoint
from tests.trained import CONFIGS, TrainedRun


def test_ranks_split_each_global_batch_and_never_get_nothing() -> None:
    def batches(rank: int, world: int) -> list[list[tuple[int, int]]]:
        sampler = EpochBatchSampler(
            num_samples=10, batch_size=4, seed=1, rank=rank, world_size=world
        )
        sampler.set_epoch(3)
        return list(sampler)

    whole = batches(0, 1)
    assert {epoch for batch in whole for epoch, _ in batch} == {3}  # each key names its epoch
    ranks = [batches(r, 2) for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 3  # iterations mean the same
    for b, global_batch in enumerate(whole):
        together = sorted(ranks[0][b] + ranks[1][b])
        assert set(together) == set(global_batch)
    last = batches(0, 4)[-1], batches(3, 4)[-1]  # 2 images left for 4 ranks: wrapped
    assert all(len(part) == 1 for part in last)


def _torchrun_train(shapes: Path, out: Path, *extra: str) -> list[str]:
    """``retinanet train`` on ``shapes`` (96 px) in two processes under torchrun."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "detector.cli", "train", str(CONFIGS / "shapes_tiny.yaml"),
        "--data-train", str(shapes / "annotations/instances_train.json"), str(shapes / "images"),
        "--data-val", str(shapes / "annotations/instances_val.json"), str(shapes / "images"),
        "--set", "data.train_min_sizes=[96]", "--set", "data.eval_min_size=96",
        "--set", "data.max_size=96", "--set", "eval.period_epochs=10", "--out", str(out), *extra,
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


@pytest.mark.slow
def test_two_process_run_learns_like_one_and_writes_one_set_of_artifacts(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    shapes, out = trained_run.shapes, tmp_path / "ddp"
    proc = subprocess.run(
        _torchrun_train(shapes, out), capture_output=True, text=True, env=ENV, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # Rank 0 alone reports and writes: one summary, one checkpoint set, one event log.
    assert proc.stdout.count("trained 120 iterations (20 epochs)") == 1, proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "step" for e in events) == 120
    ddp_ap50 = [e for e in events if e["type"] == "epoch"][-1]["metrics"]["summary"]["AP50"]
    assert trained_run.result.metrics is not None
    single_ap50 = trained_run.result.metrics.value("AP50")
    assert single_ap50 is not None
    # The same kind of result: far above an untrained model (< 0.02), like the 1-process run.
    assert ddp_ap50 > 0.15 and ddp_ap50 > 0.5 * single_ap50, (ddp_ap50, single_ap50)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["state"]["iteration"] == 120
    assert not any(k.startswith("module.") for k in state["model"])  # the bare model's weights
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def _steps_done(events: Path) -> int:
    """The last step rank 0 logged (the line it is writing may still be partial)."""
    lines = events.read_text().splitlines() if events.exists() else []
    done = 0
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            if (event := json.loads(line))["type"] == "step":
                done = event["iteration"]
    return done


@pytest.mark.slow
def test_two_process_run_stopped_by_sigterm_resumes_exactly(shapes: Path, tmp_path: Path) -> None:
    """SIGTERM to torchrun (a preemption): every rank stops after the same step, rank 0 saves,
    and ``--resume`` ends with the weights of an uninterrupted run, bit for bit."""
    schedule = (
        "--set", "solver.epochs=4", "--set", "solver.steps=[2]", "--set", "solver.warmup_iters=4",
        "--set", "checkpoint_period_iters=1000", "--set", "data.num_workers=1",
    )  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = subprocess.run(
        _torchrun_train(shapes, whole, *schedule),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    run = subprocess.Popen(
        _torchrun_train(shapes, parts, *schedule),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while _steps_done(parts / "events.jsonl") < 3 and run.poll() is None:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)  # torchrun's agent passes it to both ranks
        log, _ = run.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    stopped_at = load_checkpoint(parts / "checkpoints" / "last.pt")["state"]["iteration"]
    assert 3 <= stopped_at < 24, log[-4000:]  # saved on the signal, not by a periodic save
    assert f"stopped by SIGTERM after iteration {stopped_at}" in log, log[-4000:]
    resumed = subprocess.run(
        _torchrun_train(shapes, parts, *schedule, "--resume"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(parts / "checkpoints" / "last.pt")
    assert a["state"] == b["state"] and a["state"]["iteration"] == 24
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
