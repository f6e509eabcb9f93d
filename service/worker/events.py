"""``DbEvents``: a training run's events as the job's event rows, written with its fencing token.

Each ``last.pt`` saved is reported on the job row too: that is the progress by which the store
decides whether a killed attempt counts against the job. Once fenced out (the lease was taken
over), or when the database stayed unreachable for a whole lease (the lease may be gone), a
write raises ``LeaseLostError`` and the attempt stops at once.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from detector import (
    Callback,
    EpochEvent,
    EventKind,
    StepEvent,
    Trainer,
    last_checkpoint,
    load_checkpoint,
    start_payload,
)
from service.clock import now
from service.settings import Settings
from service.storage import Storage
from service.store import repo
from service.store.retry import StoreUnavailableError, in_transaction
from service.store.studies import prune_if_behind
from service.worker.exits import EXIT_FAILED, EXIT_FENCED

T = TypeVar("T")


class LeaseLostError(Exception):
    """A fenced write was refused."""


class DbEvents(Callback):
    """Training events into the job's event rows (steps at most once a second), and each saved
    checkpoint's iteration onto the job row (never throttled: it is the job's progress)."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        job_id: str,
        token: int,
        lease_s: float,
        last_checkpoint: Path,
        min_step_s: float = 1.0,
    ) -> None:
        self.sessions, self.job_id, self.token = sessions, job_id, token
        self.last_checkpoint = last_checkpoint
        self.lease_s, self.min_step_s = lease_s, min_step_s
        self._last_step = 0.0
        self._reported: int | None = None

    def record(
        self, kind: EventKind, payload: dict[str, Any], *, checkpoint: int | None = None
    ) -> None:
        """Append an event (and report ``checkpoint``) in one fenced transaction."""

        def write(session: Session) -> bool:
            fence: dict[str, Any] = {"job_id": self.job_id, "token": self.token}
            ok = repo.record_event(session, kind=str(kind), payload=payload, now=now(), **fence)
            if ok and checkpoint is not None:
                ok = repo.record_checkpoint(session, iteration=checkpoint, **fence)
            return ok

        self._write(f"job {self.job_id}: {kind} event", write)
        if checkpoint is not None:
            self._reported = checkpoint

    def _write(self, what: str, write: Callable[[Session], bool]) -> None:
        """Run the fenced ``write``; a refusal means another worker owns the job now."""
        if not self._transaction(what, write):
            raise LeaseLostError(f"job {self.job_id}: lease lost (token {self.token})")

    def _transaction(self, what: str, work: Callable[[Session], T]) -> T:
        """``work`` in its own transaction, retried while the database is busy but not past a
        lease: by then another worker may own the job, so stop as if fenced."""

        deadline = time.monotonic() + self.lease_s
        try:
            return in_transaction(self.sessions, work, what=what, deadline=deadline)
        except StoreUnavailableError as exc:
            raise LeaseLostError(f"job {self.job_id}: {exc}") from exc

    def _new_checkpoint(self, trainer: Trainer) -> int | None:
        """The iteration of a ``last.pt`` saved since the last report, if any."""
        saved = trainer.state.saved_iteration
        return saved if saved is not None and saved != self._reported else None

    def on_fit_start(self, trainer: Trainer) -> None:
        # The iteration resumed from is progress too: a kill right after a save may have
        # cut off the report of that save.
        resumed = trainer.state.iteration or None
        self.record(EventKind.START, start_payload(trainer), checkpoint=resumed)
        if resumed:
            self._recover_lost_reports(resumed, epochs_done=trainer.state.epoch)

    def _recover_lost_reports(self, resumed: int, *, epochs_done: int) -> None:
        """Record the step and epoch events of the resumed state that a kill cut off (the
        checkpoint holds both): a run resumed at its very end takes no step that would report
        its progress, and the metrics history then misses no epoch."""

        def recorded(session: Session) -> tuple[int, int]:
            progress = repo.get_job(session, self.job_id).progress or {}
            epochs = repo.epoch_events(session, self.job_id)
            last_epoch = max((e.payload["epoch"] for e in epochs), default=0)
            return int(progress.get("iteration", 0)), last_epoch

        step_seen, epoch_seen = self._transaction("recorded progress", recorded)
        lost_step, lost_epoch = step_seen < resumed, epoch_seen < epochs_done
        if not (lost_step or lost_epoch):
            return
        ckpt = load_checkpoint(self.last_checkpoint)
        step, epoch = ckpt.get("step_event"), ckpt.get("epoch_event")
        if lost_step and step is not None and step["iteration"] == resumed:
            self.record(EventKind.STEP, step)
        if lost_epoch and epoch is not None and epoch["epoch"] == epochs_done:
            self.record(EventKind.EPOCH, epoch)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        t, saved = time.monotonic(), self._new_checkpoint(trainer)
        due = t - self._last_step >= self.min_step_s or event.iteration == event.max_iters
        if due or saved is not None:
            self._last_step = t
            self.record(EventKind.STEP, asdict(event), checkpoint=saved)

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        self.record(EventKind.EPOCH, event.to_json(), checkpoint=self._new_checkpoint(trainer))
        # A study's median rule may stop this job now: as a cancel, seen at the next heartbeat.
        self._transaction(
            "pruning", lambda s: prune_if_behind(s, job_id=self.job_id, epoch=event.epoch)
        )

    def on_fit_end(self, trainer: Trainer) -> None:
        saved = self._new_checkpoint(trainer)
        if saved is not None:  # the checkpoint of a stop (SIGTERM) or of the last step
            fence: dict[str, Any] = {"job_id": self.job_id, "token": self.token}
            self._write(
                f"job {self.job_id}: checkpoint",
                lambda session: repo.record_checkpoint(session, iteration=saved, **fence),
            )
            self._reported = saved


def db_events(
    settings: Settings, sessions: sessionmaker[Session], job_id: str, token: int
) -> DbEvents:
    """The events callback of this attempt."""
    workdir = Storage(settings.data_dir).job_dir(job_id)
    return DbEvents(
        sessions=sessions, job_id=job_id, token=token, lease_s=settings.lease_s,
        last_checkpoint=last_checkpoint(workdir),
    )  # fmt: skip


def record_failure(exc: Exception, error_file: Path, events: DbEvents) -> int:
    """Record a deterministic failure in ``error_file`` (the worker fails the job with this
    text) and as an event; returns the attempt's exit code."""
    traceback.print_exc()
    error_file.write_text(f"{type(exc).__name__}: {exc}")
    try:
        events.record(EventKind.ERROR, {"error": f"{type(exc).__name__}: {exc}"})
    except LeaseLostError:
        return EXIT_FENCED
    return EXIT_FAILED
