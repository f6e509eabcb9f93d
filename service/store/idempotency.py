"""``Idempotency-Key`` for every creating route: a row keeps the key and a hash of the request
that created it; the same key with the same request gets that row back, with another request
``IdempotencyConflict``. Jobs and studies both use these two functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.store.errors import IdempotencyConflict


class Keyed(Protocol):
    id: str
    idempotency_key: str | None
    request_hash: str | None


RowT = TypeVar("RowT", bound=Keyed)


def replay(existing: RowT, request_hash: str | None, what: str) -> RowT:
    """The earlier row for a reused key, or ``IdempotencyConflict`` if the request differs."""
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was used for a different request "
            f"({what} {existing.id})"
        )
    return existing


def insert_once(
    session: Session,
    row: RowT,
    *,
    by_key: Callable[[str], RowT | None],
    what: str,
    then: Callable[[], None] = lambda: None,
) -> tuple[RowT, bool]:
    """Add ``row`` (and run ``then``: rows that belong to it) in a savepoint; returns
    ``(row, True)``, or ``(winner, False)`` when a concurrent request with the same key
    committed first (the unique key refused this one)."""
    try:
        # A savepoint, so that losing a race on the unique key leaves the caller's transaction
        # usable and the winner's row can be returned.
        with session.begin_nested():
            session.add(row)
            session.flush()
            then()
    except IntegrityError:
        existing = by_key(row.idempotency_key) if row.idempotency_key else None
        if existing is None:
            raise
        return replay(existing, row.request_hash, what), False
    return row, True
