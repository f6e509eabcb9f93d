"""The training child process: one job attempt, from the job row to artifacts and events.

It runs apart from the worker so that a crash or an out-of-memory kill takes only the child.
It writes to the database only with its fencing token; once fenced out (its lease was taken
over), or when the database stayed unreachable for a whole lease (its lease may be gone), it
stops at once. Each ``last.pt`` saved is reported on the job row: that is the progress by
which the store decides whether a killed attempt counts against the job. Exit codes tell
the worker what happened.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy.orm import Session, sessionmaker

from detector import (
    Callback,
    EpochEvent,
    Predictor,
    StepEvent,
    fit,
    load_checkpoint,
    load_recipe,
    remove_stale_temporaries,
    save_model_file,
)
from detector.engine.callbacks import ProgressBar, StopOnSignal, Trainer, start_payload
from service.settings import Settings
from service.storage import Storage
from service.store import repo
from service.store.db import make_engine, session_factory
from service.store.retry import StoreUnavailableError, in_transaction
from service.worker.holdout import split_holdout

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 2
"""A deterministic failure (bad data, diverged loss, a bug): retrying would fail again."""
EXIT_STOPPED = 3
"""Stopped by SIGTERM after a checkpoint: cancelled, or the worker is shutting down."""
EXIT_FENCED = 4
"""The lease went to another worker: this attempt must not write anything more."""


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

    def record(self, kind: str, payload: dict[str, Any], *, checkpoint: int | None = None) -> None:
        """Append an event (and report ``checkpoint``) in one fenced transaction."""

        def write(session: Session) -> bool:
            fence: dict[str, Any] = {"job_id": self.job_id, "token": self.token}
            ok = repo.record_event(
                session, kind=kind, payload=payload, now=datetime.now(UTC), **fence
            )
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
        self.record("start", start_payload(trainer), checkpoint=resumed)
        if resumed:
            self._recover_lost_epoch(trainer)

    def _recover_lost_epoch(self, trainer: Trainer) -> None:
        """Record the epoch event that a kill between the epoch-end save and its record cut
        off (the checkpoint holds it): the metrics history then misses no epoch."""
        done = trainer.state.epoch

        def last_recorded(session: Session) -> int:
            epochs = repo.epoch_events(session, self.job_id)
            return max((e.payload["epoch"] for e in epochs), default=0)

        if done == 0 or self._transaction("epoch events", last_recorded) >= done:
            return
        event = load_checkpoint(self.last_checkpoint).get("epoch_event")
        if event is not None and event["epoch"] == done:
            self.record("epoch", event)

    def on_step_end(self, trainer: Trainer, event: StepEvent) -> None:
        now, saved = time.monotonic(), self._new_checkpoint(trainer)
        due = now - self._last_step >= self.min_step_s or event.iteration == event.max_iters
        if due or saved is not None:
            self._last_step = now
            self.record("step", asdict(event), checkpoint=saved)

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        self.record("epoch", event.to_json(), checkpoint=self._new_checkpoint(trainer))

    def on_fit_end(self, trainer: Trainer) -> None:
        saved = self._new_checkpoint(trainer)
        if saved is not None:  # the checkpoint of a stop (SIGTERM) or of the last step
            fence: dict[str, Any] = {"job_id": self.job_id, "token": self.token}
            self._write(
                f"job {self.job_id}: checkpoint",
                lambda session: repo.record_checkpoint(session, iteration=saved, **fence),
            )
            self._reported = saved


def run_child(settings: Settings, job_id: str, token: int) -> None:
    """Entry point of the child process (multiprocessing, spawn)."""
    die_with_parent()
    storage = Storage(settings.data_dir)
    workdir = storage.job_dir(job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "error.txt").unlink(missing_ok=True)  # from an earlier attempt
    # Saves cut off by a kill leave temporary files; no save of this job runs before fit.
    remove_stale_temporaries(workdir)
    log = storage.log_file(job_id).open("a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sessions = session_factory(make_engine(settings.db_url))
    try:
        test, devices = _job_recipe(sessions, job_id, workdir)
    except Exception as exc:
        os._exit(_failed(exc, workdir, _db_events(settings, sessions, job_id, token)))
    if devices > 1:
        from service.worker.ranks import KILLED, launch_ranks

        code = launch_ranks(settings, job_id, token, devices=devices, test=test)
        if code == KILLED:  # to the worker, as if this process had been killed: retried
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        code = train_job(settings, job_id, token, test=test)
    sys.stdout.flush()
    os._exit(code)  # no atexit handlers from the parent's libraries in a spawned child


def train_job(
    settings: Settings, job_id: str, token: int, *, test: tuple[Path, Path] | None
) -> int:
    """Train the job's prepared recipe; in a data-parallel run every rank calls this, and only
    rank 0 (which alone runs the callbacks) evaluates the test set, writes the model file and
    records the end. Returns the exit code."""
    storage = Storage(settings.data_dir)
    workdir = storage.job_dir(job_id)
    sessions = session_factory(make_engine(settings.db_url))
    events = _db_events(settings, sessions, job_id, token)
    try:
        cfg = load_recipe(workdir / "recipe.yaml")
        with StopOnSignal() as stopper:
            result = fit(
                cfg, workdir, callbacks=[ProgressBar(log_every=10), events, stopper], resume=True
            )
        if stopper.received is not None:
            return EXIT_STOPPED
        if result.rank != 0:
            return EXIT_OK
        best = workdir / "checkpoints" / "best.pt"
        checkpoint = best if best.exists() else workdir / "checkpoints" / "last.pt"
        test_metrics = None
        if test is not None:
            test_metrics = Predictor.load(checkpoint).evaluate(*test).model_dump(mode="json")
            storage.test_metrics_file(job_id).write_text(json.dumps(test_metrics))
        save_model_file(checkpoint, storage.model_file(job_id))
        events.record(
            "end",
            {
                "iterations": result.iterations,
                "stop_reason": result.stop_reason,
                "test_metrics": test_metrics,
            },
        )
        return EXIT_OK
    except LeaseLostError:
        return EXIT_FENCED
    except Exception as exc:
        if os.environ.get("RANK", "0") != "0":  # only rank 0 writes; the log has the trace
            traceback.print_exc()
            return EXIT_FAILED
        return _failed(exc, workdir, events)


def _db_events(
    settings: Settings, sessions: sessionmaker[Session], job_id: str, token: int
) -> DbEvents:
    """The events callback of this attempt."""
    last = Storage(settings.data_dir).job_dir(job_id) / "checkpoints" / "last.pt"
    return DbEvents(
        sessions=sessions, job_id=job_id, token=token, lease_s=settings.lease_s,
        last_checkpoint=last,
    )  # fmt: skip


def _failed(exc: Exception, workdir: Path, events: DbEvents) -> int:
    """Record a deterministic failure (the worker fails the job with this text)."""
    traceback.print_exc()
    (workdir / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
    try:
        events.record("error", {"error": f"{type(exc).__name__}: {exc}"})
    except LeaseLostError:
        return EXIT_FENCED
    return EXIT_FAILED


def _job_recipe(
    sessions: sessionmaker[Session], job_id: str, workdir: Path
) -> tuple[tuple[Path, Path] | None, int]:
    """Write ``workdir/recipe.yaml``: the job's recipe with its datasets filled in (a seeded
    holdout when no val set), checked. Returns the test set and the number of processes."""
    with sessions() as session:
        job = repo.get_job(session, job_id)
        if job.train_dataset_id is None:
            raise ValueError("the job's training dataset was deleted")
        train = repo.get_dataset(session, job.train_dataset_id)
        val = repo.get_dataset(session, job.val_dataset_id) if job.val_dataset_id else None
        test = repo.get_dataset(session, job.test_dataset_id) if job.test_dataset_id else None
        recipe, holdout, devices = dict(job.recipe), job.holdout_fraction, job.devices
    data: dict[str, Any] = {
        "train": {"annotations": train.annotations_path, "images": train.images_path}
    }
    if val is not None:
        data["val"] = {"annotations": val.annotations_path, "images": val.images_path}
    elif holdout is not None:
        seed = int(recipe.get("seed", 0))
        tr, va = split_holdout(
            Path(train.annotations_path), fraction=holdout, seed=seed, out_dir=workdir / "split"
        )
        data["train"]["annotations"], data["val"] = (
            str(tr),
            {"annotations": str(va), "images": train.images_path},
        )
    recipe["data"] = {**recipe.get("data", {}), **data}
    recipe_file = workdir / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    load_recipe(recipe_file)  # a recipe that does not load fails here, once
    test_pair = None if test is None else (Path(test.annotations_path), Path(test.images_path))
    return test_pair, devices


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker dies, so no orphan keeps training."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
