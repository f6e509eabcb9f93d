"""A data-parallel job: one process per device, started and watched by the job's child.

The ranks get torchrun's environment contract (``detector.rank_environment``), so the
detector's training runs exactly as under ``torchrun``. The child launches them itself rather
than through torchrun because the worker needs what torchrun's agent hides: each rank's exit
code (a deterministic failure is not retried, a killed process is) and a SIGTERM that reaches
every rank at once so that rank 0 checkpoints before they exit together.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket

from detector import rank_environment
from service.settings import Settings
from service.worker.attempt import train_job
from service.worker.exits import (
    EXIT_FAILED,
    EXIT_FENCED,
    EXIT_OK,
    EXIT_STOPPED,
    KILLED,
    die_with_parent,
)


def launch_ranks(settings: Settings, job_id: str, token: int, *, devices: int) -> int:
    """Run ``devices`` ranks of the job; returns the attempt's exit code, or ``KILLED``."""
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    ranks = [
        ctx.Process(
            target=_rank_main,
            args=(settings, job_id, token, rank, devices, port),
            name=f"job-{job_id}-rank{rank}",
        )
        for rank in range(devices)
    ]
    for process in ranks:
        process.start()

    def forward(*_: object) -> None:
        for process in ranks:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    first_bad: list[int] = []  # the abnormal exits seen at the first poll that saw any
    while any(p.is_alive() for p in ranks):
        for process in ranks:
            process.join(timeout=1)
        codes = [p.exitcode for p in ranks]
        bad = [c for c in codes if c is not None and c not in (EXIT_OK, EXIT_STOPPED)]
        if bad and not first_bad:
            first_bad = bad
            # The others would wait for the failed rank in their next collective: end them.
            for process in ranks:
                if process.is_alive():
                    process.kill()
            for process in ranks:
                process.join()
    return merge([p.exitcode for p in ranks], first_bad=first_bad)


def merge(codes: list[int | None], *, first_bad: list[int]) -> int:
    """One exit code for the attempt. The first abnormal exits decide: a rank killed by a
    signal (out of memory, say) means a retry, even when its peers then failed on the broken
    connection; otherwise a failure; otherwise rank 0's code."""
    if first_bad:
        if any(c < 0 for c in first_bad):
            return KILLED
        return EXIT_FENCED if EXIT_FENCED in first_bad else EXIT_FAILED
    if any(c is None or c < 0 for c in codes):
        return KILLED
    return codes[0] if codes[0] is not None else KILLED


def _rank_main(
    settings: Settings,
    job_id: str,
    token: int,
    rank: int,
    world_size: int,
    port: int,
) -> None:
    die_with_parent()
    os.environ.update(rank_environment(rank=rank, world_size=world_size, port=port))
    os._exit(train_job(settings, job_id, token))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
