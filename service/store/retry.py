"""Retrying a store call while the database is busy or briefly unreachable.

A locked SQLite file (a writer held the lock past the busy timeout), a PostgreSQL restart or a
dropped connection are transient: the same transaction succeeds a moment later. Long-running
processes (the worker, its training child) must outlive them, so each store call they make
runs through ``with_retry``: the whole transaction is re-run from the start (each attempt
opens its own session), with exponential backoff and jitter so that retrying processes do not
knock on the lock in step. Errors that retrying cannot fix (an integrity violation, a bug)
are raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Final, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from service.store.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S: Final = 0.05
MAX_DELAY_S: Final = 5.0


class StoreUnavailableError(StoreError):
    """The store stayed busy or unreachable until the caller's deadline."""


# PostgreSQL ended a transaction that sat idle past ``idle_in_transaction_session_timeout``
# (the process was frozen, see ``make_engine``); psycopg raises it as an InternalError.
_IDLE_TRANSACTION_CUT: Final = "25P03"


def is_transient(error: BaseException) -> bool:
    """A database error that the same transaction, run again later, may not meet."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.TimeoutError):
        return True  # locked / busy, connection lost, server restarting; pool exhausted
    if isinstance(error, sa_exc.DBAPIError):
        cut = getattr(error.orig, "sqlstate", None) == _IDLE_TRANSACTION_CUT
        return cut or bool(error.connection_invalidated)
    return False


def with_retry(
    call: Callable[[], T],
    *,
    what: str,
    deadline: float | None = None,
    first_delay_s: float = FIRST_DELAY_S,
    max_delay_s: float = MAX_DELAY_S,
) -> T:
    """``call()``, run again after transient database errors until it succeeds.

    ``deadline`` (a ``time.monotonic()`` value) bounds the retrying: past it the last error
    is raised as ``StoreUnavailableError`` (a worker whose lease runs out then behaves as fenced).
    Without one, it retries for as long as it takes. ``what`` names the call in the log.
    """
    delay = first_delay_s
    tries = 0
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            tries += 1
            # Full jitter in the upper half: spread out, but never much shorter than planned.
            pause = delay * random.uniform(0.5, 1.0)
            if deadline is not None and time.monotonic() + pause > deadline:
                message = f"{what}: {_short(error)} (gave up after {tries} tries)"
                raise StoreUnavailableError(message) from error
            log.warning("%s: %s; retry %d in %.2fs", what, _short(error), tries, pause)
            time.sleep(pause)
            delay = min(max_delay_s, delay * 2)


def in_transaction(
    factory: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    what: str,
    deadline: float | None = None,
) -> T:
    """``work(session)`` in a transaction of its own, committed; all of it run again (a new
    session) after a transient error, as ``with_retry`` does."""

    def transaction() -> T:
        with factory() as session:
            result = work(session)
            session.commit()
            return result

    return with_retry(transaction, what=what, deadline=deadline)


def _short(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement dump."""
    original = getattr(error, "orig", None)
    return f"{type(error).__name__}: {original if original is not None else error}"
