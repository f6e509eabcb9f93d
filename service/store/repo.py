"""Repository functions: the only code that queries the store's tables.

Transactions belong to the caller: functions that take a ``Session`` flush but never commit
(``with factory.begin() as session: create_job(session, ...)``). ``claim_next_job`` takes a
sessionmaker because it must run in a write transaction of its own. Time is always passed in
(``now``, timezone-aware UTC) so that tests control it. Claiming, heartbeats and the fenced
writes are defined in ``leases`` (which also explains the locking) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from service.store.errors import Conflict, IdempotencyConflict, NotFound, StoreError, found
from service.store.idempotency import insert_once, replay
from service.store.leases import (
    Claim,
    HeartbeatResult,
    add_event,
    claim_next_job,
    finish_job,
    heartbeat,
    record_checkpoint,
    record_event,
    release_job,
    retry_job,
    worker_gone,
)
from service.store.model_rows import create_model, delete_model, get_model, list_models
from service.store.tables import (
    ACTIVE_STATUSES,
    Dataset,
    DatasetSource,
    Job,
    JobEvent,
    JobStatus,
    JobTag,
    Worker,
    new_id,
)

# The lease half lives in leases.py, trained models in model_rows.py; callers use ``repo``.
__all__ = [
    "Claim",
    "Conflict",
    "HeartbeatResult",
    "IdempotencyConflict",
    "NotFound",
    "StoreError",
    "claim_next_job",
    "create_dataset",
    "create_job",
    "create_model",
    "delete_dataset",
    "delete_model",
    "epoch_events",
    "events_after",
    "finish_job",
    "get_dataset",
    "get_job",
    "get_model",
    "heartbeat",
    "last_worker_seen",
    "list_datasets",
    "list_jobs",
    "list_models",
    "list_workers",
    "max_live_devices",
    "record_checkpoint",
    "record_event",
    "release_job",
    "request_cancel",
    "retry_job",
    "worker_gone",
    "worker_seen",
]


# ---------------------------------------------------------------------------- datasets


def create_dataset(
    session: Session,
    *,
    name: str,
    source: str,
    annotations_path: str,
    images_path: str,
    num_images: int,
    num_boxes: int,
    class_counts: Mapping[str, int],
    categories: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    now: datetime | None = None,
    dataset_id: str | None = None,
) -> Dataset:
    """Add a dataset row; ``dataset_id`` lets the caller name the folder before the row exists."""
    if source not in get_args(DatasetSource):
        raise ValueError(f"source {source!r}; expected one of {get_args(DatasetSource)}")
    dataset = Dataset(
        id=dataset_id or new_id(),
        name=name,
        source=source,
        annotations_path=annotations_path,
        images_path=images_path,
        num_images=num_images,
        num_boxes=num_boxes,
        class_counts=dict(class_counts),
        categories=[dict(c) for c in categories],
        report=dict(report),
        created_at=now or datetime.now(UTC),
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset with this id, else ``NotFound``."""
    return found(session.get(Dataset, dataset_id), "dataset", dataset_id)


