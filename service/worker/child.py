"""``run_child``: the process that runs one job attempt, started by the worker (spawn).

It runs apart from the worker so that a crash or an out-of-memory kill takes only the child.
It prepares the job folder and the recipe, then trains in this process (``attempt``) or, for
a data-parallel job, starts one process per device (``ranks``). Its exit code (``exits``)
tells the worker what happened.
"""

from __future__ import annotations

import os
import signal
import sys

from detector import remove_stale_temporaries
from service.settings import Settings
from service.storage import Storage
from service.store.db import make_engine, session_factory
from service.worker.attempt import train_job
from service.worker.events import db_events, record_failure
from service.worker.exits import KILLED, die_with_parent, redirect_output
from service.worker.ranks import launch_ranks
from service.worker.recipe import write_job_recipe


def run_child(settings: Settings, job_id: str, token: int) -> None:
    """Entry point of the child process; never returns (it exits with the attempt's code)."""
    die_with_parent()
    storage = Storage(settings.data_dir)
    workdir = storage.job_dir(job_id)
    workdir.mkdir(parents=True, exist_ok=True)
    storage.error_file(job_id).unlink(missing_ok=True)  # from an earlier attempt
    # Saves cut off by a kill leave temporary files; no save of this job runs before fit.
    remove_stale_temporaries(workdir)
    log = redirect_output(storage.log_file(job_id))
    sessions = session_factory(make_engine(settings.db_url, frozen_transaction_s=settings.lease_s))
    try:
        devices = write_job_recipe(sessions, job_id, workdir, mlflow_uri=settings.mlflow_uri)
    except Exception as exc:
        os._exit(
            record_failure(
                exc, storage.error_file(job_id), db_events(settings, sessions, job_id, token)
            )
        )
    if devices > 1:
        code = launch_ranks(settings, job_id, token, devices=devices)
        if code == KILLED:  # to the worker, as if this process had been killed: retried
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        code = train_job(settings, job_id, token)
    sys.stdout.flush()
    log.flush()
    os._exit(code)  # no atexit handlers from the parent's libraries in a spawned child
