"""How the exits of a data-parallel job's ranks become the attempt's outcome."""

from __future__ import annotations

from service.worker.exits import EXIT_FAILED, EXIT_FENCED, EXIT_OK, EXIT_STOPPED, KILLED
from service.worker.ranks import merge


def test_a_rank_killed_by_a_signal_means_retry_even_when_its_peers_then_fail() -> None:
    assert merge([EXIT_OK, EXIT_OK], first_bad=[]) == EXIT_OK
    assert merge([EXIT_STOPPED, EXIT_OK], first_bad=[]) == EXIT_STOPPED  # rank 0 decides
    # Rank 1 OOM-killed; rank 0 then fails on the broken connection and is ended by us.
    assert merge([-9, -9], first_bad=[-9]) == KILLED
    assert merge([EXIT_FAILED, -9], first_bad=[EXIT_FAILED, -9]) == KILLED
    # A deterministic failure first: the others were ended by the launcher, not by the OS.
    assert merge([-9, EXIT_FAILED], first_bad=[EXIT_FAILED]) == EXIT_FAILED
    assert merge([EXIT_FENCED, -9], first_bad=[EXIT_FENCED]) == EXIT_FENCED
