"""Leases: claiming jobs, heartbeats and the fenced writes of the worker that holds a job.

Part of the repository (``service.store.repo`` re-exports everything public here); split out
because it is the concurrency-critical half. A claim hands out a lease (``lease_expires_at``) and
a fencing token; every later write of that worker names the token and is refused, changing
nothing, once another claim has replaced it or the job is no longer running.

Locking: every event of a job is inserted while its job row is locked (``FOR UPDATE`` or the
fenced ``UPDATE``), so on PostgreSQL a job's event ids commit in increasing order and an event
stream that reads ``id > last_id`` never skips one. On SQLite the ``BEGIN IMMEDIATE`` of write
sessions serializes writers instead and row locks are no-ops.

Attempts: ``attempt`` counts claims and is only shown; what decides failure is progress. An
attempt that ends without finishing (released, killed, its worker dead, its lease expired)
*progressed* when the job's checkpointed iteration (``checkpoint_iteration``, reported by the
training with its token each time it saves ``last.pt``) went beyond where the attempt started
(``attempt_from_iteration``). A progressing attempt resets ``stalled_attempts`` to 0 however
it ended; an abnormal end (a signal, a lost lease, a dead worker) without progress adds 1; a
graceful release without progress changes nothing. The job fails when ``stalled_attempts``
reaches ``max_attempts``, with an error naming the cause and the iteration it kept dying at.
So restarts never spend attempts, a job that keeps checkpointing between kills keeps going
(each kill costs at most one checkpoint period), and one that dies at the same point again
and again still stops. A progress report lost to a kill right after a save is recovered by
the next attempt, which reports the iteration it resumed from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, get_args

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.store.db import WRITE_TRANSACTION
from service.store.tables import FINAL_STATUSES, EventKind, FinalStatus, Job, JobEvent, Worker


@dataclass(frozen=True)
class Claim:
    """A job handed to a worker: write with ``token`` while the lease lasts."""

    job_id: str
    token: int
    attempt: int


@dataclass(frozen=True)
class HeartbeatResult:
    """What a worker learns from a successful heartbeat."""

    cancel_requested: bool
    lease_expires_at: datetime


def add_event(
    session: Session, job_id: str, kind: str, payload: Mapping[str, Any], now: datetime
) -> JobEvent:
    """Append an event; callers hold the job row's lock (see the module docstring)."""
    event = JobEvent(job_id=job_id, kind=kind, payload=dict(payload), created_at=now)
    session.add(event)
    return event


# ---------------------------------------------------------------------------- claiming


def claim_next_job(
    factory: sessionmaker[Session],
    *,
    worker_id: str,
    lease_s: float,
    now: datetime,
    max_devices: int | None = None,
) -> Claim | None:
    """Claim the highest-priority, oldest queued job for ``worker_id``; None if none is queued.

    With ``max_devices``, only jobs that ask for at most that many processes (GPUs): a bigger
    job waits for a worker that has them, and the smaller ones behind it go ahead.

    One write transaction: expired leases are settled first (re-queued, or failed after
    ``max_attempts``), then the job is marked running with a new lease and fencing token.
    Concurrent claimers never get the same job: PostgreSQL skips rows another claimer has
    locked, SQLite's ``BEGIN IMMEDIATE`` runs claimers one at a time.
    """
    with factory() as session, session.begin():
        # Forced even if the factory is read-only: claiming must hold the SQLite write lock.
        session.connection(execution_options=WRITE_TRANSACTION)
        _settle_expired_leases(session, now=now)
        fits = [] if max_devices is None else [Job.devices <= max_devices]
        job = session.scalars(
            select(Job)
            .where(Job.status == "queued", *fits)
            .order_by(Job.priority.desc(), Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        job.status = "running"
        job.attempt += 1
        job.fencing_token += 1
        job.lease_owner = worker_id
        job.lease_expires_at = now + timedelta(seconds=lease_s)
        job.heartbeat_at = now
        job.attempt_from_iteration = job.checkpoint_iteration
        # cancel_requested is kept: a cancel asked before a release must still stop the job.
        job.started_at = job.started_at or now
        payload = {"status": "running", "worker_id": worker_id, "attempt": job.attempt}
        add_event(session, job.id, "status", payload | {"token": job.fencing_token}, now)
        return Claim(job_id=job.id, token=job.fencing_token, attempt=job.attempt)


def _settle_expired_leases(session: Session, *, now: datetime) -> None:
    """Re-queue running jobs whose lease ran out, or finish them when they may not retry."""
    expired = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        _end_attempt(session, job, cause="lease expired", now=now)


def _end_attempt(session: Session, job: Job, *, cause: str | None, now: datetime) -> None:
    """Count the attempt that ended unfinished (``cause`` None: a graceful release), then
    re-queue the job, or fail it (too many attempts without progress), or cancel it (asked)."""
    owner = job.lease_owner
    _clear_lease(job)
    if job.checkpoint_iteration > job.attempt_from_iteration:
        job.stalled_attempts = 0
    elif cause is not None:
        job.stalled_attempts += 1
    if job.cancel_requested and cause is not None:
        # The user asked to stop and the attempt died: running it again helps no one.
        job.status, job.finished_at = "cancelled", now
        payload: dict[str, Any] = {"status": "cancelled", "reason": cause}
    elif job.stalled_attempts >= job.max_attempts:
        job.status, job.finished_at = "failed", now
        job.error = _stalled_error(job, cause or "released")
        payload = {"status": "failed", "error": job.error}
    else:
        job.status = "queued"
        reason = "released by worker" if cause is None else f"{cause}, re-queued"
        payload = {"status": "queued", "reason": reason}
    payload |= {"previous_owner": owner, "attempt": job.attempt}
    payload |= {"checkpoint_iteration": job.checkpoint_iteration}
    add_event(session, job.id, "status", payload, now)
    session.flush()


def _stalled_error(job: Job, cause: str) -> str:
    """Why the job gave up: the cause, how often, and where it kept dying."""
    reached = (job.progress or {}).get("iteration")
    where = f"resuming from iteration {job.checkpoint_iteration}"
    if reached is not None:
        where += f", last step reported {reached}"
    return (
        f"{cause}: {job.stalled_attempts} attempts in a row ended without progress "
        f"({where}); gave up after {job.attempt} attempts in all"
    )


def _clear_lease(job: Job) -> None:
    """Forget who held the job and until when."""
    job.lease_owner = None
    job.lease_expires_at = None


# ---------------------------------------------------------------------------- fenced writes


def _fenced_update(
    session: Session, *, job_id: str, token: int, values: Mapping[str, Any]
) -> bool | None:
    """Apply ``values`` to the job only if it is running under ``token``.

    Returns the job's ``cancel_requested`` when the update happened, None when fenced out.
    A single conditional UPDATE checks and writes atomically and locks the row for the rest
    of the transaction, so a re-claim cannot slip in between the check and the write.
    """
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.fencing_token == token, Job.status == "running")
        .values(dict(values))
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session="fetch")
    )
    return session.execute(stmt).scalar_one_or_none()


