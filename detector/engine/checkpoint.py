"""Checkpoints: where a run keeps them, which one is final, the callback that writes them,
and their atomic save and safe load.

A run folder holds ``checkpoints/last.pt`` (the newest state: resume from it) and
``checkpoints/best.pt`` (the state with the best validation metric, when there is one); the
final checkpoint of a run is ``best.pt`` when it exists, else ``last.pt``. Nothing outside
this module spells those paths.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``. It is written to a temporary file in the same folder,
fsynced, then moved over the old one with ``os.replace``: a crash at any moment leaves
either the old checkpoint or the new one, never a torn file (but maybe a temporary file,
which ``remove_stale_temporaries`` clears at the next start).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from detector.engine.callbacks import (
    Callback,
    EpochEvent,
    StepEvent,
    Trainer,
    higher_is_better,
    metric_value,
)

LAST = "last.pt"
BEST = "best.pt"
_TMP_SUFFIX = ".tmp"


def checkpoint_dir(workdir: Path) -> Path:
    """The folder of a run's checkpoints."""
    return workdir / "checkpoints"


def last_checkpoint(workdir: Path) -> Path:
    """The newest state of the run in ``workdir``: what a resume continues from."""
    return checkpoint_dir(workdir) / LAST


def best_checkpoint(workdir: Path) -> Path:
    """The state with the best validation metric (absent without a validation set)."""
    return checkpoint_dir(workdir) / BEST


def final_checkpoint(workdir: Path) -> Path:
    """The checkpoint a finished run is judged and shipped by: best, else last."""
    best = best_checkpoint(workdir)
    return best if best.exists() else last_checkpoint(workdir)


class Checkpointer(Callback):
    """``last.pt`` every ``period_iters`` and at each epoch end; ``best.pt`` by ``metric``.

    Nothing is written when the run fails, so the last good checkpoint is never replaced by
    the state of a diverged model. Each ``last.pt`` written sets ``state.saved_iteration``,
    which the callbacks after this one (the caller's) see in the same hook.
    """

    def __init__(self, *, workdir: Path, period_iters: int, metric: str) -> None:
        self.workdir = workdir
        self.period_iters = period_iters
        self.metric = metric
        self._step_event: dict[str, Any] | None = None

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        self._step_event = asdict(event)
        if event.iteration % self.period_iters == 0:
            self._save_last(trainer, trainer.checkpoint())

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        payload = trainer.checkpoint()
        # The epoch's report travels with the state it describes: a run killed after this
        # save but before a callback recorded the event can still record it when resumed.
        payload["epoch_event"] = event.to_json()
        if event.metrics is not None:
            # The model file's per-class score thresholds are read from these.
            payload["val_metrics"] = event.metrics.model_dump(mode="json")
        self._save_last(trainer, payload)
        value = metric_value(event, self.metric)
        if value is None:
            return
        best = trainer.state.best_metric
        better = best is None or (value > best if higher_is_better(self.metric) else value < best)
        if better:
            trainer.state.best_metric = value
            payload["best_metric"] = {"name": self.metric, "value": value}
            save_atomic(payload, best_checkpoint(self.workdir))

    def on_fit_end(self, trainer: Trainer) -> None:
        self._save_last(trainer, trainer.checkpoint())

    def _save_last(self, trainer: Trainer, payload: dict[str, Any]) -> None:
        # The newest step's report travels too, like the epoch's: the progress a resumed run
        # with no step left can still report.
        if self._step_event is not None:
            payload["step_event"] = self._step_event
        save_atomic(payload, last_checkpoint(self.workdir))
        trainer.state.saved_iteration = trainer.state.iteration


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(workdir: Path) -> list[Path]:
    """Delete the temporary files of saves that were killed midway (a SIGKILL, a power cut)
    in the run folder ``workdir``, and return them. Nothing else removes them; call it when
    no save into ``workdir`` can be running, at the start of a run."""
    folder = checkpoint_dir(workdir)
    stale = sorted(folder.glob(f".*{_TMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; refuses pickled code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may touch."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    state["python_version"] = random.getstate()[0]
    state["python_gauss"] = random.getstate()[2]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; sync it so it survives a power cut.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
