"""What a job attempt's end means for the job: the child's exit, and whether the job was
cancelled, decide its next state. One table, so that every case is written down once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from service.worker.exits import EXIT_FENCED, EXIT_OK, EXIT_STOPPED


class Exit(StrEnum):
    """How the child ended, as far as the job is concerned."""

    OK = "ok"
    """Trained to the end; its model file is written."""
    STOPPED = "stopped"
    """Stopped by SIGTERM after a checkpoint."""
    FENCED = "fenced"
    """Lost its lease: another worker owns the job now."""
    FAILED = "failed"
    """A deterministic failure (any other positive code)."""
    KILLED = "killed"
    """Killed by a signal (OOM killer, SIGKILL), or no exit code at all."""


class Outcome(StrEnum):
    """The job's next state."""

    SUCCEED = "succeed"
    """Succeeded, with a model row (or failed, if its model file cannot be registered)."""
    CANCEL = "cancel"
    FAIL = "fail"
    """Failed with the child's error text."""
    RELEASE = "release"
    """Back to the queue, attempt unspent: the worker is shutting down."""
    RETRY = "retry"
    """Back to the queue from its last checkpoint; the store decides if an attempt is spent."""
    LEAVE = "leave"
    """Nothing written: the job is no longer this attempt's."""


OUTCOMES: Final[dict[tuple[Exit, bool], Outcome]] = {
    # (how the child ended, cancel requested): the job's next state
    (Exit.OK, False): Outcome.SUCCEED,
    (Exit.OK, True): Outcome.CANCEL,  # a cancel that came as training ended still wins
    (Exit.STOPPED, False): Outcome.RELEASE,
    (Exit.STOPPED, True): Outcome.CANCEL,
    (Exit.FENCED, False): Outcome.LEAVE,
    (Exit.FENCED, True): Outcome.LEAVE,
    (Exit.FAILED, False): Outcome.FAIL,
    (Exit.FAILED, True): Outcome.FAIL,
    (Exit.KILLED, False): Outcome.RETRY,
    (Exit.KILLED, True): Outcome.RETRY,  # killed before it could stop: as any kill
}


def exit_of(exitcode: int | None) -> Exit:
    """The kind of a child's exit code (``None``: it has none, as if killed)."""
    if exitcode == EXIT_OK:
        return Exit.OK
    if exitcode == EXIT_STOPPED:
        return Exit.STOPPED
    if exitcode == EXIT_FENCED:
        return Exit.FENCED
    if exitcode is not None and exitcode > 0:  # EXIT_FAILED, or a crash's own code
        return Exit.FAILED
    return Exit.KILLED


def outcome(exitcode: int | None, *, cancelled: bool) -> Outcome:
    """The job's next state after a child's ``exitcode``."""
    return OUTCOMES[exit_of(exitcode), cancelled]
