"""Errors of the store's repository functions (re-exported by ``repo``)."""

from __future__ import annotations

from typing import TypeVar

_Row = TypeVar("_Row")


class StoreError(Exception):
    """Base of the errors raised by this module."""


# The API maps these names to HTTP statuses; an "Error" suffix would only add noise there.
class NotFound(StoreError):  # noqa: N818
    """A referenced row does not exist; ``what`` names it ("job", "val dataset", ...)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")
        self.what = what
        self.ident = ident


def found(row: _Row | None, what: str, ident: str) -> _Row:
    """``row``, or ``NotFound(what, ident)`` when the lookup found nothing."""
    if row is None:
        raise NotFound(what, ident)
    return row


class Conflict(StoreError):  # noqa: N818
    """The request contradicts the current state (e.g. cancelling a finished job)."""


class IdempotencyConflict(Conflict):
    """An idempotency key was reused for a different request."""
