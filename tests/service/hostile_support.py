"""Builders of hostile requests for ``test_hostile.py``: damaged zips, edited COCO files,
registrations, job bodies. Each builder returns a function of the test's ``Env``."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from service.settings import Settings

KEY = "hostile-test-key"
AUTH = {"X-API-Key": KEY}
JSON = {**AUTH, "Content-Type": "application/json"}
Entries = list[tuple[str, bytes]]
Request = tuple[str, str, dict[str, Any]]
"""The method, the path and the client's keyword arguments."""


@dataclass(frozen=True)
class Env:
    client: TestClient
    settings: Settings
    coco: dict[str, Any]
    entries: Entries
    """The valid dataset's zip entries: annotations.json, then images/*."""
    dataset_id: str
    """The valid dataset, uploaded before each case."""


Build = Callable[[Env], Request]


def make_zip(entries: Entries, *, link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16  # a symbolic link, as `zip -y` stores one
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _central(raw: bytearray) -> int:
    return raw.find(b"PK\x01\x02")  # the first central directory record


def flip_data(raw: bytearray) -> None:
    raw[raw.find(b"PK\x03\x04") + 50] ^= 0xFF  # inside the first member's compressed data


def method_99(raw: bytearray) -> None:
    raw[_central(raw) + 10 : _central(raw) + 12] = struct.pack("<H", 99)


def encrypted(raw: bytearray) -> None:
    raw[_central(raw) + 8] |= 0x1


def bad_utf8_name(raw: bytearray) -> None:
    central = _central(raw)
    raw[central + 9] |= 0x08  # flag bit 11: the name is UTF-8 ...
    raw[central + 46] = 0xFF  # ... and it is not


def patched(patch: Callable[[bytearray], None]) -> Build:
    def payload(env: Env) -> bytes:
        raw = bytearray(make_zip(env.entries))
        patch(raw)
        return bytes(raw)

    return upload(payload)


def upload(payload: bytes | Callable[[Env], bytes], **form: str) -> Build:
    def build(env: Env) -> Request:
        data = payload(env) if callable(payload) else payload
        files = {"file": ("d.zip", data)}
        return "POST", "/v1/datasets", {"headers": AUTH, "files": files, "data": form}

    return build


def with_entries(*extra: tuple[str, bytes]) -> Build:
    return upload(lambda env: make_zip([*env.entries, *extra]))


def coco_upload(change: Callable[[dict[str, Any]], Any]) -> Build:
    """The valid dataset with its COCO JSON changed (``change`` may return raw bytes)."""

    def payload(env: Env) -> bytes:
        changed = change(json.loads(json.dumps(env.coco)))
        text = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
        return make_zip([("annotations.json", text), *env.entries[1:]])

    return upload(payload)


def edit(section: str, **fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(coco: dict[str, Any]) -> dict[str, Any]:
        coco[section][0].update(fields)
        return coco

    return change


def big_image_upload(width: int, height: int) -> Build:
    """The valid dataset with one image swapped for a blank one of ``width`` x ``height``."""
    buffer = io.BytesIO()  # 1-bit and blank: a few kB on disk, megapixels in its header
    Image.new("1", (width, height)).save(buffer, "PNG")
    big = buffer.getvalue()
    return upload(lambda env: make_zip([*env.entries[:2], (env.entries[2][0], big)]))


def register(**body: Any) -> Build:
    full = {"name": "x", "annotations": "ds/annotations.json", "images": "ds/images", **body}
    path = "/v1/datasets/register"
    return lambda env: ("POST", path, {"headers": JSON, "content": json.dumps(full)})


def raw_body(path: str, body: bytes | str, content_type: str = "application/json") -> Build:
    headers = {**AUTH, "Content-Type": content_type}
    return lambda env: ("POST", path, {"headers": headers, "content": body})


def job(extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Build:
    """A job on the valid dataset with ``extra`` fields; JSON's NaN/Infinity pass through."""

    def build(env: Env) -> Request:
        body = json.dumps({"train_dataset_id": env.dataset_id, **(extra or {})})
        return "POST", "/v1/jobs", {"headers": {**JSON, **(headers or {})}, "content": body}

    return build


def recipe(*overrides: str) -> Build:
    return job({"overrides": list(overrides)})


def multipart(files: Any) -> Build:
    return lambda env: ("POST", "/v1/datasets", {"headers": AUTH, "files": files})


def get(path: str, **headers: str) -> Build:
    return lambda env: ("GET", path, {"headers": {**AUTH, **headers}})


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth
