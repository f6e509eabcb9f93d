"""Repository functions for trained models (re-exported by ``repo``).

A model row is written by the worker in the transaction that marks its job succeeded, so a
succeeded job and its model appear together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.store.errors import found
from service.store.tables import Model, new_id


def create_model(
    session: Session,
    *,
    job_id: str,
    name: str,
    weights_path: str,
    weights_sha256: str,
    weights_bytes: int,
    classes: Sequence[Mapping[str, Any]],
    recipe: Mapping[str, Any],
    score_thresholds: Mapping[int, float],
    metrics: Mapping[str, Any] | None,
    metrics_split: str | None,
    now: datetime,
) -> Model:
    """Add the model of ``job_id``; the existing row when that job already has one."""
    existing = session.scalars(select(Model).where(Model.job_id == job_id)).one_or_none()
    if existing is not None:
        return existing
    model = Model(
        id=new_id(),
        job_id=job_id,
        name=name,
        weights_path=weights_path,
        weights_sha256=weights_sha256,
        weights_bytes=weights_bytes,
        classes=[dict(c) for c in classes],
        recipe=dict(recipe),
        # JSON object keys are strings; the API turns them back into category ids.
        score_thresholds={str(k): float(v) for k, v in score_thresholds.items()},
        metrics=None if metrics is None else dict(metrics),
        metrics_split=metrics_split,
        created_at=now,
    )
    session.add(model)
    session.flush()
    return model


def get_model(session: Session, model_id: str) -> Model:
    """The model with this id, else ``NotFound``."""
    return found(session.get(Model, model_id), "model", model_id)


def list_models(session: Session, *, limit: int, offset: int) -> tuple[list[Model], int]:
    """Newest first, with the total count."""
    total = session.scalar(select(func.count()).select_from(Model)) or 0
    rows = session.scalars(
        select(Model).order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def delete_model(session: Session, model_id: str) -> Model:
    """Delete the row and return it (the caller removes its files)."""
    model = get_model(session, model_id)
    session.delete(model)
    session.flush()
    return model
