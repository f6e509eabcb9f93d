"""``/v1/studies``: a grid of ordinary jobs compared in one table (and a plot)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response, status

from service.api.deps import (
    PageLimit,
    PageOffset,
    ReadSessionDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
)
from service.clock import now
from service.error_schemas import ErrorBody
from service.schemas import ID_PATTERN
from service.store import studies as store
from service.studies.plan import plan_study
from service.studies.plot import plot_png
from service.studies.view import study_public, study_summary, table_of
from service.study_schemas import StudiesPublic, StudyCreate, StudyPublic

router = APIRouter(prefix="/v1/studies", tags=["studies"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
_PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
StudyIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a study id")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyPublic,
    responses={
        **_ERRORS,
        200: {"model": StudyPublic, "description": "a replay: the study of this Idempotency-Key"},
        409: {"model": ErrorBody},
    },
)
def create_study(
    body: StudyCreate,
    response: Response,
    sessions: SessionsDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> StudyPublic:
    """Queue one job per cell and seed (all or none); a bad grid key or value is a 422 naming
    it. A retry with the same ``Idempotency-Key`` gets the same study (200)."""
    # The recipes are resolved before the write transaction: on SQLite it holds the one lock.
    with sessions.read() as session:
        cells, jobs = plan_study(settings, session, body)
    base = body.base
    spec = body.model_dump(mode="json")
    with sessions.write() as session:
        study, created = store.create_study(
            session, name=body.name, spec=spec,
            cells=[{"values": c.values, "baseline": c.baseline, "extra": list(c.extra)}
                   for c in cells],
            jobs=jobs, tags=base.tags,
            job_fields={
                "train_dataset_id": base.train_dataset_id,
                "val_dataset_id": base.val_dataset_id,
                "test_dataset_id": base.test_dataset_id,
                "holdout_fraction": None if base.val_dataset_id else base.holdout_fraction,
                "priority": base.priority, "devices": base.devices,
                "max_attempts": settings.max_attempts,
            },
            idempotency_key=idempotency_key,
            request_hash=hashlib.sha256(body.model_dump_json().encode()).hexdigest(),
            now=now(),
        )  # fmt: skip
        public = study_public(session, study)
        session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return public


@router.get("", response_model=StudiesPublic, responses=_ERRORS)
def list_studies(
    session: ReadSessionDep, limit: PageLimit = 50, offset: PageOffset = 0
) -> StudiesPublic:
    """Studies, newest first, with their jobs' status counts (the table: ``GET /{id}``)."""
    rows, count = store.list_studies(session, limit=limit, offset=offset)
    return StudiesPublic(data=[study_summary(session, s) for s in rows], count=count)


@router.get("/{study_id}", response_model=StudyPublic, responses=_ERRORS)
def get_study(study_id: StudyIdPath, session: ReadSessionDep) -> StudyPublic:
    """Status counts and the table: per cell, mean and spread over seeds, the best cell, and
    the verdict against the alpha-balanced CE baseline."""
    return study_public(session, store.get_study(session, study_id))


@router.post("/{study_id}/cancel", response_model=StudyPublic, responses=_ERRORS)
def cancel_study(study_id: StudyIdPath, session: SessionDep) -> StudyPublic:
    """Cancel every unfinished job of the study (finished ones keep their results)."""
    store.cancel_study(session, study_id, now=now())
    public = study_public(session, store.get_study(session, study_id))
    session.commit()
    return public


@router.get(
    "/{study_id}/plot.png",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": _PNG, "description": "AP against gamma"}},
)
def get_plot(study_id: StudyIdPath, session: ReadSessionDep) -> Response:
    """AP against gamma, one line per alpha with error bars over seeds, the baseline a band."""
    study = store.get_study(session, study_id)
    table = table_of(session, study)
    session.close()  # drawing takes a while; the session is not needed for it
    return Response(
        plot_png(table, title=study.name or f"study {study.id}"), media_type="image/png"
    )
