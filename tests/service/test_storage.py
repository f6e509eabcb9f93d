"""Crash leftovers of the API (upload staging folders, half-written exports) are removed when
the app starts again; fresh ones, possibly a live request's on another host, are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.storage import LEFTOVER_AGE_S, Storage


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_leftovers_of_killed_requests_go_at_the_next_start(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "data")
    old_upload = storage.staging_dir()
    (old_upload / "upload.zip").write_bytes(b"PK partial")
    (old_upload / "dataset").mkdir()
    fresh_upload = storage.staging_dir()
    export = storage.export_file("m1", "onnx")
    export.parent.mkdir(parents=True)
    export.write_bytes(b"a finished export")
    half_export = export.with_name(f".{export.name}.0123.tmp")
    half_export.write_bytes(b"half")
    for path in (old_upload, half_export, export):
        _age(path, LEFTOVER_AGE_S + 60)
    with TestClient(create_app(Settings(data_dir=storage.root, auth_disabled=True))) as client:
        assert client.get("/health/live").status_code == 200
    assert not old_upload.exists() and not half_export.exists()
    assert fresh_upload.is_dir()  # young: it may be a live request's
    assert export.read_bytes() == b"a finished export"
