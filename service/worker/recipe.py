"""The recipe a job trains: its stored recipe with the job's datasets filled in.

Written once per attempt as ``recipe.yaml`` in the job folder, before any training process
starts, so that every rank reads the same file and a recipe that does not load fails the job
before a device is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session, sessionmaker

from detector import load_recipe
from service.store import repo
from service.store.tables import Dataset, Job
from service.worker.holdout import split_holdout


def write_job_recipe(
    sessions: sessionmaker[Session], job_id: str, workdir: Path, *, mlflow_uri: str | None
) -> int:
    """Write ``workdir/recipe.yaml``: the job's recipe with ``data.train``, ``data.val`` (a
    seeded holdout of the training set when the job has no validation set but a holdout
    fraction) and ``data.test`` filled in, and its ``tracking`` named after the job (the
    service's ``mlflow_uri``, the job's tags), checked. Returns the job's number of processes."""
    with sessions() as session:
        job = repo.get_job(session, job_id)
        if job.train_dataset_id is None:
            raise ValueError("the job's training dataset was deleted")
        train = repo.get_dataset(session, job.train_dataset_id)
        val = repo.get_dataset(session, job.val_dataset_id) if job.val_dataset_id else None
        test = repo.get_dataset(session, job.test_dataset_id) if job.test_dataset_id else None
        recipe, holdout, devices = dict(job.recipe), job.holdout_fraction, job.devices
        tags = job_tags(job)
    data: dict[str, Any] = {"train": _source(train)}
    if val is not None:
        data["val"] = _source(val)
    elif holdout is not None:
        seed = int(recipe.get("seed", 0))
        tr, va = split_holdout(
            Path(train.annotations_path), fraction=holdout, seed=seed, out_dir=workdir / "split"
        )
        data["train"]["annotations"], data["val"] = (
            str(tr),
            {"annotations": str(va), "images": train.images_path},
        )
    # Scored once at the end (detector.finalize). Only the job's own test set: a recipe
    # override naming some other path on the server is not the job's to read.
    data["test"] = None if test is None else _source(test)
    recipe["data"] = {**recipe.get("data", {}), **data}
    tracking = recipe.get("tracking") or {}
    # The service's tracking server only: a job naming another would make the worker send
    # its files (or write them, with a file:// URI) wherever the job asked.
    recipe["tracking"] = {
        **tracking,
        "mlflow_uri": mlflow_uri,
        "run_name": job_id,
        "tags": {**tracking.get("tags", {}), **tags},
    }
    recipe_file = workdir / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    load_recipe(recipe_file)  # a recipe that does not load fails here, once
    return devices


def job_tags(job: Job) -> dict[str, str]:
    """The tags of the job's tracking run (MLflow): its id, its study's and its datasets'."""
    ids = {
        "job_id": job.id,
        "study_id": job.study_id,
        "train_dataset_id": job.train_dataset_id,
        "val_dataset_id": job.val_dataset_id,
        "test_dataset_id": job.test_dataset_id,
    }
    return {k: v for k, v in ids.items() if v is not None}


def _source(dataset: Dataset) -> dict[str, Any]:
    """A stored dataset as the recipe's ``DatasetSource``."""
    return {"annotations": dataset.annotations_path, "images": dataset.images_path}