def heartbeat(
    session: Session, *, job_id: str, token: int, lease_s: float, now: datetime
) -> HeartbeatResult | None:
    """Extend the lease to ``now + lease_s``; None if the worker no longer holds the job."""
    expires = now + timedelta(seconds=lease_s)
    cancel = _fenced_update(
        session,
        job_id=job_id,
        token=token,
        values={"lease_expires_at": expires, "heartbeat_at": now},
    )
    if cancel is None:
        return None
    return HeartbeatResult(cancel_requested=cancel, lease_expires_at=expires)


def record_event(
    session: Session,
    *,
    job_id: str,
    token: int,
    kind: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Append an event of the running job; a "step" event also becomes ``job.progress``."""
    if kind not in get_args(EventKind):
        raise ValueError(f"event kind {kind!r}; expected one of {get_args(EventKind)}")
    # Non-step events change nothing on the job, but the no-op UPDATE still checks the fence
    # and takes the row lock.
    values: dict[str, Any] = (
        {"progress": dict(payload)} if kind == "step" else {"fencing_token": Job.fencing_token}
    )
    if _fenced_update(session, job_id=job_id, token=token, values=values) is None:
        return False
    add_event(session, job_id, kind, payload, now)
    session.flush()
    return True


def finish_job(
    session: Session,
    *,
    job_id: str,
    token: int,
    status: FinalStatus,
    error: str | None = None,
    now: datetime,
) -> bool:
    """Mark the running job succeeded, failed or cancelled and give up its lease."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"final status {status!r}; expected one of {FINAL_STATUSES}")
    values = {
        "status": status,
        "error": error,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if _fenced_update(session, job_id=job_id, token=token, values=values) is None:
        return False
    # The history then says where it ended, as it does for every other status change.
    iteration = session.scalar(select(Job.checkpoint_iteration).where(Job.id == job_id))
    payload = {"status": status, "error": error, "checkpoint_iteration": iteration}
    add_event(session, job_id, "status", payload, now)
    session.flush()
    return True


def _fenced_job(session: Session, *, job_id: str, token: int) -> Job | None:
    """The job row, locked, if it is running under ``token``; else None (fenced out)."""
    return session.scalars(
        select(Job)
        .where(Job.id == job_id, Job.fencing_token == token, Job.status == "running")
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def release_job(session: Session, *, job_id: str, token: int, now: datetime) -> bool:
    """Put the running job back in the queue (graceful worker stop): never a failed attempt."""
    job = _fenced_job(session, job_id=job_id, token=token)
    if job is None:
        return False
    _end_attempt(session, job, cause=None, now=now)
    return True


def retry_job(session: Session, *, job_id: str, token: int, cause: str, now: datetime) -> bool:
    """The attempt died abnormally (its training process was killed): re-queue the job to
    resume from its checkpoint, or fail it after too many attempts without progress."""
    job = _fenced_job(session, job_id=job_id, token=token)
    if job is None:
        return False
    _end_attempt(session, job, cause=cause, now=now)
    return True


def record_checkpoint(session: Session, *, job_id: str, token: int, iteration: int) -> bool:
    """The running attempt saved (or resumed from) ``last.pt`` at ``iteration``: progress."""
    newest = case((Job.checkpoint_iteration > iteration, Job.checkpoint_iteration), else_=iteration)
    values = {"checkpoint_iteration": newest}
    return _fenced_update(session, job_id=job_id, token=token, values=values) is not None


def worker_gone(session: Session, *, worker_id: str, cause: str, now: datetime) -> list[str]:
    """The worker stopped or died: mark it so (not alive from now on), and end the attempts
    it held at once (``cause``, counted as abnormal) instead of waiting for their leases.

    Only the worker's supervisor (which saw it exit) or the worker itself on its way out call
    this, so the owner's name is fence enough: no one else can hold a lease in its name.
    """
    worker = session.get(Worker, worker_id)
    if worker is not None:
        worker.stopped_at = now
    held = session.scalars(
        select(Job)
        .where(Job.status == "running", Job.lease_owner == worker_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for job in held:
        _end_attempt(session, job, cause=cause, now=now)
    session.flush()
    return [job.id for job in held]
