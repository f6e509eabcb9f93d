"""The whole flow over real HTTP: uvicorn and workers in real processes, a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from detector import local_devices
from detector.engine.checkpoint import load_checkpoint
from service.client import ApiClientError, Client

from .e2e_support import API_KEY, DEADLINE_S, SIZES, api_fixture, shapes_fixture  # noqa: F401
from .e2e_support import free_port as _free_port
from .e2e_support import start as _start
from .e2e_support import up as _up
from .e2e_support import wait_for as _wait
from .e2e_support import worker as _worker


@pytest.mark.slow
def test_upload_train_follow_and_read_map(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    assert httpx.get(f"{url}/v1/jobs").status_code == 401
    assert httpx.get(f"{url}/health/ready").status_code == 503  # no worker yet
    with _worker(data_dir, tmp_path / "worker.log"), Client(url, api_key=API_KEY) as client:
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        val = client.upload_dataset(shapes["val"], shapes["images"], name="val")
        assert train["num_images"] == 48 and set(train["class_counts"]) == {
            "circle",
            "square",
            "triangle",
        }
        job = client.create_job(
            train_dataset_id=train["id"], val_dataset_id=val["id"], recipe="shapes_tiny",
            recipe_overrides={**SIZES, "eval": {"period_epochs": 10}}, idempotency_key="job-1",
        )  # fmt: skip
        again = client.create_job(
            train_dataset_id=train["id"], val_dataset_id=val["id"], recipe="shapes_tiny",
            recipe_overrides={**SIZES, "eval": {"period_epochs": 10}}, idempotency_key="job-1",
        )  # fmt: skip
        assert again["id"] == job["id"]
        kinds = [e["event"] for e in client.events(job["id"])]
        assert kinds.count("epoch") == 20 and "step" in kinds and "end" in kinds
        done = client.wait(job["id"], timeout_s=DEADLINE_S)
        assert done["status"] == "succeeded" and done["attempt"] == 1, client.logs(job["id"])
        history = [(e["kind"], e["status"], e["iteration"]) for e in client.history(job["id"])]
        assert history == [
            ("status", "running", None),
            ("start", None, 0),
            ("status", "succeeded", 120),
        ]
        metrics = client.metrics(job["id"])
        assert len(metrics["history"]) == 20 and set(metrics["latest"]["summary"]) >= {
            "AP",
            "AP50",
            "ARl",
        }
        assert metrics["latest"]["summary"]["AP50"] > 0.15  # an untrained model scores < 0.02
        per_class = {c["name"]: c for c in metrics["latest"]["per_class"]}
        assert set(per_class) == {"circle", "square", "triangle"} and "AR100" in per_class["circle"]
        assert "epoch 20 done" in client.logs(job["id"])
        assert httpx.get(f"{url}/health/ready").status_code == 200
        with pytest.raises(ApiClientError) as err:
            client.cancel(job["id"])
        assert err.value.status == 409

        # The job's model, over real HTTP, detects as `retinanet predict` does on its file.
        model = client.model_of_job(job["id"])
        assert model["metrics_split"] == "val" and len(model["classes"]) == 3
        weights = client.download(f"/v1/models/{model['id']}/weights", tmp_path / "m.safetensors")
        image = sorted(shapes["images"].glob("val_*.png"))[0]
        served = client.predict(model["id"], [image], score_threshold=0.1)["images"][0]
        cli = subprocess.run(
            [sys.executable, "-m", "service.cli", "predict", str(weights), str(image),
             "--score-threshold", "0.1"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        # The service runs the network in onnxruntime on the CPU (RETINANET_PREDICT_RUNTIME),
        # the CLI in PyTorch: the same detections, to float precision.
        ours = json.loads(cli.stdout)[0]["detections"]
        assert served["detections"], "the trained model finds shapes"
        assert [d["category_id"] for d in served["detections"]] == [d["category_id"] for d in ours]
        for got, want in zip(served["detections"], ours, strict=True):
            assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-2)
            assert got["score"] == pytest.approx(want["score"], abs=1e-4)

        # Anchors far too large for 96 px shapes: the job trains, and its history says why it
        # will learn little (the anchor fit's warning, as the trainer printed it).
        far = {
            **SIZES,
            "solver": {"epochs": 1, "steps": []},
            "model": {"anchor_sizes": [512, 640, 768, 896, 1024]},
        }
        weak = client.create_job(
            train_dataset_id=train["id"], recipe="shapes_tiny", recipe_overrides=far
        )
        assert client.wait(weak["id"], timeout_s=DEADLINE_S)["status"] == "succeeded"
        (start,) = [e for e in client.history(weak["id"]) if e["kind"] == "start"]
        assert start["message"].startswith("anchor fit at IoU >=") and "<-- LOW" in start["message"]


@pytest.mark.slow
def test_a_job_on_two_processes_trains_data_parallel(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    with _worker(data_dir, tmp_path / "worker.log"), Client(url, api_key=API_KEY) as client:
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        val = client.upload_dataset(shapes["val"], shapes["images"], name="val")
        # Short: that two processes learn as one does is tests/detector/test_distributed.py's
        # to show; here, that a job asking for two runs on two and ends like any other.
        job = client.create_job(
            train_dataset_id=train["id"], val_dataset_id=val["id"], recipe="shapes_tiny",
            recipe_overrides={
                **SIZES, "solver": {"epochs": 4, "steps": [3], "warmup_iters": 4},
                "eval": {"period_epochs": 2},
            },
            devices=2,
        )  # fmt: skip
        assert job["devices"] == 2
        done = client.wait(job["id"], timeout_s=DEADLINE_S)
        assert done["status"] == "succeeded", client.logs(job["id"], tail=80)
        events = list(client.events(job["id"]))
        starts = [e["data"] for e in events if e["event"] == "start"]
        assert [s["processes"] for s in starts] == [2]
        assert sum(e["event"] == "epoch" for e in events) == 4  # rank 0 alone records
        history = client.metrics(job["id"])["history"]
        losses = [sum(h["train_losses"].values()) for h in history]
        assert len(losses) == 4 and losses[-1] < losses[0], losses
        assert set(history[-1]["metrics"]["summary"]) >= {"AP", "AP50"}
        assert client.model_of_job(job["id"])["metrics_split"] == "val"


@pytest.mark.slow
def test_sigkilled_worker_job_resumes_on_another(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    with Client(url, api_key=API_KEY) as client:
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        job = client.create_job(
            train_dataset_id=train["id"], recipe="shapes_tiny", holdout_fraction=0.25,
            recipe_overrides={
                **SIZES, "solver": {"epochs": 6, "steps": [5]}, "checkpoint_period_iters": 5
            },
        )  # fmt: skip
        first = _start(["worker"], data_dir, tmp_path / "worker1.log")
        checkpoint = data_dir / "jobs" / job["id"] / "checkpoints" / "last.pt"
        _wait(
            lambda: (
                checkpoint.exists()
                and (client.job(job["id"])["progress"] or {}).get("iteration", 0) >= 7
            ),
            DEADLINE_S,
            "a checkpoint",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert client.job(job["id"])["status"] == "running"  # until its lease expires
        with _worker(data_dir, tmp_path / "worker2.log"):
            done = client.wait(job["id"], timeout_s=DEADLINE_S)
        assert done["status"] == "succeeded" and done["attempt"] == 2, client.logs(job["id"])
        starts = [e["data"]["iteration"] for e in client.events(job["id"]) if e["event"] == "start"]
        assert starts[0] == 0 and starts[1] >= 5  # the second attempt resumed from a checkpoint
        assert done["progress"]["iteration"] == done["progress"]["max_iters"]
        assert len(client.metrics(job["id"])["history"]) == 6


@pytest.mark.slow
def test_deterministic_failure_fails_once_and_cancel_stops_a_running_job(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path
) -> None:
    url, data_dir = api
    with _worker(data_dir, tmp_path / "worker.log"), Client(url, api_key=API_KEY) as client:
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        diverging = client.create_job(
            train_dataset_id=train["id"], recipe="shapes_tiny", priority=10,
            overrides=["solver.optimizer=sgd", "solver.lr=1e6", "solver.warmup_iters=0",
                       "solver.clip_grad_norm=null", "data.train_min_sizes=[96]",
                       "data.eval_min_size=96", "data.max_size=96"],
        )  # fmt: skip
        long = client.create_job(
            train_dataset_id=train["id"], recipe="shapes_tiny", recipe_overrides=SIZES
        )
        failed = client.wait(diverging["id"], timeout_s=DEADLINE_S)
        assert failed["status"] == "failed" and failed["attempt"] == 1
        assert "non-finite" in failed["error"] and "iteration" in failed["error"]
        _wait(
            lambda: (client.job(long["id"])["progress"] or {}).get("iteration", 0) >= 3,
            DEADLINE_S,
            "progress",
        )
        client.cancel(long["id"])
        cancelled = client.wait(long["id"], timeout_s=DEADLINE_S)
        assert cancelled["status"] == "cancelled" and cancelled["error"] is None
        assert (data_dir / "jobs" / long["id"] / "checkpoints" / "last.pt").exists()
        assert cancelled["progress"]["iteration"] < cancelled["progress"]["max_iters"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_sigterm_checkpoints_and_releases_for_the_next_worker(
    api: tuple[str, Path], shapes: dict[str, Path], tmp_path: Path, devices: int
) -> None:
    """With 2 devices, SIGTERM reaches both ranks; they stop at the same step, rank 0 writes."""
    url, data_dir = api
    with Client(url, api_key=API_KEY) as client:
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        job = client.create_job(
            train_dataset_id=train["id"], recipe="shapes_tiny", devices=devices,
            recipe_overrides={
                **SIZES, "solver": {"epochs": 4, "steps": [3]}, "checkpoint_period_iters": 1000
            },
        )  # fmt: skip
        first = _start(["worker"], data_dir, tmp_path / "worker1.log")
        _wait(
            lambda: (client.job(job["id"])["progress"] or {}).get("iteration", 0) >= 2,
            DEADLINE_S,
            "progress",
        )
        first.terminate()  # SIGTERM: the child stops after its step and writes last.pt; released
        assert first.wait(timeout=120) == 0
        released = client.job(job["id"])
        assert released["status"] == "queued" and released["attempt"] == 1
        stopped_at = load_checkpoint(data_dir / "jobs" / job["id"] / "checkpoints" / "last.pt")[
            "state"
        ]["iteration"]
        # No periodic checkpoint was due: this one was written on SIGTERM, before the end.
        assert 2 <= stopped_at < 24
        with _worker(data_dir, tmp_path / "worker2.log"):
            done = client.wait(job["id"], timeout_s=DEADLINE_S)
        assert done["status"] == "succeeded" and done["attempt"] == 2
        starts = [e["data"] for e in client.events(job["id"]) if e["event"] == "start"]
        assert [s["iteration"] for s in starts] == [0, stopped_at]
        assert [s["processes"] for s in starts] == [devices, devices]


def test_serve_runs_a_worker_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", _free_port()
    server = _start(["serve", "--port", str(port)], data_dir, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready means a worker heartbeat was seen.
        _wait(lambda: _up(server, f"{url}/health/ready"), DEADLINE_S, "the embedded worker")
        with sqlite3.connect(data_dir / "retinanet.db") as db:
            (pid,) = db.execute("SELECT pid FROM workers").fetchone()
        # It reports what it offers: this host's GPUs, or its cores without one.
        with Client(url, api_key=API_KEY) as client:
            workers = client.workers()
        assert workers["count"] == 1 and workers["max_devices"] == local_devices()
        assert workers["data"][0] | {"last_seen_at": None} == {
            "id": workers["data"][0]["id"], "host": socket.gethostname(), "pid": pid,
            "devices": local_devices(), "last_seen_at": None, "alive": True, "job_id": None,
        }  # fmt: skip
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
    _wait(lambda: not Path(f"/proc/{pid}").exists(), 30, "the worker to exit")
