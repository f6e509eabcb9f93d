"""Helpers shared by the SQLite and PostgreSQL store tests (real processes included).

Process targets live here, not in the test modules, so that ``spawn`` children import a small
module instead of a test file.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from service.store import repo
from service.store.db import make_engine, migrate, session_factory
from service.store.retry import in_transaction, is_transient
from service.store.tables import Base, Job, JobEvent

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PROCESS_TIMEOUT_S = 120.0


def at(seconds: float) -> datetime:
    """A fixed test clock: ``T0 + seconds``."""
    return T0 + timedelta(seconds=seconds)


def dataset_fields(name: str) -> dict[str, Any]:
    """Keyword arguments of ``repo.create_dataset`` for a small dataset."""
    return {
        "name": name,
        "source": "folder",
        "annotations_path": f"/data/{name}/annotations.json",
        "images_path": f"/data/{name}/images",
        "num_images": 3,
        "num_boxes": 7,
        "class_counts": {"circle": 4, "square": 3},
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
        "report": {"errors": [], "warnings": []},
        "now": T0,
    }


def add_dataset(factory: sessionmaker[Session], name: str = "train") -> str:
    """Create a small dataset row and return its id."""
    with factory.begin() as session:
        return repo.create_dataset(session, **dataset_fields(name)).id


def add_job(
    factory: sessionmaker[Session],
    dataset_id: str,
    *,
    now: datetime = T0,
    priority: int = 0,
    max_attempts: int = 3,
    **extra: Any,
) -> str:
    """Queue a job on ``dataset_id`` and return its id."""
    with factory.begin() as session:
        job, _ = repo.create_job(
            session,
            recipe={"name": "shapes_tiny"},
            train_dataset_id=dataset_id,
            priority=priority,
            max_attempts=max_attempts,
            now=now,
            **extra,
        )
        return job.id


def schema_diffs(engine: Engine) -> list[Any]:
    """What Alembic autogenerate would change to make the database match the ORM."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def claims_by_job(factory: sessionmaker[Session]) -> Counter[str]:
    """How many times each job was claimed, counted from its "running" status events."""
    with factory() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.kind == "status")).all()
    return Counter(e.job_id for e in events if e.payload.get("status") == "running")


def claimers_by_job(factory: sessionmaker[Session]) -> dict[str, str]:
    """The worker that claimed each job (from the claim events)."""
    with factory() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.kind == "status")).all()
    return {e.job_id: e.payload["worker_id"] for e in events if e.payload["status"] == "running"}


def statuses(factory: sessionmaker[Session]) -> Counter[str]:
    """Number of jobs per status."""
    with factory() as session:
        return Counter(session.scalars(select(Job.status)).all())


def claim_and_finish_all(url: str, worker_id: str, start: Any) -> None:
    """Process target: claim, report a step and finish jobs until none is queued.

    Each worker first takes one job and waits until every worker holds one (a second pass
    of the cyclic barrier), so all of them really race; a process that started late would
    otherwise find the queue drained by the others and prove nothing.
    """
    engine = make_engine(url)
    factory = session_factory(engine)
    start.wait(timeout=PROCESS_TIMEOUT_S)
    try:
        claim = _claim(factory, worker_id)
        start.wait(timeout=PROCESS_TIMEOUT_S)
        while claim is not None:
            _step_and_finish(factory, worker_id, claim)
            claim = _claim(factory, worker_id)
    finally:
        engine.dispose()


def _claim(factory: sessionmaker[Session], worker_id: str) -> repo.Claim | None:
    return repo.claim_next_job(factory, worker_id=worker_id, lease_s=600.0, now=datetime.now(UTC))


def _step_and_finish(factory: sessionmaker[Session], worker_id: str, claim: repo.Claim) -> None:
    with factory.begin() as session:
        ok = repo.record_event(
            session,
            job_id=claim.job_id,
            token=claim.token,
            kind="step",
            payload={"iteration": 1, "worker": worker_id},
            now=datetime.now(UTC),
        )
        assert ok, f"{worker_id} lost job {claim.job_id}"
    with factory.begin() as session:
        done = repo.finish_job(
            session,
            job_id=claim.job_id,
            token=claim.token,
            status="succeeded",
            now=datetime.now(UTC),
        )
        assert done, f"{worker_id} could not finish job {claim.job_id}"


def migrate_after(url: str, worker_id: str, start: Any) -> None:
    """Process target: wait for the others, then migrate (all at once)."""
    del worker_id  # same signature as every process target here
    start.wait(timeout=PROCESS_TIMEOUT_S)
    migrate(url)


def run_processes(target: Callable[[str, str, Any], None], url: str, count: int) -> None:
    """Run ``target(url, worker_id, barrier)`` in ``count`` spawned processes released together.

    Fails if any process fails or hangs.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(count)
    processes = [
        context.Process(target=target, args=(url, f"worker-{i}", start), name=f"worker-{i}")
        for i in range(count)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(PROCESS_TIMEOUT_S)
    hung = [p.name for p in processes if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"processes still running after {PROCESS_TIMEOUT_S}s: {hung}"
    failed = {p.name: p.exitcode for p in processes if p.exitcode != 0}
    assert not failed, f"processes failed (exit codes): {failed}"


def assert_each_job_claimed_once(url: str, *, jobs: int, workers: int) -> None:
    """Queue ``jobs`` jobs, drain them with ``workers`` processes, check claims were unique."""
    engine = make_engine(url)
    factory = session_factory(engine)
    try:
        dataset_id = add_dataset(factory)
        job_ids = {add_job(factory, dataset_id, now=at(i)) for i in range(jobs)}
        run_processes(claim_and_finish_all, url, workers)
        claims = claims_by_job(factory)
        assert set(claims) == job_ids
        assert set(claims.values()) == {1}, {j: n for j, n in claims.items() if n != 1}
        assert statuses(factory) == Counter({"succeeded": jobs})
        # Every worker held a job at the same time (see claim_and_finish_all).
        assert len(set(claimers_by_job(factory).values())) == workers
    finally:
        engine.dispose()


def process_state(pid: int) -> str | None:
    """The process's state letter from ``/proc`` (R, S, T stopped, Z zombie...); None once
    it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


FROZEN_FENCED_OUT = 3  # exit code of ``freeze_in_transaction``: its late write was refused


def freeze_in_transaction(
    url: str, job_id: str, token: int, ready: Any, frozen_transaction_s: float
) -> None:
    """Process target: report a checkpoint (the row is locked), stop itself before the commit
    (SIGSTOP, as a frozen worker), then, once woken (SIGCONT), commit and write again the way
    a worker does: a refused commit is retried (``in_transaction``) and must be fenced out."""
    factory = session_factory(make_engine(url, frozen_transaction_s=frozen_transaction_s))
    session = factory()
    assert repo.record_checkpoint(session, job_id=job_id, token=token, iteration=7)
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)
    try:
        session.commit()
    except sa_exc.DBAPIError as error:
        assert is_transient(error), error
    else:
        os._exit(0)

    def report(retry: Session) -> bool:
        return repo.record_checkpoint(retry, job_id=job_id, token=token, iteration=7)

    fenced = not in_transaction(factory, report, what="late checkpoint")
    os._exit(FROZEN_FENCED_OUT if fenced else 0)
