"""A queued job trained for real (two iterations, seconds on 2 cores) and settled by the
worker's own code, so that the API holds a job that succeeded and the model it registered."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from detector import save_model_file
from detector.engine.checkpoint import BEST, LAST
from detector.engine.trainer import fit
from service.settings import Settings
from service.storage import Storage
from service.store import repo
from service.store.db import make_engine, session_factory
from service.worker.exits import EXIT_OK
from service.worker.loop import Worker
from tests.trained import TrainedRun, shapes_recipe

SHORT = ("solver.epochs=null", "solver.max_iters=2", "solver.steps=[]", "solver.warmup_iters=1")


def train_and_settle(settings: Settings, job_id: str, shapes: Path, workdir: Path) -> None:
    """Train on ``shapes`` into ``workdir``, claim ``job_id`` (the queue's next) and settle it as
    the worker does when its child exits 0; a live worker is recorded (``/health/ready``)."""
    fit(shapes_recipe(shapes, *SHORT, "solver.batch_size=2", "data.num_workers=0"), workdir)
    engine = make_engine(settings.db_url)
    try:
        sessions = session_factory(engine)
        now = datetime.now(UTC)
        claim = repo.claim_next_job(sessions, worker_id="test", lease_s=60, now=now)
        assert claim is not None and claim.job_id == job_id
        model_file = Storage(settings.data_dir).model_file(job_id)
        save_model_file(workdir / "checkpoints" / LAST, model_file)
        Worker(settings=settings)._settle(claim, EXIT_OK, cancelled=False)
        with sessions.begin() as session:
            repo.worker_seen(session, worker_id="test", host="h", pid=1, devices=1, now=now)
    finally:
        engine.dispose()


def register_shapes(client: TestClient, auth: dict[str, str]) -> list[str]:
    """The ids of the shapes' train and val splits, registered from the dataset root."""
    ids = []
    for split in ("train", "val"):
        body = {
            "name": f"shapes-{split}",
            "annotations": f"annotations/instances_{split}.json",
            "images": "images",
        }
        response = client.post("/v1/datasets/register", headers=auth, json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def succeeded_job(
    client: TestClient, settings: Settings, trained_run: TrainedRun, auth: dict[str, str]
) -> str:
    """A job over ``trained_run``'s shapes whose model is that run's (really trained)
    ``best.pt``, settled by the worker's code; returns the job id."""
    ids = register_shapes(client, auth)
    job = client.post(
        "/v1/jobs", headers=auth, json={"train_dataset_id": ids[0], "val_dataset_id": ids[1]}
    ).json()
    engine = make_engine(settings.db_url)
    try:
        sessions = session_factory(engine)
        claim = repo.claim_next_job(sessions, worker_id="test", lease_s=60, now=datetime.now(UTC))
        assert claim is not None and claim.job_id == job["id"]
        # What the training child writes on success, from the really trained checkpoint:
        model_file = Storage(settings.data_dir).model_file(job["id"])
        save_model_file(trained_run.workdir / "checkpoints" / BEST, model_file)
        Worker(settings=settings)._settle(claim, EXIT_OK, cancelled=False)
    finally:
        engine.dispose()
    return str(job["id"])
