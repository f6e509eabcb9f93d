"""A job's tracking through the service: trained for real by the worker's own ``train_job``
(recipe hand-over, fit, finalize), then read back over HTTP: the plots, the TensorBoard
tarball (its scalars equal ``GET /v1/jobs/{id}/metrics``), and the MLflow run's tags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from service.app import create_app
from service.settings import Settings, hash_key
from service.storage import Storage
from service.store import repo
from service.store.db import make_engine, session_factory
from service.worker.attempt import train_job
from service.worker.exits import EXIT_OK
from service.worker.loop import Worker
from service.worker.recipe import write_job_recipe
from tests.service.trained_job import register_shapes

pytestmark = pytest.mark.slow

KEY = "tracking-test-key"
AUTH = {"X-API-Key": KEY}
TINY = {
    "data": {"train_min_sizes": [96], "eval_min_size": 96, "max_size": 96},
    "solver": {"epochs": 2, "steps": [], "batch_size": 24, "warmup_iters": 1},
}


@dataclass(frozen=True)
class TrainedJob:
    client: TestClient
    settings: Settings
    job_id: str
    dataset_ids: tuple[str, str]


@pytest.fixture(scope="module")
def job(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedJob]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a file store
    root = tmp_path_factory.mktemp("tracking_api")
    settings = Settings(
        data_dir=root / "data",
        api_key_hashes=(hash_key(KEY),),
        dataset_root=shapes,
        mlflow_uri=(root / "mlruns").as_uri(),
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ids = register_shapes(client, AUTH)
        body: dict[str, Any] = {
            "train_dataset_id": ids[0],
            "val_dataset_id": ids[1],
            "recipe_overrides": TINY,
        }
        created = client.post("/v1/jobs", headers=AUTH, json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        _run_like_the_worker(settings, job_id)
        yield TrainedJob(client, settings, job_id, (ids[0], ids[1]))
    mp.undo()


def _run_like_the_worker(settings: Settings, job_id: str) -> None:
    """What the worker's child does (recipe, train_job), in this process, then the settle."""
    engine = make_engine(settings.db_url)
    try:
        sessions = session_factory(engine)
        claim = repo.claim_next_job(sessions, worker_id="test", lease_s=600, now=datetime.now(UTC))
        assert claim is not None and claim.job_id == job_id
        workdir = Storage(settings.data_dir).job_dir(job_id)
        workdir.mkdir(parents=True)
        write_job_recipe(sessions, job_id, workdir, mlflow_uri=settings.mlflow_uri)
        assert train_job(settings, job_id, claim.token) == EXIT_OK
        Worker(settings=settings)._settle(claim, EXIT_OK, cancelled=False)
    finally:
        engine.dispose()


def test_the_worker_names_the_run_after_the_job(job: TrainedJob) -> None:
    workdir = Storage(job.settings.data_dir).job_dir(job.job_id)
    tracking = yaml.safe_load((workdir / "recipe.yaml").read_text())["tracking"]
    assert tracking["mlflow_uri"] == job.settings.mlflow_uri
    assert tracking["run_name"] == job.job_id
    train, val = job.dataset_ids
    expected = {"job_id": job.job_id, "train_dataset_id": train, "val_dataset_id": val}
    assert tracking["tags"] == expected

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=job.settings.mlflow_uri)
    run = client.get_run(json.loads((workdir / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == job.job_id
    assert expected.items() <= run.data.tags.items()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert names == {"model/model.safetensors"}


def test_a_job_cannot_name_its_own_tracking_server(job: TrainedJob) -> None:
    train, val = job.dataset_ids
    body = {
        "train_dataset_id": train,
        "val_dataset_id": val,
        "overrides": ["tracking.mlflow_uri=file:///tmp/elsewhere"],
    }
    response = job.client.post("/v1/jobs", headers=AUTH, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_recipe"
    assert "RETINANET_MLFLOW_URI" in response.json()["error"]["message"]


def test_plots_are_served_as_png(job: TrainedJob) -> None:
    listed = job.client.get(f"/v1/jobs/{job.job_id}/plots", headers=AUTH)
    assert listed.status_code == 200
    assert [p["name"] for p in listed.json()["data"]] == ["curves.png", "pr_curves.png"]
    for plot, size in zip(listed.json()["data"], ((1200, 800), (800, 600)), strict=True):
        response = job.client.get(plot["url"], headers=AUTH)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert len(response.content) == plot["size_bytes"]
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "PNG" and image.size == size
    unknown = job.client.get(f"/v1/jobs/{job.job_id}/plots/loss.png", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad = job.client.get(f"/v1/jobs/{job.job_id}/plots/..%2Fmodel.safetensors", headers=AUTH)
    assert bad.status_code in (404, 422) and "error" in bad.json()
    assert job.client.get("/v1/jobs/nojob/plots/curves.png", headers=AUTH).status_code == 404
    assert job.client.get(f"/v1/jobs/{job.job_id}/plots").status_code == 401


def test_tensorboard_tarball_scalars_equal_the_jobs_metrics(
    job: TrainedJob, tmp_path: Path
) -> None:
    response = job.client.get(f"/v1/jobs/{job.job_id}/tensorboard", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert names and all(
        n.startswith(f"{job.job_id}/tensorboard/events.out.tfevents.") for n in names
    )
    events = EventAccumulator(str(tmp_path / job.job_id / "tensorboard"))
    events.Reload()
    metrics = job.client.get(f"/v1/jobs/{job.job_id}/metrics", headers=AUTH).json()
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("AP", "AP50", "AR100"):
        logged = [(s.step, s.value) for s in events.Scalars(f"coco/{key}")]
        ours = [(h["iteration"], h["metrics"]["summary"][key]) for h in history]
        assert [s for s, _ in logged] == [s for s, _ in ours]
        assert [v for _, v in logged] == pytest.approx([v for _, v in ours], rel=1e-6)
    val_loss = [s.value for s in events.Scalars("val/loss")]
    assert val_loss == pytest.approx([sum(h["val_losses"].values()) for h in history], rel=1e-6)


def test_no_events_no_tarball(job: TrainedJob) -> None:
    train, val = job.dataset_ids
    body = {"train_dataset_id": train, "val_dataset_id": val}
    queued = job.client.post("/v1/jobs", headers=AUTH, json=body).json()["id"]
    response = job.client.get(f"/v1/jobs/{queued}/tensorboard", headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert job.client.get(f"/v1/jobs/{queued}/plots", headers=AUTH).json() == {"data": []}
    job.client.post(f"/v1/jobs/{queued}/cancel", headers=AUTH)


def test_tensorboard_command_serves_every_job(job: TrainedJob) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "service.cli", "tensorboard", str(job.settings.data_dir),
         "--port", "6123", "--print-only"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"--logdir {job.settings.data_dir / 'jobs'}" in printed and "--port 6123" in printed
    missing = subprocess.run(
        [sys.executable, "-m", "service.cli", "tensorboard", str(job.settings.data_dir / "x")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 1 and "no jobs under" in missing.stderr
