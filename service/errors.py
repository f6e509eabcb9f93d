"""One JSON shape for every error, and no stack trace ever reaches a client."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from detector import DatasetError, RecipeError
from service.store.repo import Conflict, NotFound
from service.store.retry import is_transient

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status and stable code, raised by route helpers."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.code, self.message = status_code, code, message
        self.details, self.headers = details, headers


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Where each problem is and what it is, without echoing the (possibly huge) input."""
    return [{"loc": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]


class ErrorJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: messages quote what the client sent, and a lone surrogate
    (JSON allows "\\ud800") cannot be encoded as UTF-8 but can be escaped."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return ErrorJSONResponse(body, status_code=status_code, headers=headers)


STORE_RETRY_AFTER_S = 2
_HTTP_CODES = {
    400: "bad_request",  # an unparsable body or multipart form (FastAPI's, Starlette's)
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(status.HTTP_404_NOT_FOUND, "not_found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return error_response(status.HTTP_409_CONFLICT, "conflict", str(exc))

    @app.exception_handler(RecipeError)
    async def _recipe(_: Request, exc: RecipeError) -> JSONResponse:
        return error_response(422, "invalid_recipe", str(exc))

    @app.exception_handler(DatasetError)
    async def _dataset(_: Request, exc: DatasetError) -> JSONResponse:
        return error_response(422, "invalid_dataset", str(exc), exc.report.model_dump(mode="json"))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return error_response(422, "invalid_request", "the request is malformed", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _store(_: Request, exc: Exception) -> JSONResponse:
        # A database that stayed locked past the busy timeout, restarted, or a pool with no
        # free connection: the same request succeeds later, so say so (503), never 500.
        if not is_transient(exc):
            return _unhandled(exc)
        log.warning("store busy: %s", exc)
        return error_response(
            503,
            "store_busy",
            "the database is busy; retry shortly",
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _unhandled(exc)


def _unhandled(exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error; see the server log")
