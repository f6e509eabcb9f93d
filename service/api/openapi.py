"""The OpenAPI document as the service answers: generated from the routes, then told what
FastAPI cannot know from a function signature.

- Every error answer is the service's ``ErrorBody`` as ``application/json``, validation (422)
  included (FastAPI documents its own ``HTTPValidationError``, which the handlers in
  ``service.errors`` never send), also on routes whose success is a file, a PNG, text or an
  event stream.
- Routes with a body can answer 400 (unparsable) and 413 (``service.api.limits`` cuts bodies
  at their limit).
- The limits that come from settings (files per predict request, their size) are filled in
  from the settings this app runs with.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.settings import Settings

_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_RENAMED = {"Body_upload_dataset": "DatasetUpload"}
"""FastAPI names a form's schema after the route function; clients see this name."""


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """``app.openapi()`` (and ``/openapi.json``) return the corrected document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            app.openapi_schema = corrected(doc, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def corrected(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    for operation in _operations(doc):
        responses: dict[str, Any] = operation["responses"]
        if "requestBody" in operation:
            responses.setdefault("400", {"description": "the body cannot be parsed"})
            responses.setdefault("413", {"description": "the request body is over its limit"})
        if operation.get("parameters") or "requestBody" in operation:
            responses["422"] = {"description": "the request is malformed (details name each field)"}
        for status, response in responses.items():
            if int(status) >= 400:
                response["content"] = {"application/json": {"schema": _error_schema(response)}}
    schemas: dict[str, Any] = doc["components"]["schemas"]
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    _predict_limits(schemas["PredictForm"], settings)
    for schema in schemas.values():
        _portable(schema)
    return _renamed(doc)


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in doc["paths"].values() for op in path.values()]


def _error_schema(response: dict[str, Any]) -> dict[str, Any]:
    """The declared JSON schema of an error answer (``/health/ready``'s 503 has its own), else
    ``ErrorBody``; a schema declared under another media type (FastAPI puts the success's
    there) is the error body's, sent as JSON."""
    content: dict[str, Any] = response.get("content") or {}
    declared: dict[str, Any] = content.get("application/json") or next(iter(content.values()), {})
    schema: dict[str, Any] = declared.get("schema") or _ERROR
    return schema


def _portable(schema: Any) -> None:
    """Written so that tools made for OpenAPI 3.0 read it alike: file fields also get
    ``format: binary`` (``contentMediaType`` alone reads as a plain string to generators), and
    fixed-length tuples of one item type (a bbox, an input size) become ``items`` with a length
    instead of ``prefixItems`` (schemathesis's response check refused those)."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "contentMediaType" in schema:
            schema["format"] = "binary"
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix and all(item == prefix[0] for item in prefix):
            schema["items"] = schema.pop("prefixItems")[0]
        for value in schema.values():
            _portable(value)
    elif isinstance(schema, list):
        for value in schema:
            _portable(value)


def _predict_limits(form: dict[str, Any], settings: Settings) -> None:
    files = form["properties"]["files"]
    files["maxItems"] = settings.predict_max_files
    files["description"] = (
        f"the images (JPEG, MPO, PNG, BMP, WebP, TIFF): at most {settings.predict_max_files}, "
        f"each at most {settings.predict_max_file_mb} MiB and {settings.predict_max_pixels} "
        "pixels (413 beyond)"
    )


def _renamed(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc["components"]["schemas"]
    for old, new in _RENAMED.items():
        if old in schemas:
            schemas[new] = schemas.pop(old)
            schemas[new]["title"] = new
    for operation in _operations(doc):
        for media in operation.get("requestBody", {}).get("content", {}).values():
            ref = media.get("schema", {}).get("$ref", "")
            name = ref.rsplit("/", 1)[-1]
            if name in _RENAMED:
                media["schema"]["$ref"] = f"#/components/schemas/{_RENAMED[name]}"
    return doc
