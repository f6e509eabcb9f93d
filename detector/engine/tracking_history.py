"""The run's per-epoch history, ``<run>/metrics.jsonl``: what the plots and the trackers read.

Every run writes it (the command line and the service's jobs alike), one JSON line per epoch:
the epoch's mean train loss terms, its last learning rate and mean images/s, the validation
loss terms and, when evaluated, the COCO metrics. A resumed run may repeat an epoch its
predecessor recorded; the later record wins, and records past the resumed point are dropped.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from detector.engine.callbacks import Callback, EpochEvent, StepEvent, Trainer
from detector.evaluate.coco import SUMMARY_KEYS, CocoMetrics

HISTORY_FILE = "metrics.jsonl"


class EpochRecord(BaseModel):
    """One epoch of a run. ``epoch`` counts epochs done (1-based), ``iteration`` steps done."""

    model_config = ConfigDict(frozen=True)

    epoch: int
    iteration: int
    train_losses: dict[str, float]
    lr: float
    images_per_s: float
    val_losses: dict[str, float] | None = None
    metrics: CocoMetrics | None = None


def history_file(workdir: Path) -> Path:
    return workdir / HISTORY_FILE


def read_history(workdir: Path) -> list[EpochRecord]:
    """The run's epochs in order, one record each (the latest written wins); [] without any."""
    path = history_file(workdir)
    if not path.exists():
        return []
    by_epoch: dict[int, EpochRecord] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = EpochRecord.model_validate_json(line)
            by_epoch[record.epoch] = record
    return [by_epoch[k] for k in sorted(by_epoch)]


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """The epoch's numbers under the names every tracker uses: ``train/<term>``,
    ``train/loss``, ``train/lr``, ``train/images_per_s``, ``val/<term>``, ``val/loss``,
    ``coco/<AP|AP50|...>`` (the 12 numbers; those COCO leaves undefined are left out) and
    ``class/<AP|AP50|AP75|AR100>/<class name>``."""
    values = {f"train/{k}": v for k, v in record.train_losses.items()}
    values["train/loss"] = sum(record.train_losses.values())
    values["train/lr"] = record.lr
    values["train/images_per_s"] = record.images_per_s
    return {**values, **validation_scalars(record.val_losses, record.metrics)}


def validation_scalars(
    val_losses: dict[str, float] | None, metrics: CocoMetrics | None
) -> dict[str, float]:
    """The ``val/``, ``coco/`` and ``class/`` part of :func:`epoch_scalars`."""
    values: dict[str, float] = {}
    if val_losses is not None:
        values |= {f"val/{k}": v for k, v in val_losses.items()}
        values["val/loss"] = sum(val_losses.values())
    if metrics is not None:
        for key in SUMMARY_KEYS:
            value = metrics.summary.get(key)
            if value is not None:
                values[f"coco/{key}"] = value
        for cls in metrics.per_class:
            for key in ("AP", "AP50", "AP75", "AR100"):
                value = getattr(cls, key)
                if value is not None:
                    values[f"class/{key}/{cls.name}"] = value
    return {k: v for k, v in values.items() if math.isfinite(v)}


class MetricsHistory(Callback):
    """Appends an :class:`EpochRecord` to ``<run>/metrics.jsonl`` at each epoch end."""

    def __init__(self, *, workdir: Path) -> None:
        self.path = history_file(workdir)
        self._lr = 0.0
        self._ips_sum = 0.0
        self._steps = 0
        self.last: EpochRecord | None = None
        """The record of the latest epoch end (None before the first)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        kept = [r for r in read_history(self.path.parent) if r.epoch <= trainer.state.epoch]
        if self.path.exists():  # a resume: what a killed attempt recorded past it goes
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(r.model_dump_json() + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        self._lr = event.lr
        self._ips_sum += event.images_per_s
        self._steps += 1

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        record = EpochRecord(
            epoch=event.epoch,
            iteration=event.iteration,
            train_losses=event.train_losses,
            lr=self._lr,
            images_per_s=self._ips_sum / max(1, self._steps),
            val_losses=event.val_losses,
            metrics=event.metrics,
        )
        self._ips_sum, self._steps = 0.0, 0
        self.last = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(record.model_dump_json() + "\n")
