"""Request-size limits, applied while a body arrives, and the free-disk check for uploads.

Every request body is counted as it is received and cut at its route's limit with a 413
(Starlette's ``RequestBodyLimitMiddleware``; a Content-Length above the limit is refused before
a byte is read). Multipart parts beyond the in-memory threshold spool to anonymous temporary
files, which the operating system frees when the cut request drops them: nothing partial
stays on disk. The limits come from settings, so they are chosen per request here rather than
fixed in route decorators.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path
from typing import Final

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ApiError, error_response
from service.settings import Settings

MIB: Final = 1024 * 1024
MULTIPART_OVERHEAD: Final = 64 * 1024
"""Room for multipart boundaries, part headers and the small form fields."""
UPLOAD_PATH: Final = "/v1/datasets"
_PREDICT: Final = re.compile(r"^/v1/models/[^/]+/predict(/png)?$")


def is_upload(method: str, path: str) -> bool:
    return method == "POST" and path == UPLOAD_PATH


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The most bytes a request body to ``method path`` may have."""
    if is_upload(method, path):
        return settings.max_upload_mb * MIB + MULTIPART_OVERHEAD
    if method == "POST" and _PREDICT.match(path):
        return settings.predict_max_files * settings.predict_max_file_mb * MIB + MULTIPART_OVERHEAD
    return settings.max_json_kb * 1024


class BodyLimits:
    """ASGI middleware: each HTTP request gets the body limit of its route."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self.settings, scope["method"], scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte is read
            message = f"the request body is {declared} bytes; the limit here is {limit}"
            await error_response(413, "too_large", message)(scope, receive, send)
            return
        if is_upload(scope["method"], scope["path"]):
            # Before the body is received (FastAPI reads a form before the route runs): an
            # upload that cannot fit is refused without writing its spooled parts to disk.
            try:
                length = int(declared) if declared.isdigit() else None
                check_disk_space(self.settings.data_dir, length, self.settings)
            except ApiError as exc:
                await error_response(exc.status_code, exc.code, exc.message)(scope, receive, send)
                return
        await RequestBodyLimitMiddleware(self.app, max_body_size=limit)(scope, receive, send)


def check_disk_space(root: Path, needed: int | None, settings: Settings) -> None:
    """507 unless ``needed`` bytes fit under ``root`` with ``RETINANET_MIN_FREE_DISK_MB`` left
    over (``None``: the size is not known yet; only the reserve is checked)."""
    free = shutil.disk_usage(root).free
    reserve = settings.min_free_disk_mb * MIB
    if free - (needed or 0) < reserve:
        wanted = "" if needed is None else f"{needed} bytes needed, "
        raise ApiError(
            507,
            "insufficient_storage",
            f"not enough disk space for this upload ({wanted}{free} free, "
            f"{reserve} kept in reserve)",
        )


def unpacked_size(archive: Path) -> int:
    """What the zip's members add up to, from its directory (0 when it is no zip: unpacking
    then refuses it with the reason)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0
