"""``train_job``: one attempt's training in this process, from the prepared recipe to the model
file and the job's ``end`` event.

In a data-parallel job every rank calls it (the child starts them, see ``ranks``); only the
main process, which alone runs the callbacks, ends the run and records it. Returns the
attempt's exit code (``exits``), which is all the worker learns of the outcome.
"""

from __future__ import annotations

import traceback

from detector import (
    EventKind,
    ProgressBar,
    StopOnSignal,
    finalize,
    fit,
    is_main_process,
    load_recipe,
)
from service.settings import Settings
from service.storage import Storage
from service.store.db import make_engine, session_factory
from service.worker.events import LeaseLostError, db_events, record_failure
from service.worker.exits import EXIT_FAILED, EXIT_FENCED, EXIT_OK, EXIT_STOPPED

PROGRESS_LOG_EVERY = 10
"""Iterations between progress lines in the job log."""


def train_job(settings: Settings, job_id: str, token: int) -> int:
    """Train the job's ``recipe.yaml`` (resuming from its last checkpoint), then, in the main
    process, finalize the run into the model file and record its end."""
    storage = Storage(settings.data_dir)
    workdir = storage.job_dir(job_id)
    sessions = session_factory(make_engine(settings.db_url, frozen_transaction_s=settings.lease_s))
    events = db_events(settings, sessions, job_id, token)
    try:
        cfg = load_recipe(workdir / "recipe.yaml")
        progress = ProgressBar(log_every=PROGRESS_LOG_EVERY)
        with StopOnSignal() as stopper:
            result = fit(cfg, workdir, callbacks=[progress, events, stopper], resume=True)
        if stopper.received is not None:
            return EXIT_STOPPED
        if result.rank != 0:
            return EXIT_OK
        final = finalize(cfg, workdir, model_file=storage.model_file(job_id))
        test_metrics = (
            None if final.test_metrics is None else final.test_metrics.model_dump(mode="json")
        )
        events.record(
            EventKind.END,
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
        if not is_main_process():  # only the main process writes; the log has the trace
            traceback.print_exc()
            return EXIT_FAILED
        return record_failure(exc, storage.error_file(job_id), events)
