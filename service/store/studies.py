"""Studies in the store: a study row and its ordinary jobs, created in one transaction; the
cancel of all its unfinished jobs; the median-rule pruning of one of them.

As in ``repo``, functions flush and the caller commits.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.store import repo
from service.store.errors import found
from service.store.idempotency import insert_once, replay
from service.store.tables import FINAL_STATUSES, Job, JobEvent, Study, new_id

PRUNED = "pruned"
"""The start of a pruned job's ``cancel_reason``."""


@dataclass(frozen=True)
class StudyJob:
    """One job of a new study: its cell (index into the study's cells), seed and recipe."""

    cell: int
    seed: int
    recipe: Mapping[str, Any]
    name: str | None


def create_study(
    session: Session,
    *,
    name: str | None,
    spec: Mapping[str, Any],
    cells: Sequence[Mapping[str, Any]],
    jobs: Sequence[StudyJob],
    job_fields: Mapping[str, Any],
    tags: Sequence[str],
    idempotency_key: str | None,
    request_hash: str | None,
    now: datetime,
) -> tuple[Study, bool]:
    """The study and all its jobs (``job_fields``: ``repo.create_job``'s common arguments), all
    or nothing; a reused ``idempotency_key`` replays as ``repo.create_job`` does."""
    if idempotency_key is not None:
        existing = _study_by_key(session, idempotency_key)
        if existing is not None:
            return replay(existing, request_hash, "study"), False
    study = Study(
        id=new_id(), name=name, spec=dict(spec), cells=[dict(c, jobs=[]) for c in cells],
        idempotency_key=idempotency_key, request_hash=request_hash, created_at=now,
    )  # fmt: skip

    def add_jobs() -> None:
        members: list[list[dict[str, Any]]] = [[] for _ in cells]
        for spec_job in jobs:
            job, _ = repo.create_job(
                session, recipe=spec_job.recipe, name=spec_job.name, tags=tags,
                study_id=study.id, now=now, **job_fields,
            )  # fmt: skip
            members[spec_job.cell].append({"id": job.id, "seed": spec_job.seed})
        study.cells = [dict(c, jobs=m) for c, m in zip(cells, members, strict=True)]
        session.flush()

    return insert_once(
        session, study, by_key=lambda key: _study_by_key(session, key), what="study", then=add_jobs
    )


def _study_by_key(session: Session, idempotency_key: str) -> Study | None:
    return session.scalars(
        select(Study).where(Study.idempotency_key == idempotency_key)
    ).one_or_none()


def get_study(session: Session, study_id: str) -> Study:
    """The study with this id, else ``NotFound``."""
    return found(session.get(Study, study_id), "study", study_id)


def list_studies(session: Session, *, limit: int, offset: int) -> tuple[list[Study], int]:
    """One page of studies, newest first, and the total count."""
    page = select(Study).order_by(Study.created_at.desc(), Study.id.desc())
    rows = session.scalars(page.limit(limit).offset(offset)).all()
    return list(rows), session.scalar(select(func.count()).select_from(Study)) or 0


def study_jobs(session: Session, study_id: str) -> list[Job]:
    """The study's jobs, oldest first."""
    rows = session.scalars(
        select(Job).where(Job.study_id == study_id).order_by(Job.created_at, Job.id)
    )
    return list(rows.all())


def epoch_payloads(session: Session, job_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each job's "epoch" event payloads, oldest first (one query for all of them)."""
    out: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return out
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.payload)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.kind == "epoch")
        .order_by(JobEvent.id)
    )
    for job_id, payload in rows:
        out[job_id].append(payload)
    return out


def cancel_study(session: Session, study_id: str, *, now: datetime) -> list[Job]:
    """Cancel every unfinished job of the study (queued ones at once, running ones asked to
    stop); finished ones are left as they are. Returns the study's jobs."""
    get_study(session, study_id)
    for job in study_jobs(session, study_id):
        if job.status not in FINAL_STATUSES:
            repo.request_cancel(session, job.id, now=now)
    return study_jobs(session, study_id)


def prune_if_behind(session: Session, *, job_id: str, epoch: int) -> str | None:
    """Apply the job's study's median rule after the job recorded ``epoch``: ask a job that is
    behind to stop, with ``cancel_reason`` saying why. Returns that reason, or None."""
    job = repo.get_job(session, job_id)
    if job.study_id is None or job.cancel_requested or job.status != "running":
        return None
    study = get_study(session, job.study_id)
    rule = study.spec.get("pruning")
    if not rule or rule["epoch"] != epoch or _is_baseline(study, job_id):
        return None
    focal = [j for c in study.cells if not c["baseline"] for j in (m["id"] for m in c["jobs"])]
    scores = {k: _ap_at(v, epoch) for k, v in epoch_payloads(session, focal).items()}
    mine = scores.pop(job_id, None)
    peers = [s for s in scores.values() if s is not None]
    if mine is None or len(peers) < rule["min_peers"]:
        return None
    median = statistics.median(peers)
    if mine >= median:
        return None
    reason = (
        f"{PRUNED} at epoch {epoch}: AP {mine:.4f} below the median {median:.4f} of "
        f"{len(peers)} other jobs of study {study.id}"
    )
    job.cancel_requested, job.cancel_reason = True, reason
    session.flush()
    return reason


def _is_baseline(study: Study, job_id: str) -> bool:
    return any(c["baseline"] and any(m["id"] == job_id for m in c["jobs"]) for c in study.cells)


def _ap_at(payloads: Sequence[Mapping[str, Any]], epoch: int) -> float | None:
    """The AP of the last record of ``epoch`` (a resumed attempt may repeat one)."""
    records = [p for p in payloads if p.get("epoch") == epoch and p.get("metrics")]
    if not records:
        return None
    value = records[-1]["metrics"]["summary"].get("AP")
    return None if value is None else float(value)
