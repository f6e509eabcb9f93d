"""``Supervisor``: the workers that ``retinanet serve`` runs beside the API, kept running.

A worker process that dies (a crash, the OOM killer, a stray SIGKILL) would otherwise stay
dead while the API keeps answering: its job ``running`` with nobody on it until the lease
expires, and the worker listed as alive until it goes stale. The supervisor sees the exit at
once (the process sentinel), marks the worker stopped in the store and ends the attempt it
held (re-queued now, counted by the store's attempt rule), then starts a new worker after a
backoff: 1 s, doubling up to 60 s while workers keep dying young, back to 1 s once one has
stayed up for a minute. A crash loop then costs little, and a rare crash is repaired fast.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from service.clock import now
from service.logs import configure_logging
from service.settings import Settings
from service.store import repo
from service.store.db import make_engine, session_factory
from service.store.retry import StoreUnavailableError, in_transaction
from service.worker.exits import die_with_parent
from service.worker.loop import Worker, new_worker_id

log = logging.getLogger(__name__)

FIRST_BACKOFF_S: Final = 1.0
MAX_BACKOFF_S: Final = 60.0
STABLE_S: Final = 60.0
"""A worker that stayed up this long was healthy: the next restart waits FIRST_BACKOFF_S."""
_TICK_S: Final = 0.5


def run_worker(settings: Settings, worker_id: str | None = None) -> None:
    """A worker process's entry point (``retinanet worker``, or a supervised worker)."""
    configure_logging()
    if multiprocessing.parent_process() is not None:  # started by `serve`: end with it
        die_with_parent()
    Worker(settings=settings, worker_id=worker_id).run()


@dataclass
class _Slot:
    """One supervised worker: its current process, and when to start the next one."""

    index: int
    process: BaseProcess | None = None
    worker_id: str = ""
    started: float = 0.0
    restart_at: float | None = 0.0
    backoff_s: float = FIRST_BACKOFF_S


class Supervisor:
    """Starts ``count`` workers and restarts each one that exits until ``stop()``."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.slots = [_Slot(index=i) for i in range(count)]
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._sessions: sessionmaker[Session] | None = None

    def start(self) -> None:
        """Start the workers and the thread that watches them."""
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        """SIGTERM every worker (a running job checkpoints and is released), then wait."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            process.terminate()
        for process in running:
            process.join(timeout=timeout_s)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            alive = [s.process.sentinel for s in self.slots if s.process is not None]
            if alive:
                wait(alive, timeout=_TICK_S)  # returns at once when a worker exits
            else:
                self._stopping.wait(_TICK_S)
            if self._stopping.is_set():
                return
            for slot in self.slots:
                self._check(slot)

    def _check(self, slot: _Slot) -> None:
        """Notice a dead worker (clean up, schedule its restart) or restart one when due."""
        process, clock = slot.process, time.monotonic()
        if process is not None and not process.is_alive():
            slot.process = None
            self._bury(slot.worker_id, process.exitcode)
            if clock - slot.started >= STABLE_S:
                slot.backoff_s = FIRST_BACKOFF_S
            slot.restart_at = clock + slot.backoff_s
            log.error(
                "worker %s exited with code %s; restarting it in %.0fs",
                slot.worker_id, process.exitcode, slot.backoff_s,
            )  # fmt: skip
            slot.backoff_s = min(MAX_BACKOFF_S, slot.backoff_s * 2)
        elif process is None and slot.restart_at is not None and clock >= slot.restart_at:
            self.restarts += 1
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = new_worker_id()
        slot.process = self._ctx.Process(
            target=run_worker, args=(self.settings, slot.worker_id), name=f"worker-{slot.index}"
        )
        slot.process.start()
        slot.started, slot.restart_at = time.monotonic(), None

    def _bury(self, worker_id: str, exitcode: int | None) -> None:
        """Mark the worker stopped and end the attempt it held, so that its job runs again
        now and the API stops listing it as alive."""
        cause = f"worker process died (exit code {exitcode})"

        def end(session: Session) -> list[str]:
            return repo.worker_gone(session, worker_id=worker_id, cause=cause, now=now())

        try:
            released = in_transaction(
                self.sessions, end, what=f"worker {worker_id} gone", deadline=self._deadline()
            )
        except StoreUnavailableError:
            log.exception("worker %s: cannot record its end; its lease will expire", worker_id)
            return
        if released:
            log.warning("worker %s held job(s) %s: re-queued", worker_id, ", ".join(released))

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:  # the schema is the API's and the workers' to migrate
            self._sessions = session_factory(
                make_engine(self.settings.db_url, frozen_transaction_s=self.settings.lease_s)
            )
        return self._sessions

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.lease_s
