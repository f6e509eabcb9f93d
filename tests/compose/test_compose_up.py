"""``docker-compose --profile cpu up`` for real: the image built from docker/Dockerfile runs
PostgreSQL, the one-shot migration, the API and a CPU worker in containers, and the whole loop
goes over HTTP from the host: upload, train (the worker's container restarted mid-job, the job
resuming from its checkpoint), metrics, predict, download. Run by scripts/compose-stage.sh
after it built the image; compose.yaml is used as a GPU host would, with the test-only override
of images and networking (docker/compose.test.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from service.client import Client
from service.settings import hash_key
from tests.service.e2e_support import (  # noqa: F401
    API_KEY,
    SIZES,
    answers,
    free_port,
    shapes_fixture,
    wait_for,
)

from .compose_support import SERVICE_USER, Stack, changed_paths, docker, resolve

pytestmark = pytest.mark.compose
DEADLINE_S = 900  # 2 shared cores: the job trains while the API and PostgreSQL run beside it
# Six iterations an epoch (48 images, batch 8): a periodic checkpoint every 4, and the restart
# once the job is past its first epoch.
JOB = {**SIZES, "solver": {"epochs": 4, "steps": [3]}, "checkpoint_period_iters": 4}
RESTART_AFTER_ITER = 7


@pytest.fixture(scope="module", name="stack")
def stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack up (``up -d`` waits for the migration), then ``down -v`` whatever happened."""
    datasets = tmp_path_factory.mktemp("datasets")  # mounted read-only at /datasets
    api_port, pg_port = free_port(), free_port()
    env = {
        **os.environ,
        "COMPOSE_PROFILES": "cpu",
        "RETINANET_CI_API_PORT": str(api_port),
        "RETINANET_CI_PG_PORT": str(pg_port),
        "RETINANET_API_KEY_HASHES": hash_key(API_KEY),
        "DATASETS_DIR": str(datasets),
    }
    file = resolve(env, tmp_path_factory.mktemp("compose") / "compose.yaml")
    stack = Stack(env=env, url=f"http://127.0.0.1:{api_port}", file=file)
    try:
        stack.compose("up", "-d", "--no-build")
        wait_for(lambda: answers(f"{stack.url}/health/live"), DEADLINE_S, "the API")
        yield stack
    finally:
        # Kept where other pytest runs' clean-up of their temporary folders cannot remove it.
        log = Path(os.environ.get("RETINANET_CI_COMPOSE_LOG", tmp_path_factory.getbasetemp()))
        log = log / "compose.log" if log.is_dir() else log
        log.write_text(stack.compose("logs", "--no-color", "--timestamps"))
        print(f"compose logs: {log}")
        stack.compose("down", "-v", "--remove-orphans")
        assert not stack.container("api"), "down left a container"


def _started(state: dict[str, str], key: str) -> datetime:
    return datetime.fromisoformat(state[key][:26].rstrip("Z"))


def test_migrations_run_once_before_the_api_serves(stack: Stack) -> None:
    migrate, api = stack.inspect("migrate"), stack.inspect("api")
    assert migrate["State"]["Status"] == "exited" and migrate["State"]["ExitCode"] == 0
    assert migrate["RestartCount"] == 0
    assert _started(migrate["State"], "FinishedAt") <= _started(api["State"], "StartedAt")
    assert stack.logs("migrate").count("database at head") == 1
    assert stack.inspect("postgres")["State"]["Health"]["Status"] == "healthy"
    assert not stack.container("worker"), "the GPU worker is not in the cpu profile"
    assert httpx.get(f"{stack.url}/v1/jobs").status_code == 401  # the key from the environment


