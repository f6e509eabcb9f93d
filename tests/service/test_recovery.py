"""No healthy job is lost: real workers killed, stopped and restarted around real training.

Every test runs the service in real processes on a real SQLite store, trains the shapes
recipe at 96 px, and kills with real signals. Progress is read from the job row
(``checkpoint_iteration``: the iteration of the newest ``last.pt`` the training reported).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from detector.engine.checkpoint import load_checkpoint
from service.client import Client

from .e2e_support import (  # noqa: F401  (fixtures)
    API_KEY,
    DEADLINE_S,
    SIZES,
    api_fixture,
    free_port,
    shapes_fixture,
    start,
    up,
    wait_for,
)
from .store_support import process_state

# 8 epochs of 6 iterations, a checkpoint every 2: progress between any two kills. A frozen
# backbone halves the step and the checkpoint (no optimiser state for it) on 2 cores.
RECIPE: dict[str, Any] = {
    **SIZES,
    "model": {"trainable_backbone_layers": 0},
    "solver": {"epochs": 8, "steps": [6]},
    "checkpoint_period_iters": 2,
    "eval": {"period_epochs": 4},
}
KILLS = 10
# The killed job trains longer: ten attempts that each pass a checkpoint, with room to spare
# on a slow machine (a kill seldom lands more than a few checkpoints after the last one).
KILLED_EPOCHS = 10
WORKER_KILLS = {2, 5, 8}  # these kills take the worker itself (its child dies with it)


def job_row(data_dir: Path, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "retinanet.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def events(data_dir: Path, job_id: str, kind: str, *, after_id: int = 0) -> list[dict[str, Any]]:
    """The job's events of ``kind``, oldest first, each payload with its event ``_id``."""
    with sqlite3.connect(data_dir / "retinanet.db") as db:
        rows = db.execute(
            "SELECT id, payload FROM job_events WHERE job_id = ? AND kind = ? AND id > ?"
            " ORDER BY id",
            (job_id, kind, after_id),
        ).fetchall()
    return [{**json.loads(payload), "_id": event_id} for event_id, payload in rows]


def training_child(worker_pid: int) -> int | None:
    """The pid of the worker's training process (a spawned child), if it has one now."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == worker_pid and b"spawn_main" in cmdline:
            return int(entry.name)
    return None


def gone(pid: int) -> bool:
    """The process ended (reaped, or a zombie its parent has yet to reap)."""
    return process_state(pid) in (None, "Z")


def write_lock_free(db_path: Path) -> bool:
    """No connection to the SQLite file holds its write lock now (a write could start)."""
    db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        return False
    finally:
        db.close()


def freeze_between_writes(pids: tuple[int, ...], db_path: Path) -> None:
    """SIGSTOP ``pids`` at a moment when none of them is inside a write transaction.

    A process frozen inside one keeps SQLite's write lock until it resumes or dies, and no
    other process can write meanwhile: not even to take the job over (SQLite's limit, in
    docs/reliability.md; PostgreSQL cuts such a transaction off after a lease). What this
    test checks is the fencing of a frozen worker's late writes, so it freezes between them.
    """

    def stopped() -> bool:  # state T: stopped, not merely sent the signal
        return all(process_state(pid) == "T" for pid in pids)

    for _ in range(100):
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        wait_for(stopped, 10, "the processes to stop")
        if write_lock_free(db_path):
            return
        for pid in reversed(pids):
            os.kill(pid, signal.SIGCONT)
        time.sleep(random.uniform(0.02, 0.2))
    raise AssertionError("the worker held the write lock at every one of 100 stops")


def child_of(worker: subprocess.Popen[bytes]) -> int:
    found: list[int] = []

    def running() -> bool:
        assert worker.poll() is None, "the worker died"
        pid = training_child(worker.pid)
        found[:] = [] if pid is None else [pid]
        return pid is not None

    wait_for(running, DEADLINE_S, "a training process")
    return found[0]


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_past(data_dir: Path, job_id: str, iteration: int) -> Callable[[], bool]:
    """A predicate: the job reported a checkpoint beyond ``iteration``."""
    return lambda: job_row(data_dir, job_id)["checkpoint_iteration"] > iteration


def starts(data_dir: Path, job_id: str, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` attempts have started training."""
    return lambda: len(events(data_dir, job_id, "start")) == count


def datasets(client: Client, shapes: dict[str, Path]) -> dict[str, Any]:
    train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
    val = client.upload_dataset(shapes["val"], shapes["images"], name="val")
    return {"train_dataset_id": train["id"], "val_dataset_id": val["id"]}


