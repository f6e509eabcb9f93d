"""Errors of the store's repository functions (re-exported by ``repo``)."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors raised by this module."""


# The API maps these names to HTTP statuses; an "Error" suffix would only add noise there.
class NotFound(StoreError):  # noqa: N818
    """A referenced row does not exist; ``what`` names it ("job", "val dataset", ...)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")
        self.what = what
        self.ident = ident


class Conflict(StoreError):  # noqa: N818
    """The request contradicts the current state (e.g. cancelling a finished job)."""


class IdempotencyConflict(Conflict):
    """An idempotency key was reused for a different request."""