def test_the_containers_run_as_the_service_user(stack: Stack) -> None:
    for service in ("api", "worker-cpu"):
        config = stack.inspect(service)["Config"]
        assert config["User"] == SERVICE_USER, service
        uid = docker("exec", stack.container(service), "id", "-u").strip()
        assert uid == SERVICE_USER.split(":")[0], service
        # The weight cache is where torchvision looks, on its own volume.
        assert "TORCH_HOME=/cache/torch" in config["Env"], service
        mounts = {m["Destination"]: m for m in stack.inspect(service)["Mounts"]}
        assert mounts["/data"]["Type"] == mounts["/cache/torch"]["Type"] == "volume"
        assert not mounts["/datasets"]["RW"]


def test_train_restart_resume_metrics_predict_download(
    stack: Stack, shapes: dict[str, Path], tmp_path: Path
) -> None:
    with Client(stack.url, api_key=API_KEY) as client:
        wait_for(lambda: answers(f"{stack.url}/health/ready"), DEADLINE_S, "the CPU worker")
        (worker,) = client.workers()["data"]
        assert worker["pid"] == 1, "the worker is its container's main process"
        train = client.upload_dataset(shapes["train"], shapes["images"], name="train")
        val = client.upload_dataset(shapes["val"], shapes["images"], name="val")
        job = client.create_job(
            train_dataset_id=train["id"], val_dataset_id=val["id"], recipe="shapes_tiny",
            recipe_overrides=JOB,
        )  # fmt: skip
        wait_for(
            lambda: (
                (client.job(job["id"])["progress"] or {}).get("iteration", 0) >= RESTART_AFTER_ITER
            ),
            DEADLINE_S,
            f"iteration {RESTART_AFTER_ITER}",
        )
        # `restart`, in two steps to see between them that SIGTERM checkpointed and released.
        stack.compose("stop", "worker-cpu")
        assert stack.inspect("worker-cpu")["State"]["ExitCode"] == 0, stack.logs("worker-cpu")
        released = client.job(job["id"])
        assert released["status"] == "queued" and released["attempt"] == 1
        stack.compose("start", "worker-cpu")
        done = client.wait(job["id"], timeout_s=DEADLINE_S)
        assert done["status"] == "succeeded" and done["attempt"] == 2, client.logs(job["id"])
        starts = [e["data"] for e in client.events(job["id"]) if e["event"] == "start"]
        # The second attempt went on from the checkpoint SIGTERM wrote, not from scratch.
        assert len(starts) == 2 and starts[0]["iteration"] == 0
        assert starts[1]["iteration"] >= RESTART_AFTER_ITER
        assert done["progress"]["iteration"] == done["progress"]["max_iters"]

        metrics = client.metrics(job["id"])
        assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
        assert {"AP", "AP50", "AR100"} <= set(metrics["latest"]["summary"])
        per_class = {c["name"] for c in metrics["latest"]["per_class"]}
        assert per_class == {"circle", "square", "triangle"}

        model = client.model_of_job(job["id"])
        weights = client.download(f"/v1/models/{model['id']}/weights", tmp_path / "m.safetensors")
        image = sorted(shapes["images"].glob("val_*.png"))[0]
        served = client.predict(model["id"], [image], score_threshold=0.05)["images"][0]
    # The downloaded file is the model the API serves: the host's own CLI detects the same.
    local = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", str(weights), str(image),
         "--score-threshold", "0.05"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ours = json.loads(local.stdout)[0]["detections"]
    assert [d["category_id"] for d in served["detections"]] == [d["category_id"] for d in ours]
    for got, want in zip(served["detections"], ours, strict=True):
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_the_health_check_passes_and_only_volumes_are_written(stack: Stack) -> None:
    """After the job above: the image's HEALTHCHECK reports healthy, and neither the API nor
    the worker wrote anything outside their volumes (uploads, checkpoints, models, caches)."""
    deadline = time.monotonic() + 120  # the first check runs 30 s after the start
    while stack.inspect("api")["State"]["Health"]["Status"] != "healthy":
        assert time.monotonic() < deadline, stack.inspect("api")["State"]["Health"]
        time.sleep(2)
    for service in ("api", "worker-cpu", "migrate"):
        changed = changed_paths(stack.container(service))
        assert changed == [], f"{service} wrote outside its volumes: {changed}"
