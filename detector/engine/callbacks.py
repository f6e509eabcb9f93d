"""Typed training callbacks and the events they receive.

A callback overrides the hooks it needs; every hook is a no-op by default, so a typo in a
hook name is caught by mypy (``@override``) rather than silently never called. Callbacks that
carry state across a resume implement ``state_dict`` / ``load_state_dict``.

The same events feed a terminal progress bar, a JSON-lines log, and the service's worker.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tqdm import tqdm

if TYPE_CHECKING:
    from detector.evaluate.coco import CocoMetrics
    from detector.model.anchor_fit import AnchorFit


class EventKind(StrEnum):
    """The kinds of event a run reports, by every feed (the JSON-lines log, the service's
    event rows): one spelling, so that readers of either feed match on the same names."""

    START = "start"
    STEP = "step"
    EPOCH = "epoch"
    END = "end"
    ERROR = "error"


@dataclass
class TrainState:
    """Where the run is. Iterations and epochs count what is *done*."""

    epoch: int = 0
    iteration: int = 0
    batch_in_epoch: int = 0
    max_iters: int = 0
    iters_per_epoch: int = 0
    should_stop: bool = False
    stop_reason: str | None = None
    best_metric: float | None = None
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_steps: int = 0
    """The epoch's running loss sums over its ``loss_steps`` steps so far: checkpointed, so an
    epoch resumed midway (or at its very end) still reports the mean of all its steps."""
    saved_iteration: int | None = None
    """Iteration of the newest ``last.pt`` this run wrote (None: none yet): a resume from it
    loses nothing before that point, which is what a supervisor calls progress."""

    def checkpoint(self) -> dict[str, Any]:
        """What a resume needs of the state (the rest is set again from the recipe)."""
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric,
            "loss_sums": dict(self.loss_sums),
            "loss_steps": self.loss_steps,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.epoch, self.iteration = saved["epoch"], saved["iteration"]
        self.batch_in_epoch, self.best_metric = saved["batch_in_epoch"], saved["best_metric"]
        # Checkpoints from before the sums were kept: the mean covers the steps after the resume.
        self.loss_sums, self.loss_steps = saved.get("loss_sums", {}), saved.get("loss_steps", 0)


@dataclass(frozen=True)
class StepEvent:
    epoch: int
    """0-based epoch this iteration belongs to."""
    iteration: int
    """Iterations done, 1-based."""
    max_iters: int
    losses: dict[str, float]
    lr: float
    images_per_s: float
    eta_s: float


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    """Epochs done, 1-based."""
    iteration: int
    train_losses: dict[str, float]
    val_losses: dict[str, float] | None
    metrics: CocoMetrics | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; metrics as the evaluator serialises them."""
        payload = {k: v for k, v in asdict(self).items() if k != "metrics"}
        payload["metrics"] = None if self.metrics is None else self.metrics.model_dump(mode="json")
        return payload


def start_payload(trainer: Trainer) -> dict[str, Any]:
    """What a run reports when it starts (or resumes): where, on how many processes, the
    anchor fit, and the warnings of its setup (a weak anchor fit, an emulated precision)."""
    return {
        "iteration": trainer.state.iteration,
        "processes": trainer.processes,
        "anchor_fit": asdict(trainer.anchor_fit),
        "warnings": list(trainer.warnings),
    }


class Trainer(Protocol):
    """What callbacks may see of the training loop (:class:`detector.engine.trainer.Trainer`,
    which this module cannot import: the loop imports its callbacks)."""

    state: TrainState
    anchor_fit: AnchorFit
    warnings: tuple[str, ...]

    @property
    def processes(self) -> int:
        """Processes training together (1, or the data-parallel world size)."""
        ...

    def checkpoint(self) -> dict[str, Any]: ...


