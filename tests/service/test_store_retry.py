"""``with_retry`` against a real SQLite file locked by another connection (BEGIN EXCLUSIVE)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.store import repo
from service.store.db import make_engine, session_factory
from service.store.retry import StoreUnavailableError, with_retry

from .store_support import T0, dataset_fields

HOLD_S = 1.0


@pytest.fixture
def impatient(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions whose SQLite busy timeout is 20 ms: a held lock fails them almost at once
    (the service's 30 s would hide the error the helper exists for)."""
    engine = make_engine(url)
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=20"))
    yield session_factory(engine)
    engine.dispose()


@contextmanager
def locked(url: str, hold_s: float) -> Iterator[threading.Thread]:
    """Another connection holds the write lock for ``hold_s`` seconds, from now."""
    other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None,
                            check_same_thread=False)  # fmt: skip
    other.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(hold_s, lambda: other.execute("COMMIT"))
    release.start()
    try:
        yield release
    finally:
        release.join()
        other.close()


def counted(
    write: Callable[[Session], Any], factory: sessionmaker[Session]
) -> tuple[Callable[[], None], list[int]]:
    """A transaction running ``write``, and the list its tries are counted in."""
    tries: list[int] = []

    def transaction() -> None:
        tries.append(1)
        with factory.begin() as session:
            write(session)

    return transaction, tries


def seen(worker_id: str) -> Callable[[Session], None]:
    return lambda session: repo.worker_seen(
        session, worker_id=worker_id, host="h", pid=1, devices=1, now=T0
    )


def workers(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return [w.id for w, _ in repo.list_workers(session, seen_since=None)]


def test_a_write_waits_out_a_lock_held_by_another_connection(url, impatient):
    transaction, tries = counted(seen("w1"), impatient)
    started = time.monotonic()
    with locked(url, HOLD_S):
        with_retry(transaction, what="test write", first_delay_s=0.02, max_delay_s=0.2)
    assert time.monotonic() - started >= HOLD_S * 0.9
    assert len(tries) > 2  # it really met the lock, more than once
    assert workers(impatient) == ["w1"]


def test_past_the_deadline_the_error_is_raised_and_nothing_written(url, impatient):
    transaction, tries = counted(seen("w1"), impatient)
    with locked(url, HOLD_S), pytest.raises(StoreUnavailableError, match="database is locked"):
        with_retry(transaction, what="test write", deadline=time.monotonic() + 0.3,
                   first_delay_s=0.02)  # fmt: skip
    assert len(tries) > 1
    assert workers(impatient) == []


def test_errors_a_retry_cannot_fix_are_raised_at_once(impatient, dataset_id):
    def duplicate(session: Session) -> None:
        repo.create_dataset(session, **dataset_fields("again"), dataset_id=dataset_id)

    transaction, tries = counted(duplicate, impatient)
    with pytest.raises(IntegrityError):
        with_retry(transaction, what="duplicate id")
    assert len(tries) == 1
