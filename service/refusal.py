"""``Refusal``: the base of the domain's "no, because..." errors (an archive, an image, a path
that is refused), each with a stable code and the details that name what was refused.

They carry no HTTP status: the HTTP layer (``service.errors``) maps each kind to one, so the
domain modules can be used by the command line or a worker as well.
"""

from __future__ import annotations

from typing import Any


class Refusal(Exception):  # noqa: N818 (a kind of refusal, as NotFound is)
    """Input the service will not take; ``code`` is stable, ``details`` names the culprit."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class TooLarge(Refusal):
    """Input over a configured limit (bytes, files, pixels)."""


class Unsupported(Refusal):
    """Input of a kind or format the service does not read."""


class NotAllowed(Refusal):
    """A request the configuration forbids (a path outside the allowed root)."""
