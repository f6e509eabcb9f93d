"""The error body of every answer that is not a success, ``{"error": {"code", "message",
"details"}}``, and the shapes its ``details`` take, by code (documented on every route)."""

from __future__ import annotations

from pydantic import Field

from detector import ParityReport
from service.schemas import Body, DatasetReport


class FieldError(Body):
    """One problem of a malformed request: where it is and what is wrong."""

    loc: list[str | int] = Field(description='where: e.g. ["body", "overrides", 0]')
    message: str
    type: str = Field(description="pydantic's error type, e.g. missing, greater_than_equal")


class ArchiveEntry(Body):
    """The zip entry an archive refusal is about (None: the archive as a whole)."""

    entry: str | None


class RecipeKeys(Body):
    """The dotted recipe keys a refusal is about (a study's grid, initial weights)."""

    keys: list[str] = Field(description='e.g. ["loss.gamma"] or ["model.weights"]')


class ErrorDetail(Body):
    code: str = Field(description="stable, for programs: not_found, invalid_request, ...")
    message: str = Field(description="for people")
    details: list[FieldError] | DatasetReport | ParityReport | ArchiveEntry | RecipeKeys | None = (
        Field(
            default=None,
            description="what was refused, by code: invalid_request: the fields; invalid_dataset:"
            " the validation report; export_mismatch: the parity report; invalid_archive,"
            " unsafe_archive...: the entry; invalid_grid, too_many_jobs, invalid_recipe (weights):"
            " the recipe keys; otherwise none",
        )
    )


class ErrorBody(Body):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail
