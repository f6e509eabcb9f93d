"""``Worker``: the claim loop. Each claimed job runs in a child process the worker watches.

While the child trains, the worker renews the lease every ``heartbeat_s``; if the renewal is
refused (the lease expired and another worker took the job), or cannot be made before the
lease runs out (the database stayed unreachable), it kills the child and writes nothing more.
Cancel requests and the worker's own SIGTERM reach the child as SIGTERM: it checkpoints and
exits, and the job is cancelled or released for another worker to resume. A child killed by
a signal is retried; whether that spends an attempt is the store's rule (``leases``: only
attempts that made no progress count).

Every store call goes through ``with_retry``: a busy or briefly unreachable database delays
the worker, it never kills it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from detector import local_devices, read_card, sha256_file
from service.clock import now
from service.settings import Settings
from service.storage import Storage
from service.store import repo
from service.store.db import make_engine, migrate, session_factory
from service.store.retry import StoreUnavailableError, in_transaction, with_retry
from service.worker.child import run_child
from service.worker.outcome import Outcome, outcome

log = logging.getLogger(__name__)

T = TypeVar("T")


def new_worker_id() -> str:
    """A name no other worker process ever had (its row also holds host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs jobs until stopped (SIGTERM / SIGINT, or ``stop()``)."""

    def __init__(self, *, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.id = worker_id or new_worker_id()
        self.storage = Storage(settings.data_dir)
        self.devices = settings.worker_devices or local_devices()
        self._stopping = threading.Event()
        self._sessions: sessionmaker[Session] | None = None

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            with_retry(lambda: migrate(self.settings.db_url), what="migrate")
            self._sessions = session_factory(
                make_engine(self.settings.db_url, frozen_transaction_s=self.settings.lease_s)
            )
        return self._sessions

    def stop(self, *_: object) -> None:
        self._stopping.set()

    def run(self) -> None:
        """The loop; installs SIGTERM/SIGINT handlers when run in the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        log.info(
            "worker %s started on %s; jobs of up to %d device(s)",
            self.id,
            self.settings.db_url.split("@")[-1],
            self.devices,
        )
        while not self._stopping.is_set():
            try:
                claim = self._poll()
            except StoreUnavailableError as exc:  # nothing held: wait, then look again
                log.warning("worker %s: store unavailable: %s", self.id, exc)
                claim = None
            if claim is None:
                self._stopping.wait(self.settings.poll_s)
                continue
            log.info("job %s: attempt %d (token %d)", claim.job_id, claim.attempt, claim.token)
            self._run_claim(claim)
        self._store("worker stopped", self._gone, deadline=self._lease_deadline())

    def _poll(self) -> repo.Claim | None:
        """Say the worker is alive, then claim the next job it can run (None: none)."""
        self._store("worker heartbeat", self._seen, deadline=self._lease_deadline())
        return with_retry(
            lambda: repo.claim_next_job(
                self.sessions,
                worker_id=self.id,
                lease_s=self.settings.lease_s,
                now=now(),
                max_devices=self.devices,
            ),
            what="claim",
            deadline=self._lease_deadline(),
        )

    def _store(
        self, what: str, write: Callable[[Session], T], *, deadline: float | None = None
    ) -> T:
        """``write`` in a transaction of its own, retried while the database is busy."""
        return in_transaction(self.sessions, write, what=what, deadline=deadline)

    def _lease_deadline(self) -> float:
        """A monotonic time one lease from now: retrying longer would outlive a lease."""
        return time.monotonic() + self.settings.lease_s

    def _seen(self, session: Session) -> None:
        repo.worker_seen(
            session,
            worker_id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            devices=self.devices,
            now=now(),
        )

    def _gone(self, session: Session) -> None:
        repo.worker_gone(session, worker_id=self.id, cause="worker stopped", now=now())

    def _run_claim(self, claim: repo.Claim) -> None:
        self.storage.job_dir(claim.job_id).mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(
            target=run_child,
            args=(self.settings, claim.job_id, claim.token),
            name=f"job-{claim.job_id}",
        )
        child.start()
        stop_sent = cancelled = False
        lease_until = time.monotonic() + self.settings.lease_s
        while True:
            child.join(timeout=self.settings.heartbeat_s)
            if not child.is_alive():
                break
            beat_started = time.monotonic()
            try:
                beat = self._store(
                    "lease heartbeat", lambda s: self._beat(s, claim), deadline=lease_until
                )
            except StoreUnavailableError:
                beat = None  # the lease may be gone by now: behave as fenced out
            if beat is None:  # fenced out: someone else owns the job now
                log.warning("job %s: lease lost; stopping the child", claim.job_id)
                child.kill()
                child.join()
                return
            lease_until = beat_started + self.settings.lease_s
            cancelled = cancelled or beat.cancel_requested
            if (cancelled or self._stopping.is_set()) and not stop_sent and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)  # the child checkpoints, then exits
                stop_sent = True
        self._settle(claim, child.exitcode, cancelled=cancelled)

    def _beat(self, session: Session, claim: repo.Claim) -> repo.HeartbeatResult | None:
        """Renew the lease and say the worker is alive, in one write transaction."""
        beat = repo.heartbeat(
            session, job_id=claim.job_id, token=claim.token, lease_s=self.settings.lease_s,
            now=now(),
        )  # fmt: skip
        self._seen(session)
        return beat

    def _settle(self, claim: repo.Claim, exitcode: int | None, *, cancelled: bool) -> None:
        """Turn the child's exit into the job's next state (all writes fenced)."""
        job_id, t = claim.job_id, now()
        next_state = outcome(exitcode, cancelled=cancelled)
        model, model_error = None, None
        if next_state is Outcome.SUCCEED:
            try:  # read and hash the file before the write transaction, not inside it
                model = self._model_facts(job_id)
            except Exception as exc:
                log.exception("job %s: cannot register its model", job_id)
                model_error = f"training finished but its model cannot be registered: {exc}"

        def write(session: Session) -> None:
            fence: dict[str, Any] = {"job_id": job_id, "token": claim.token, "now": t}
            if next_state is Outcome.SUCCEED and model is not None:
                if repo.finish_job(session, status="succeeded", **fence):
                    self._register_model(session, job_id, model, t)
            elif next_state is Outcome.SUCCEED:
                repo.finish_job(session, status="failed", error=model_error, **fence)
            elif next_state is Outcome.CANCEL:
                repo.finish_job(session, status="cancelled", **fence)
            elif next_state is Outcome.FAIL:
                error = (
                    self._error_text(job_id)
                    or f"training failed (exit code {exitcode}); see the job log"
                )
                repo.finish_job(session, status="failed", error=error, **fence)
            elif next_state is Outcome.RELEASE:
                repo.release_job(session, **fence)
            elif next_state is Outcome.RETRY:
                cause = f"training process killed by signal {-(exitcode or 0)}"
                repo.retry_job(session, cause=cause, **fence)
            # Outcome.LEAVE: the job is another attempt's now; nothing to write.

        try:
            self._store(f"job {job_id}: outcome", write, deadline=self._lease_deadline())
        except StoreUnavailableError:
            # Its lease runs out; the next claim settles the job as an abnormal end.
            log.exception("job %s: cannot record the outcome of the attempt", job_id)

    def _register_model(
        self, session: Session, job_id: str, model: dict[str, Any], t: datetime
    ) -> None:
        """The model row of the job just marked succeeded (same transaction)."""
        job = repo.get_job(session, job_id)
        dataset = repo.get_dataset(session, job.train_dataset_id) if job.train_dataset_id else None
        name = f"{dataset.name if dataset else 'model'} ({job_id[:8]})"
        repo.create_model(session, job_id=job_id, name=name, now=t, **model)

    def _model_facts(self, job_id: str) -> dict[str, Any]:
        """What the model row of a succeeded job holds, from its model file."""
        path = self.storage.model_file(job_id)
        card = read_card(path)
        test_file = self.storage.test_metrics_file(job_id)
        if test_file.exists():
            metrics, split = json.loads(test_file.read_text()), "test"
        elif card.val_metrics is not None:
            metrics, split = card.val_metrics.model_dump(mode="json"), "val"
        else:
            metrics, split = None, None
        return {
            "weights_path": str(path),
            "weights_sha256": sha256_file(path),
            "weights_bytes": path.stat().st_size,
            "classes": [c.model_dump() for c in card.classes],
            "recipe": card.recipe.model_dump(mode="json"),
            "score_thresholds": card.score_thresholds,
            "metrics": metrics,
            "metrics_split": split,
        }

    def _error_text(self, job_id: str) -> str | None:
        path = self.storage.error_file(job_id)
        return path.read_text() if path.exists() else None