@pytest.mark.slow
def test_ten_sigkills_lose_nothing_and_end_with_the_uninterrupted_weights(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    rng = random.Random(2026)
    with Client(url, api_key=API_KEY) as client:
        overrides = {**RECIPE, "solver": {"epochs": KILLED_EPOCHS, "steps": [8]}}
        body = {**datasets(client, shapes), "recipe": "shapes_tiny", "recipe_overrides": overrides}
        job_id = client.create_job(**body)["id"]
        folder = data_dir / "jobs" / job_id / "checkpoints"
        planted = folder / ".last.pt.planted.tmp"
        started = time.monotonic()
        worker = start(["worker"], data_dir, tmp_path / "worker0.log")
        killed: list[tuple[str, int]] = []
        try:
            for k in range(KILLS):
                before = job_row(data_dir, job_id)["checkpoint_iteration"]
                wait_for(
                    checkpoint_past(data_dir, job_id, before),
                    DEADLINE_S,
                    f"a checkpoint past iteration {before} (kill {k + 1})",
                )
                child = child_of(worker)
                time.sleep(rng.uniform(0.0, 1.5))  # anywhere: a step, a save, an eval, a write
                at = job_row(data_dir, job_id)["checkpoint_iteration"]
                assert job_row(data_dir, job_id)["status"] == "running", "finished too soon"
                if k in WORKER_KILLS:
                    worker.kill()
                    worker.wait()
                    wait_for(partial(gone, child), 30, "the orphaned child to die with it")
                    planted.write_bytes(b"a save cut off midway")  # as a kill mid-save leaves
                    worker = start(["worker"], data_dir, tmp_path / f"worker{k + 1}.log")
                    killed.append(("worker", at))
                else:
                    os.kill(child, signal.SIGKILL)
                    wait_for(partial(gone, child), 30, "the child to die")
                    killed.append(("child", at))
            done = client.wait(job_id, timeout_s=DEADLINE_S)
            wall_s = time.monotonic() - started
            assert done["status"] == "succeeded", (done["error"], client.logs(job_id, tail=60))
            reference = client.create_job(**body)["id"]
            assert client.wait(reference, timeout_s=DEADLINE_S)["status"] == "succeeded"
        finally:
            worker.terminate()
            worker.wait(timeout=60)

        history = client.metrics(job_id)["history"]
        model = client.model_of_job(job_id)
    assert [h["epoch"] for h in history] == list(range(1, KILLED_EPOCHS + 1))  # none lost
    assert done["attempt"] == KILLS + 1 and len(events(data_dir, job_id, "start")) == KILLS + 1
    assert done["progress"]["iteration"] == done["progress"]["max_iters"] == 6 * KILLED_EPOCHS
    assert model["job_id"] == job_id
    assert not planted.exists() and not list(folder.glob(".*.tmp"))
    ref_folder = data_dir / "jobs" / reference / "checkpoints"
    final = same_tensors(
        load_checkpoint(folder / "last.pt")["model"],
        load_checkpoint(ref_folder / "last.pt")["model"],
    )
    model_file = same_tensors(
        load_file(data_dir / "jobs" / job_id / "model.safetensors"),
        load_file(data_dir / "jobs" / reference / "model.safetensors"),
    )
    print(
        f"\nkills survived: {len(killed)} ({sum(w == 'worker' for w, _ in killed)} of the worker),"
        f" at checkpoints {[at for _, at in killed]}; attempts {done['attempt']};"
        f" wall {wall_s:.0f}s; final weights equal: {final}; model file equal: {model_file}"
    )
    assert final and model_file


@pytest.mark.slow
def test_a_job_killed_again_and_again_without_progress_fails_with_the_reason(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    recipe = {**RECIPE, "checkpoint_period_iters": 3}
    with Client(url, api_key=API_KEY) as client:
        body = {**datasets(client, shapes), "recipe": "shapes_tiny", "recipe_overrides": recipe}
        job = client.create_job(**body)
        job_id = job["id"]
        worker = start(["worker"], data_dir, tmp_path / "worker.log")
        try:
            wait_for(
                lambda: job_row(data_dir, job_id)["checkpoint_iteration"] >= 3,
                DEADLINE_S,
                "a first checkpoint",
            )
            os.kill(child_of(worker), signal.SIGKILL)  # after progress: not counted
            for attempt in range(2, job["max_attempts"] + 2):
                # Each later attempt dies as soon as it has resumed, before its next checkpoint.
                wait_for(starts(data_dir, job_id, attempt), DEADLINE_S, f"attempt {attempt}")
                os.kill(child_of(worker), signal.SIGKILL)
            failed = client.wait(job_id, timeout_s=DEADLINE_S)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    resumed_at = events(data_dir, job_id, "start")[-1]["iteration"]
    assert resumed_at >= 3
    assert failed["status"] == "failed" and failed["attempt"] == job["max_attempts"] + 1
    assert failed["error"].startswith(
        f"training process killed by signal 9: {job['max_attempts']} attempts in a row ended "
        f"without progress (resuming from iteration {resumed_at}"
    ), failed["error"]


@pytest.mark.slow
def test_a_worker_stopped_past_its_lease_writes_nothing_when_it_wakes(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    with Client(url, api_key=API_KEY) as client:
        body = {**datasets(client, shapes), "recipe": "shapes_tiny", "recipe_overrides": RECIPE}
        job_id = client.create_job(**body)["id"]
        first = start(["worker"], data_dir, tmp_path / "worker1.log")
        second: subprocess.Popen[bytes] | None = None
        try:
            wait_for(
                lambda: job_row(data_dir, job_id)["checkpoint_iteration"] >= 4,
                DEADLINE_S,
                "progress",
            )
            child = child_of(first)
            freeze_between_writes((first.pid, child), data_dir / "retinanet.db")
            stopped = job_row(data_dir, job_id)
            owner, stopped_iteration = stopped["lease_owner"], stopped["checkpoint_iteration"]
            stopped_iteration = max(stopped_iteration, json.loads(stopped["progress"])["iteration"])
            second = start(["worker"], data_dir, tmp_path / "worker2.log")
            # The lease (4 s) runs out; the second worker takes the job and goes past the
            # point where the first stopped, so a late write of the first would show.
            wait_for(
                lambda: (
                    job_row(data_dir, job_id)["lease_owner"] not in (None, owner)
                    and job_row(data_dir, job_id)["checkpoint_iteration"] > stopped_iteration + 2
                ),
                DEADLINE_S,
                "the second worker to take over and progress",
            )
            n_status = len(events(data_dir, job_id, "status"))
            for pid in (child, first.pid):
                os.kill(pid, signal.SIGCONT)
            wait_for(lambda: gone(child), 30, "the first worker's child to stop")
            done = client.wait(job_id, timeout_s=DEADLINE_S)
            assert first.poll() is None, "the first worker goes on (idle), it is not dead"
        finally:
            for process in (first, second):
                if process is not None:
                    # A failure above may leave the first worker stopped: SIGTERM would wait.
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
                    try:
                        process.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert b"lease lost" in (tmp_path / "worker1.log").read_bytes()
    statuses = [e["status"] for e in events(data_dir, job_id, "status")]
    assert statuses == ["running", "queued", "running", "succeeded"], statuses
    assert len(statuses) == n_status + 1  # only the second worker's "succeeded" came after
    second_start = events(data_dir, job_id, "start")[1]
    steps = [e["iteration"] for e in events(data_dir, job_id, "step", after_id=second_start["_id"])]
    assert steps == sorted(steps), "a step of the fenced-out attempt was written after takeover"
    assert steps[0] > second_start["iteration"]


@pytest.mark.slow
def test_serve_restarts_a_dead_worker_and_its_job_resumes_at_once(
    shapes: dict[str, Path], tmp_path: Path
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    # A long lease: the job comes back because its worker's death was seen, not by expiry.
    long_lease = {"RETINANET_LEASE_S": "600"}
    server = start(["serve", "--port", str(port)], data_dir, tmp_path / "serve.log", long_lease)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(server, f"{url}/health/ready"), DEADLINE_S, "the embedded worker")
        with Client(url, api_key=API_KEY) as client:
            overrides = {**RECIPE, "solver": {"epochs": 3, "steps": [2]}}
            body = {**datasets(client, shapes), "recipe": "shapes_tiny"}
            job_id = client.create_job(**body, recipe_overrides=overrides)["id"]
            wait_for(
                lambda: job_row(data_dir, job_id)["checkpoint_iteration"] >= 2,
                DEADLINE_S,
                "a checkpoint",
            )
            (dead,) = client.workers()["data"]
            assert dead["job_id"] == job_id
            os.kill(dead["pid"], signal.SIGKILL)
            killed = time.monotonic()
            seen: list[tuple[float, int, list[str]]] = []  # (s after the kill, ready, live ids)

            def replaced() -> bool:
                ready = httpx.get(f"{url}/health/ready", timeout=5).status_code
                live = [w["id"] for w in client.workers()["data"]]
                seen.append((time.monotonic() - killed, ready, live))
                return any(i != dead["id"] for i in live)

            wait_for(replaced, DEADLINE_S, "a new worker")
            (new,) = client.workers()["data"]
            ready_again = httpx.get(f"{url}/health/ready", timeout=5).status_code
            stale = {w["id"]: w["alive"] for w in client.workers(stale=True)["data"]}
            done = client.wait(job_id, timeout_s=DEADLINE_S)
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
    # Within two heartbeats the dead worker is listed no more and the API is not ready;
    # ready again once the new worker runs.
    assert all(dead["id"] not in live for t, _, live in seen if t > 1.0), seen
    assert 503 in [r for _, r, _ in seen] and ready_again == 200, seen
    assert new["id"] != dead["id"] and new["pid"] != dead["pid"]
    assert stale == {dead["id"]: False, new["id"]: True}
    assert done["status"] == "succeeded" and done["attempt"] == 2
    reasons = [e.get("reason") for e in events(data_dir, job_id, "status")]
    assert "worker process died (exit code -9), re-queued" in reasons
    assert events(data_dir, job_id, "start")[1]["iteration"] >= 2  # resumed, not restarted