class Callback:
    """Base class; override the hooks you need.

    In a data-parallel run only rank 0 runs the caller's callbacks (they report and write),
    unless the class sets ``all_ranks``: it then runs in every process.
    """

    all_ranks: ClassVar[bool] = False

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (also after a resume)."""

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        """After each optimiser step."""

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        """After each epoch, with validation loss and, when due, COCO metrics."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step of a run that finished or was stopped cleanly."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """The run is failing with ``exc``; it is re-raised afterwards."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def metric_value(event: EpochEvent, name: str) -> float | None:
    """``val_loss`` or a COCO metric name (``AP``, ``AP/<class>``, ...) from an epoch event."""
    if name == "val_loss":
        return None if event.val_losses is None else sum(event.val_losses.values())
    return None if event.metrics is None else event.metrics.value(name)


def higher_is_better(name: str) -> bool:
    return name != "val_loss"


class StopOnSignal(Callback):
    """A signal (SIGTERM: a preemption, ``docker stop``, a cancelled job) stops the run after
    the current step; fit then writes ``last.pt`` and a resume continues exactly.

    A context manager: the handlers are installed for the ``with`` block (main thread only)
    and the previous ones restored after it, so a signal that comes while the run is still
    being set up is kept too. Runs on every rank: each process gets the signal (torchrun and
    the worker forward it) and the ranks agree on the stop at the end of the step. With SIGINT
    listed, a second Ctrl-C aborts at once.
    """

    all_ranks: ClassVar[bool] = True

    def __init__(self, signals: Sequence[signal.Signals] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        if self.received is not None:
            trainer.state.should_stop = True
            trainer.state.stop_reason = f"stopped by {self.received.name}"


class EarlyStopping(Callback):
    """Stops the run when ``metric`` has not improved for ``patience`` evaluations."""

    def __init__(self, *, metric: str, patience: int, min_delta: float = 0.0) -> None:
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad_evals = 0

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        value = metric_value(event, self.metric)
        if value is None:
            return
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.state.should_stop = True
            trainer.state.stop_reason = (
                f"early stopping: {self.metric} did not improve on {self.best:.4f} "
                f"for {self.patience} evaluations"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]


class JsonlEvents(Callback):
    """Appends every event as one JSON line: the machine-readable progress feed."""

    def __init__(self, *, path: Path) -> None:
        self.path = path

    def _write(self, kind: EventKind, payload: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"type": str(kind), "time": time.time(), **payload}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False, default=_finite_or_none) + "\n")

    def on_fit_start(self, trainer: Trainer) -> None:
        self._write(EventKind.START, start_payload(trainer))

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        self._write(EventKind.STEP, asdict(event))

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        self._write(EventKind.EPOCH, event.to_json())

    def on_fit_end(self, trainer: Trainer) -> None:
        self._write(
            EventKind.END,
            {"iteration": trainer.state.iteration, "stop_reason": trainer.state.stop_reason},
        )

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self._write(EventKind.ERROR, {"iteration": trainer.state.iteration, "error": str(exc)})


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ProgressBar(Callback):
    """tqdm on a terminal; one log line every ``log_every`` iterations elsewhere."""

    def __init__(self, *, log_every: int = 20) -> None:
        self.log_every = log_every
        self.bar: tqdm[Any] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        print(trainer.anchor_fit.to_text(), file=sys.stderr)
        if sys.stderr.isatty():
            self.bar = tqdm(
                total=trainer.state.max_iters, initial=trainer.state.iteration, unit="it"
            )

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        loss = sum(event.losses.values())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=event.epoch + 1, loss=f"{loss:.3f}", lr=f"{event.lr:.2e}")
        elif event.iteration % self.log_every == 0 or event.iteration == event.max_iters:
            print(
                f"[{event.iteration}/{event.max_iters}] epoch {event.epoch + 1} loss {loss:.4f} "
                f"lr {event.lr:.2e} {event.images_per_s:.1f} img/s eta {event.eta_s:.0f}s",
                file=sys.stderr,
            )

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        parts = [f"epoch {event.epoch} done"]
        if event.val_losses is not None:
            parts.append(f"val loss {sum(event.val_losses.values()):.4f}")
        if event.metrics is not None:
            parts.append(
                f"AP {_pct(event.metrics.value('AP'))} AP50 {_pct(event.metrics.value('AP50'))}"
            )
        message = ", ".join(parts)
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.on_fit_end(trainer)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
