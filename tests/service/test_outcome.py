"""The job's next state after each kind of child exit, with and without a cancel request."""

from __future__ import annotations

import signal

import pytest

from service.worker.exits import EXIT_FAILED, EXIT_FENCED, EXIT_OK, EXIT_STOPPED
from service.worker.outcome import OUTCOMES, Exit, Outcome, exit_of, outcome

# exit code, cancel requested -> next state: the whole table, read as a table.
ROWS = [
    (EXIT_OK, False, Outcome.SUCCEED),
    (EXIT_OK, True, Outcome.CANCEL),
    (EXIT_STOPPED, False, Outcome.RELEASE),
    (EXIT_STOPPED, True, Outcome.CANCEL),
    (EXIT_FENCED, False, Outcome.LEAVE),
    (EXIT_FENCED, True, Outcome.LEAVE),
    (EXIT_FAILED, False, Outcome.FAIL),
    (EXIT_FAILED, True, Outcome.FAIL),
    (-signal.SIGKILL, False, Outcome.RETRY),
    (-signal.SIGKILL, True, Outcome.RETRY),
]


@pytest.mark.parametrize(("exitcode", "cancelled", "expected"), ROWS)
def test_next_state(exitcode: int, cancelled: bool, expected: Outcome) -> None:
    assert outcome(exitcode, cancelled=cancelled) is expected


def test_rows_cover_the_table() -> None:
    assert {(exit_of(code), cancelled) for code, cancelled, _ in ROWS} == set(OUTCOMES)
    assert set(OUTCOMES) == {(e, c) for e in Exit for c in (False, True)}


@pytest.mark.parametrize(
    ("exitcode", "kind"),
    [(1, Exit.FAILED), (137, Exit.FAILED), (-signal.SIGTERM, Exit.KILLED), (None, Exit.KILLED)],
)
def test_other_codes(exitcode: int | None, kind: Exit) -> None:
    """A crash's own positive code is a failure; a signal, or no code at all, is a kill."""
    assert exit_of(exitcode) is kind
