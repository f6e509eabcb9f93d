"""Data-parallel training for real: two processes under torchrun, Gloo on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector.data.sampler import EpochBatchSampler
from detector.engine.checkpoint import load_checkpoint
from tests.trained import CONFIGS, TrainedRun


def test_ranks_split_each_global_batch_and_never_get_nothing() -> None:
    def batches(rank: int, world: int) -> list[list[int]]:
        sampler = EpochBatchSampler(
            num_samples=10, batch_size=4, seed=1, rank=rank, world_size=world
        )
        sampler.set_epoch(3)
        return list(sampler)

    whole = batches(0, 1)
    ranks = [batches(r, 2) for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 3  # iterations mean the same
    for b, global_batch in enumerate(whole):
        together = sorted(ranks[0][b] + ranks[1][b])
        assert set(together) == set(global_batch)
    last = batches(0, 4)[-1], batches(3, 4)[-1]  # 2 images left for 4 ranks: wrapped
    assert all(len(part) == 1 for part in last)


@pytest.mark.slow
def test_two_process_run_learns_like_one_and_writes_one_set_of_artifacts(
    trained_run: TrainedRun, tmp_path: Path
) -> None:
    shapes, out = trained_run.shapes, tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "detector.cli", "train", str(CONFIGS / "shapes_tiny.yaml"),
        "--data-train", str(shapes / "annotations/instances_train.json"), str(shapes / "images"),
        "--data-val", str(shapes / "annotations/instances_val.json"), str(shapes / "images"),
        "--set", "data.train_min_sizes=[96]", "--set", "data.eval_min_size=96",
        "--set", "data.max_size=96", "--set", "eval.period_epochs=10", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
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
