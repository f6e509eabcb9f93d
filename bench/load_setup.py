"""What ``bench/load.py`` runs against: a dataset zip, a predict image, a fresh PostgreSQL
schema, and ``retinanet serve`` in a process of its own on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.data.shapes import ShapesSpec, make_shapes_splits
from service.settings import hash_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dataset_zip(root: Path, images: int) -> bytes:
    """A small COCO dataset (shapes) as zip bytes, made once and uploaded many times."""
    paths = make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=96, seed=0), splits=[("train", images)]
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.write(paths["train"], "annotations.json")
        for entry in json.loads(paths["train"].read_text())["images"]:
            zf.write(root / "images" / entry["file_name"], f"images/{entry['file_name']}")
    return buffer.getvalue()


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh schema on the database of ``base_url`` (its search path set in the URL),
    dropped afterwards: the test role owns its database but may not create databases."""
    import psycopg
    from sqlalchemy import make_url

    url = make_url(base_url)
    schema = f"retinanet_load_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def serve(data_dir: Path, api_key: str, database_url: str | None) -> Iterator[tuple[str, Path]]:
    """``retinanet serve`` with one embedded worker; yields its URL and log file."""
    port = free_port()
    env = {
        **os.environ,
        "RETINANET_DATA_DIR": str(data_dir),
        "RETINANET_API_KEY_HASHES": hash_key(api_key),
        "RETINANET_HEARTBEAT_S": "1",
        "RETINANET_POLL_S": "0.5",
        "RETINANET_LOG_LEVEL": "WARNING",
    }
    if database_url:
        env["RETINANET_DATABASE_URL"] = database_url
    log = data_dir.parent / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_predict_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()
