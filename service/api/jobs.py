"""``/v1/jobs``: create training jobs, follow them live, cancel them, read their metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse

from service.api.deps import (
    JobIdPath,
    PageLimit,
    PageOffset,
    ReadSessionDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
)
from service.api.recipes import resolve_recipe
from service.clock import now
from service.error_schemas import ErrorBody
from service.schemas import (
    DB_INT_MAX,
    EpochMetrics,
    JobCreate,
    JobEventMessage,
    JobHistory,
    JobHistoryEntry,
    JobPublic,
    JobsPublic,
    JobStatus,
    LabelName,
    MetricsPublic,
    ResourceId,
    Tag,
)
from service.settings import Settings
from service.store import liveness, repo
from service.store.job_datasets import check_job_datasets
from service.store.tables import FINAL_STATUSES, Job, JobEvent

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}


def to_public(job: Job, capacity: int | None) -> JobPublic:
    """The job as the API shows it; ``capacity`` is what ``live_capacity`` returned."""
    derived = {"progress", "waiting_for"}
    return JobPublic.model_validate(
        {
            **{k: getattr(job, k) for k in JobPublic.model_fields if k not in derived},
            "progress": _progress(job.progress),
            "waiting_for": liveness.waiting_for(job, capacity),
        }
    )


def live_capacity(session: Session, settings: Settings) -> int | None:
    """The most devices a live worker offers (None: no live worker)."""
    return liveness.live_capacity(session, now=now(), stale_s=settings.worker_stale_s)


def _progress(step: dict[str, Any] | None) -> dict[str, Any] | None:
    if not step:
        return None
    keys = ("epoch", "iteration", "max_iters", "losses", "lr", "images_per_s", "eta_s")
    return {k: step.get(k) for k in keys}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        **_ERRORS,
        200: {"model": JobPublic, "description": "a replay: the job of this Idempotency-Key"},
        409: {"model": ErrorBody},
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JobPublic:
    """Queue a training job; a retry with the same ``Idempotency-Key`` gets the same job (200)."""
    cfg = resolve_recipe(settings, session, body.recipe, body.overrides, body.recipe_overrides)
    check_job_datasets(
        session,
        train_id=body.train_dataset_id,
        others={"val": body.val_dataset_id, "test": body.test_dataset_id},
        alpha=cfg.loss.alpha,
    )
    job, created = repo.create_job(
        session,
        recipe=cfg.model_dump(mode="json"),
        train_dataset_id=body.train_dataset_id,
        val_dataset_id=body.val_dataset_id,
        test_dataset_id=body.test_dataset_id,
        holdout_fraction=None if body.val_dataset_id else body.holdout_fraction,
        priority=body.priority,
        devices=body.devices,
        max_attempts=settings.max_attempts,
        idempotency_key=idempotency_key,
        request_hash=hashlib.sha256(body.model_dump_json().encode()).hexdigest(),
        name=body.name,
        tags=body.tags,
        now=now(),
    )
    public = to_public(job, live_capacity(session, settings))
    session.commit()  # before the response is sent: the write lock is not held any longer
    if not created:
        response.status_code = status.HTTP_200_OK
    return public


@router.get("", response_model=JobsPublic, responses=_ERRORS)
def list_jobs(
    session: ReadSessionDep,
    settings: SettingsDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    name: Annotated[LabelName | None, Query(description="jobs of this name")] = None,
    tag: Annotated[Tag | None, Query(description="jobs with this tag")] = None,
    study_id: Annotated[ResourceId | None, Query(description="the jobs of this study")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> JobsPublic:
    """Jobs, newest first; the filters given must all hold."""
    rows, count = repo.list_jobs(
        session, status=status_filter, name=name, tag=tag, study_id=study_id,
        limit=limit, offset=offset,
    )  # fmt: skip
    capacity = live_capacity(session, settings)
    return JobsPublic(data=[to_public(r, capacity) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: JobIdPath, session: ReadSessionDep, settings: SettingsDep) -> JobPublic:
    return to_public(repo.get_job(session, job_id), live_capacity(session, settings))


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses={**_ERRORS, 409: {"model": ErrorBody}}
)
def cancel_job(job_id: JobIdPath, session: SessionDep, settings: SettingsDep) -> JobPublic:
    """Queued jobs stop at once; running ones checkpoint and stop; finished ones: 409."""
    job = repo.request_cancel(session, job_id, now=now())
    public = to_public(job, live_capacity(session, settings))
    session.commit()
    return public


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses=_ERRORS)
def get_metrics(job_id: JobIdPath, session: ReadSessionDep) -> MetricsPublic:
    """All 12 COCO numbers and per-class AP/AP50/AR100: the latest, per epoch, and on test."""
    job = repo.get_job(session, job_id)
    # A resumed attempt may repeat an epoch its predecessor recorded: the later record wins.
    by_epoch = {e.payload["epoch"]: e.payload for e in repo.epoch_events(session, job_id)}
    history = [EpochMetrics.model_validate(_epoch_fields(by_epoch[k])) for k in sorted(by_epoch)]
    latest = next((h.metrics for h in reversed(history) if h.metrics is not None), None)
    test = None
    for event in repo.events_after(session, job_id, after_id=0, limit=1_000_000):
        if event.kind == "end" and event.payload.get("test_metrics") is not None:
            test = event.payload["test_metrics"]
    return MetricsPublic.model_validate(
        {"job_id": job.id, "status": job.status, "latest": latest, "test": test, "history": history}
    )


def _epoch_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: payload.get(k) for k in EpochMetrics.model_fields}


_EVENTS = {
    "description": "server-sent events, live, until the job ends",
    # itemSchema (OpenAPI 3.2, read by schemathesis): each event's fields; no "schema", which
    # would describe the whole stream as one value a generated client then tries to parse.
    "content": {"text/event-stream": {"itemSchema": JobEventMessage.model_json_schema()}},
}


@router.get(
    "/{job_id}/events", responses={**_ERRORS, 200: _EVENTS}, response_class=EventSourceResponse
)
async def stream_events(
    job_id: JobIdPath,
    sessions: SessionsDep,
    last_event_id: Annotated[int, Header(alias="Last-Event-ID", ge=0, le=DB_INT_MAX)] = 0,
) -> EventSourceResponse:
    """Server-sent events: the stored ones after ``Last-Event-ID``, then live, until the end."""
    # No request-scoped session: it would stay open for the whole stream. Each poll opens a
    # short read session in the thread pool instead, never on the event loop.
    await run_in_threadpool(_poll, sessions.read, job_id, 0, 0)  # 404 before the stream starts
    return EventSourceResponse(_events(sessions.read, job_id, after=last_event_id))


def _poll(
    sessions: sessionmaker[Session], job_id: str, after: int, limit: int
) -> tuple[list[tuple[int, str, str]], bool]:
    """Up to ``limit`` events after ``after`` as (id, kind, JSON), and whether the job ended."""
    with sessions() as session:
        finished = repo.get_job(session, job_id).status in FINAL_STATUSES
        batch = repo.events_after(session, job_id, after_id=after, limit=limit)
        return [(e.id, e.kind, json.dumps(e.payload)) for e in batch], finished


async def _events(
    sessions: sessionmaker[Session], job_id: str, *, after: int
) -> AsyncIterator[dict[str, Any]]:
    last = after
    while True:
        # The status is read before the events: a job that ended has all its events stored,
        # so "finished and nothing new" cannot miss the last ones.
        batch, finished = await run_in_threadpool(_poll, sessions, job_id, last, 500)
        for event_id, kind, data in batch:
            last = event_id
            yield {"id": str(event_id), "event": kind, "data": data}
        if finished and not batch:
            return
        if not batch:
            await asyncio.sleep(0.5)


_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}


@router.get("/{job_id}/logs", response_class=PlainTextResponse, responses={**_ERRORS, 200: _TEXT})
def get_logs(
    job_id: JobIdPath,
    session: ReadSessionDep,
    storage: StorageDep,
    tail: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> str:
    """The last ``tail`` lines of the training log."""
    repo.get_job(session, job_id)
    path = storage.log_file(job_id)
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) + "\n"


@router.get("/{job_id}/history", response_model=JobHistory, responses=_ERRORS)
def get_history(job_id: JobIdPath, session: ReadSessionDep) -> JobHistory:
    """The attempt history: each claim (attempt, worker), each training start (the iteration
    it resumed from), each status change with its reason, and errors; oldest first."""
    repo.get_job(session, job_id)
    entries = [_history_entry(e) for e in repo.attempt_events(session, job_id)]
    return JobHistory(job_id=job_id, data=entries)


def _history_entry(event: JobEvent) -> JobHistoryEntry:
    p = event.payload
    iteration = p.get("iteration") if event.kind == "start" else p.get("checkpoint_iteration")
    warnings = p.get("warnings") if event.kind == "start" else None
    message = p.get("error") or p.get("reason") or ("\n".join(warnings) if warnings else None)
    return JobHistoryEntry(
        id=event.id,
        kind=event.kind,
        at=event.created_at,
        status=p.get("status"),
        attempt=p.get("attempt"),
        worker_id=p.get("worker_id") or p.get("previous_owner"),
        iteration=iteration if isinstance(iteration, int) else None,
        message=message if isinstance(message, str) else None,
    )
