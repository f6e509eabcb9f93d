"""One JSON shape for every error, and no stack trace ever reaches a client."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from detector import DatasetError, RecipeError
from service.refusal import NotAllowed, Refusal, TooLarge, Unsupported
from service.schemas import DatasetReport
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


def validation_details(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    """Where each problem is, what it is and its pydantic type, without echoing the (possibly
    huge) input: the one formatting of validation errors in answers."""
    return [
        {"loc": list(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]


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


def refusal_status(exc: Refusal) -> int:
    """The HTTP status of a domain refusal: its kind decides, whatever module raised it."""
    for kind, status_code in _REFUSALS:
        if isinstance(exc, kind):
            return status_code
    return 422  # readable but invalid input


_REFUSALS: tuple[tuple[type[Refusal], int], ...] = (
    (TooLarge, 413),
    (Unsupported, 415),
    (NotAllowed, 403),
)
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

    @app.exception_handler(Refusal)
    async def _refusal(_: Request, exc: Refusal) -> JSONResponse:
        return error_response(refusal_status(exc), exc.code, exc.message, exc.details)

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
        report = DatasetReport.model_validate(exc.report).model_dump(mode="json")
        return error_response(422, "invalid_dataset", str(exc), report)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc)
        return error_response(422, "invalid_request", "the request is malformed", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

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


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette's 405 names only those of the first
    route whose path matched (``/v1/models/{id}`` has a GET route and a DELETE route)."""
    path = request.url.path
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):  # included routers unfolded
        if route.path and compile_path(route.path)[0].match(path):
            methods |= route.methods or set()
    return sorted(methods)


def _unhandled(exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal error; see the server log")