def list_datasets(session: Session, *, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """One page of datasets, newest first, and the total count."""
    page = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc())
    rows = session.scalars(page.limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    return list(rows), total


def delete_dataset(session: Session, dataset_id: str) -> Dataset:
    """Delete a dataset row and return it (the caller removes its files).

    Refused with ``Conflict`` while a queued or running job uses it; finished jobs keep their
    history with the reference set to NULL by the foreign key.
    """
    # Locking the dataset first makes a concurrent create_job (which share-locks it) wait.
    locked = select(Dataset).where(Dataset.id == dataset_id).with_for_update()
    dataset = found(session.scalars(locked).one_or_none(), "dataset", dataset_id)
    users = session.scalars(
        select(Job.id).where(Job.status.in_(ACTIVE_STATUSES), _uses_dataset(dataset_id))
    ).all()
    if users:
        raise Conflict(f"dataset {dataset_id!r} is used by active jobs: {', '.join(users)}")
    session.delete(dataset)
    session.flush()
    return dataset


def _uses_dataset(dataset_id: str) -> ColumnElement[bool]:
    """A job uses the dataset as its train, val or test set."""
    return or_(
        Job.train_dataset_id == dataset_id,
        Job.val_dataset_id == dataset_id,
        Job.test_dataset_id == dataset_id,
    )


# ---------------------------------------------------------------------------- jobs


def create_job(
    session: Session,
    *,
    recipe: Mapping[str, Any],
    train_dataset_id: str,
    val_dataset_id: str | None = None,
    test_dataset_id: str | None = None,
    holdout_fraction: float | None = None,
    priority: int = 0,
    devices: int = 1,
    max_attempts: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    study_id: str | None = None,
    now: datetime,
) -> tuple[Job, bool]:
    """Queue a job; returns ``(job, created)``.

    With an ``idempotency_key`` already used, returns the existing job with ``created=False``
    when ``request_hash`` matches, else raises ``IdempotencyConflict``. Referenced datasets must
    exist (``NotFound`` names which one).
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if idempotency_key is not None:
        existing = _job_by_key(session, idempotency_key)
        if existing is not None:
            return replay(existing, request_hash, "job"), False
    _require_datasets(
        session, {"train": train_dataset_id, "val": val_dataset_id, "test": test_dataset_id}
    )
    job = Job(
        id=new_id(),
        status="queued",
        priority=priority,
        recipe=dict(recipe),
        train_dataset_id=train_dataset_id,
        val_dataset_id=val_dataset_id,
        test_dataset_id=test_dataset_id,
        holdout_fraction=holdout_fraction,
        devices=devices,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        max_attempts=max_attempts,
        created_at=now,
        name=name,
        study_id=study_id,
        tag_rows=[JobTag(tag=tag) for tag in sorted(set(tags))],
    )
    return insert_once(session, job, by_key=lambda key: _job_by_key(session, key), what="job")


def _job_by_key(session: Session, idempotency_key: str) -> Job | None:
    """The job created with this idempotency key, if any."""
    return session.scalars(select(Job).where(Job.idempotency_key == idempotency_key)).one_or_none()


def _require_datasets(session: Session, ids_by_role: Mapping[str, str | None]) -> None:
    """Raise ``NotFound("<role> dataset", id)`` for the first referenced dataset missing."""
    wanted = {i for i in ids_by_role.values() if i is not None}
    # FOR SHARE: a concurrent delete_dataset waits for this transaction, or this one sees it gone.
    found = set(
        session.scalars(
            select(Dataset.id).where(Dataset.id.in_(wanted)).with_for_update(read=True)
        ).all()
    )
    for role, dataset_id in ids_by_role.items():
        if dataset_id is not None and dataset_id not in found:
            raise NotFound(f"{role} dataset", dataset_id)


def get_job(session: Session, job_id: str) -> Job:
    """The job with this id, else ``NotFound``."""
    return found(session.get(Job, job_id), "job", job_id)


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    name: str | None = None,
    tag: str | None = None,
    study_id: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, and the total count; each filter given must hold."""
    where: list[ColumnElement[bool]] = []
    if status is not None:
        where.append(Job.status == status)
    if name is not None:
        where.append(Job.name == name)
    if study_id is not None:
        where.append(Job.study_id == study_id)
    if tag is not None:
        where.append(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    page = select(Job).where(*where)
    count = select(func.count()).select_from(Job).where(*where)
    page = page.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(page).all()), session.scalar(count) or 0


def request_cancel(session: Session, job_id: str, *, now: datetime) -> Job:
    """Cancel a queued job at once, or ask the worker of a running job to stop.

    Raises ``Conflict`` for a finished job. Asking twice is harmless.
    """
    job = _locked_job(session, job_id)
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = now
        add_event(session, job.id, "status", {"status": "cancelled", "reason": "cancelled"}, now)
    elif job.status == "running":
        job.cancel_requested = True
    else:
        raise Conflict(f"job {job_id!r} already finished ({job.status})")
    session.flush()
    return job


def _locked_job(session: Session, job_id: str) -> Job:
    """The job row, locked until the transaction ends and refreshed from the database."""
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    return found(job, "job", job_id)


# ---------------------------------------------------------------------------- reads


def events_after(session: Session, job_id: str, *, after_id: int, limit: int) -> list[JobEvent]:
    """The job's events with ``id > after_id``, oldest first, at most ``limit``."""
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return list(rows.all())


def epoch_events(session: Session, job_id: str) -> list[JobEvent]:
    """All "epoch" events of the job (per-epoch losses and metrics), oldest first."""
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "epoch")
        .order_by(JobEvent.id)
    )
    return list(rows.all())


def attempt_events(session: Session, job_id: str) -> list[JobEvent]:
    """The job's "start", "status" and "error" events (claims, resumes, state changes,
    failures), oldest first: its attempt history without the many step events."""
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.kind.in_(("start", "status", "error")))
        .order_by(JobEvent.id)
    )
    return list(rows.all())


# ---------------------------------------------------------------------------- workers


def worker_seen(
    session: Session, *, worker_id: str, host: str, pid: int, devices: int, now: datetime
) -> None:
    """Record that the worker is alive and what it offers (insert or update its row)."""
    # Read-then-write is race-free here: a worker id belongs to exactly one process.
    worker = session.get(Worker, worker_id)
    if worker is None:
        session.add(Worker(id=worker_id, host=host, pid=pid, devices=devices, seen_at=now))
    else:
        worker.host, worker.pid, worker.devices, worker.seen_at = host, pid, devices, now
        worker.stopped_at = None  # it reports, so it runs (a stopped process that woke up)
    session.flush()


def list_workers(
    session: Session, *, seen_since: datetime | None
) -> list[tuple[Worker, str | None]]:
    """Workers seen since ``seen_since`` and not stopped (None: every worker ever seen),
    newest first, each with the job it holds (or None)."""
    held = (
        select(Job.id)
        .where(Job.status == "running", Job.lease_owner == Worker.id)
        .limit(1)
        .scalar_subquery()
    )
    recent = [] if seen_since is None else [Worker.seen_at >= seen_since, _running_worker()]
    rows = session.execute(
        select(Worker, held).where(*recent).order_by(Worker.seen_at.desc(), Worker.id)
    ).all()
    return [(worker, job_id) for worker, job_id in rows]


def max_live_devices(session: Session, *, seen_since: datetime) -> int | None:
    """The most devices a worker seen since ``seen_since`` offers; None when none was seen."""
    live = select(func.max(Worker.devices)).where(Worker.seen_at >= seen_since, _running_worker())
    return session.scalar(live)


def last_worker_seen(session: Session) -> datetime | None:
    """When a worker that has not stopped was last seen, or None if there is none."""
    return session.scalar(select(func.max(Worker.seen_at)).where(_running_worker()))


def _running_worker() -> ColumnElement[bool]:
    """The worker has not stopped (nor been found dead by its supervisor)."""
    return Worker.stopped_at.is_(None)
