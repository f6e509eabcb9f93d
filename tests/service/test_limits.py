"""Request limits while the body streams in, against a real ``retinanet serve`` over a socket:
a chunked upload with no Content-Length is cut at the limit (not received in full first), a
declared length above it is refused before a byte is read, and nothing is left behind."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import repo
from service.store.db import make_engine, session_factory

from .e2e_support import API_KEY, DEADLINE_S, free_port, start, up, wait_for
from .store_support import add_dataset, add_job

MIB = 1024 * 1024
LIMITS = {
    "RETINANET_MAX_UPLOAD_MB": "1",
    "RETINANET_MAX_JSON_KB": "4",
    "RETINANET_PREDICT_MAX_FILES": "1",
    "RETINANET_PREDICT_MAX_FILE_MB": "1",
}
BOUNDARY = "limit-test-boundary"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, int]]:
    """The API alone, with 1 MiB upload limits: its URL, data dir and pid."""
    tmp = tmp_path_factory.mktemp("limits")
    data_dir, port = tmp / "data", free_port()
    args = ["serve", "--port", str(port), "--workers", "0"]
    process = start(args, data_dir, tmp / "api.log", LIMITS)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(process, f"{url}/health/live"), DEADLINE_S, "the API")
        yield url, data_dir, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def _send_chunked(url: str, path: str, total: int) -> tuple[int, int]:
    """POST a multipart body of ``total`` zero bytes in chunks, without Content-Length; stop
    sending as soon as the server answers. Returns (status, bytes sent)."""
    parts = urlsplit(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    field = "file" if path == "/v1/datasets" else "files"
    preamble = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = b"\0" * (64 * 1024)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.settimeout(5)
        sock.sendall(head.encode() + _chunk(preamble))
        try:
            while sent < total:
                sock.sendall(_chunk(chunk))
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server answered: no point sending more
                except BlockingIOError:
                    pass
                finally:
                    sock.settimeout(5)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading
        response = _read_response(sock)
    status = int(response.split(b" ", 2)[1])
    return status, sent


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


def _deleted_files(pid: int) -> int:
    """Open descriptors of the process whose file was deleted (spooled upload parts)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += str(fd.readlink()).endswith("(deleted)")
        except OSError:
            continue
    return count


def _stored(data_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir))
        for folder in ("datasets", "staging", "models")
        for p in (data_dir / folder).glob("*")
    )


def _model_row(data_dir: Path) -> str:
    """A model row in the server's own store (its weights are never read: the body is cut
    before the model is loaded)."""
    engine = make_engine(Settings(data_dir=data_dir).db_url)
    try:
        factory = session_factory(engine)
        job_id = add_job(factory, add_dataset(factory))
        with factory.begin() as session:
            model = repo.create_model(
                session,
                job_id=job_id,
                name="limits",
                weights_path=str(data_dir / "absent.safetensors"),
                weights_sha256="0" * 64,
                weights_bytes=1,
                classes=[{"id": 1, "name": "a"}],
                recipe={},
                score_thresholds={},
                metrics=None,
                metrics_split=None,
                now=datetime.now(UTC),
            )
            return model.id
    finally:
        engine.dispose()


@pytest.mark.parametrize("route", ["datasets", "predict"])
def test_a_chunked_body_is_cut_at_the_limit_and_leaves_nothing(
    server: tuple[str, Path, int], route: str
) -> None:
    url, data_dir, pid = server
    path = "/v1/datasets" if route == "datasets" else f"/v1/models/{_model_row(data_dir)}/predict"
    before = _deleted_files(pid)
    status, sent = _send_chunked(url, path, total=256 * MIB)
    assert status == 413
    # Cut near the 1 MiB limit (socket buffers hold a few MiB), never received in full.
    assert sent < 32 * MIB, f"{sent} bytes sent before the answer"
    assert _stored(data_dir) == []
    wait_for(lambda: _deleted_files(pid) <= before, 10, "the spooled parts to be freed")


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    server: tuple[str, Path, int],
) -> None:
    url, data_dir, _ = server
    headers = {"X-API-Key": API_KEY, "Content-Length": str(5 * MIB)}
    # The head alone: a server that waited for the body would time this out.
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        lines = ["POST /v1/datasets HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines += [f"Content-Type: multipart/form-data; boundary={BOUNDARY}", "", ""]
        sock.sendall("\r\n".join(lines).encode())
        response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert _stored(data_dir) == []


def test_json_bodies_have_their_own_small_limit(server: tuple[str, Path, int]) -> None:
    url, _, _ = server
    body = {"train_dataset_id": "x", "overrides": ["a=" + "1" * 8192]}
    response = httpx.post(f"{url}/v1/jobs", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_large" and "4096" in error["message"]
    # Under the limit the same route answers as usual (here: the dataset does not exist).
    small = httpx.post(
        f"{url}/v1/jobs", json={"train_dataset_id": "x"}, headers={"X-API-Key": API_KEY}
    )
    assert small.status_code == 404


def test_an_upload_that_would_fill_the_disk_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", auth_disabled=True, min_free_disk_mb=2**40)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        files = {"file": ("a.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")}
        response = client.post("/v1/datasets", files=files)
    assert response.status_code == 507
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert json.dumps(_stored(settings.data_dir)) == "[]"


def test_the_server_still_answers_after_the_cuts(server: tuple[str, Path, int]) -> None:
    url, _, _ = server
    assert httpx.get(f"{url}/health/live").status_code == 200
