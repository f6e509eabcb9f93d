"""What the end-to-end tests share: the service in real processes (uvicorn, workers) on a real
SQLite store under a temporary data directory, and a small shapes dataset."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from detector.data.shapes import ShapesSpec, make_shapes_splits
from service.settings import hash_key

API_KEY = "test-key-0123456789"
# Generous deadlines: a busy 2-core CI machine can be many times slower than an idle one.
DEADLINE_S = 600
SIZES = {"data": {"train_min_sizes": [96], "eval_min_size": 96, "max_size": 96}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The processes' settings: short heartbeats and leases, so that recovery is quick."""
    return {
        **os.environ,
        "RETINANET_DATA_DIR": str(data_dir),
        "RETINANET_API_KEY_HASHES": hash_key(API_KEY),
        "RETINANET_HEARTBEAT_S": "0.5",
        "RETINANET_LEASE_S": "4",
        "RETINANET_POLL_S": "0.2",
    } | dict(extra or {})


def start(
    args: list[str], data_dir: Path, log: Path, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``retinanet ARGS...`` in a process of its own, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env=env(data_dir, extra_env),
            stdout=out,
            stderr=out,
        )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str) -> bool:
    """GET ``url`` answers 200 (a server not up yet answers nothing)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def up(server: subprocess.Popen[bytes], url: str) -> bool:
    """``url`` answers; fails at once if the server exited (a port taken since we picked it)."""
    assert server.poll() is None, f"the server exited with {server.returncode}; see its log"
    return answers(url)


@contextmanager
def worker(data_dir: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``retinanet worker`` process, stopped with SIGTERM on the way out."""
    process = start(["worker"], data_dir, log)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


# Fixtures under other names than the ones tests ask for, so that importing them into a test
# module (where pytest finds them) does not shadow the test's parameters.
@pytest.fixture(scope="module", name="shapes")
def shapes_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("svc_shapes")
    paths = make_shapes_splits(
        root, ShapesSpec(num_images=1, size_px=96, seed=3), splits=[("train", 48), ("val", 16)]
    )
    return {**paths, "images": root / "images"}


@pytest.fixture(name="api")
def api_fixture(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API alone (no embedded worker): tests start and kill workers themselves."""
    data_dir, port = tmp_path / "data", free_port()
    server = start(["serve", "--port", str(port), "--workers", "0"], data_dir, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(server, f"{url}/health/live"), DEADLINE_S, "the API")
        yield url, data_dir
    finally:
        server.terminate()
        server.wait(timeout=60)
