"""A stored study's cells and its jobs' results, as the table takes them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.orm import Session

from service.store import studies as store
from service.store.tables import Job, Study
from service.studies.grid import Cell
from service.studies.table import JobResult, best_epoch
from service.study_schemas import JOB_STATUS_KEYS, StudyStatus


def cells_of_row(study: Study) -> list[Cell]:
    """The study's cells as they were planned."""
    return [
        Cell(values=c["values"], baseline=c["baseline"], extra=tuple(c.get("extra", ())))
        for c in study.cells
    ]


def job_status(job: Job) -> str:
    """The job's status, ``pruned`` for a job its study's pruning cancelled."""
    reason = job.cancel_reason or ""
    return "pruned" if job.status == "cancelled" and reason.startswith(store.PRUNED) else job.status


def study_results(session: Session, study: Study) -> tuple[list[Job], list[JobResult]]:
    """The study's jobs and their results, read in two queries."""
    jobs = store.study_jobs(session, study.id)
    where = {m["id"]: (i, m["seed"]) for i, c in enumerate(study.cells) for m in c["jobs"]}
    payloads = store.epoch_payloads(session, [j.id for j in jobs])
    results = []
    for job in jobs:
        cell, seed = where[job.id]
        results.append(
            JobResult(
                job_id=job.id,
                cell=cell,
                seed=seed,
                status=job_status(job),
                best=best_epoch(_history(payloads[job.id])),
                wall_s=_wall_s(job),
            )
        )
    return jobs, results


def _history(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per epoch, the later winning, as ``GET /v1/jobs/{id}/metrics`` builds it."""
    by_epoch = {p["epoch"]: p for p in payloads}
    return [by_epoch[k] for k in sorted(by_epoch)]


def _wall_s(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


def counts(jobs: list[Job]) -> dict[str, int]:
    """Jobs per status, pruned apart from cancelled."""
    seen = Counter(job_status(j) for j in jobs)
    return {k: seen.get(k, 0) for k in JOB_STATUS_KEYS}


def status_of(jobs: list[Job]) -> StudyStatus:
    """``running`` while a job runs, ``queued`` while jobs wait and none runs, else finished."""
    states = {j.status for j in jobs}
    if "running" in states:
        return "running"
    return "queued" if "queued" in states else "finished"
