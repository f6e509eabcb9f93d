"""The contract between the worker and the processes it starts, and how they start.

A job's child process (and, in a data-parallel job, each of its ranks) tells the worker what
happened by its exit code alone: the codes below, or death by a signal. The start-up helpers
make such a process end with its parent and write its output to the job's log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Final, TextIO

EXIT_OK: Final = 0
EXIT_FAILED: Final = 2
"""A deterministic failure (bad data, diverged loss, a bug): retrying would fail again."""
EXIT_STOPPED: Final = 3
"""Stopped by SIGTERM after a checkpoint: cancelled, or the worker is shutting down."""
EXIT_FENCED: Final = 4
"""The lease went to another worker: this attempt must not write anything more."""
KILLED: Final = -1
"""Some rank died by a signal (out of memory, say): retry the attempt from the checkpoint.
Only the rank launcher returns it; the child then kills itself so that the worker sees a
process killed by a signal, as it would for a single-process job."""


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so no orphan keeps training."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def redirect_output(log_file: Path) -> TextIO:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so that C libraries
    and child processes write there too) to the end of ``log_file``; returns the open log,
    which must stay open as long as the process writes."""
    log = log_file.open("a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    return log
