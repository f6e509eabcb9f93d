"""A study request checked and planned: every grid value and every cell resolved as job
creation resolves a recipe, so that a bad key or value is a 422 naming it and no job of the
study can fail for its recipe later."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy.orm import Session

from detector import RecipeError, TrainConfig
from service.api.recipes import resolve_recipe
from service.errors import ApiError
from service.settings import Settings
from service.store.job_datasets import check_job_datasets
from service.store.studies import StudyJob
from service.studies.grid import Cell, cells_of, job_overrides, seeds_of, too_many
from service.study_schemas import StudyCreate

NAME_MAX = 200


def plan_study(
    settings: Settings, session: Session, body: StudyCreate
) -> tuple[list[Cell], list[StudyJob]]:
    """The study's cells and its jobs (cell, seed, resolved recipe, name), or a 422."""
    base = body.base
    base_cfg = _resolve(settings, session, body, [], what="the base job")
    cells = math.prod(len(v) for v in body.grid.values()) + int(body.baseline)
    reason = too_many(body.grid, cells, body.seeds, settings.study_max_jobs)
    if reason is not None:
        raise ApiError(422, "too_many_jobs", reason, {"keys": list(body.grid)})
    for key, values in body.grid.items():
        for value in values:
            cell = Cell(values={key: value})
            _resolve(settings, session, body, cell.overrides(), what=f"grid key {key!r}", key=key)
    planned = cells_of(
        body.grid, baseline=body.baseline, baseline_overrides=body.baseline_overrides
    )
    jobs = []
    for index, cell in enumerate(planned):
        for seed in seeds_of(base_cfg.seed, body.seeds):
            overrides = job_overrides([], cell, seed)
            what = "the baseline" if cell.baseline else f"cell {cell.label!r}"
            cfg = _resolve(settings, session, body, overrides, what=what)
            if seed == base_cfg.seed:  # the datasets do not depend on the seed
                check_job_datasets(
                    session, train_id=base.train_dataset_id,
                    others={"val": base.val_dataset_id, "test": base.test_dataset_id},
                    alpha=cfg.loss.alpha,
                )  # fmt: skip
            recipe = cfg.model_dump(mode="json")
            jobs.append(
                StudyJob(cell=index, seed=seed, recipe=recipe, name=_name(body, cell, seed))
            )
    return planned, jobs


def _resolve(
    settings: Settings,
    session: Session,
    body: StudyCreate,
    extra: Sequence[str],
    *,
    what: str,
    key: str | None = None,
) -> TrainConfig:
    """The base job's recipe with ``extra`` overrides after its own; a 422 naming ``what``."""
    base = body.base
    try:
        return resolve_recipe(
            settings, session, base.recipe, [*base.overrides, *extra], base.recipe_overrides
        )
    except RecipeError as exc:
        details = {"keys": [key]} if key is not None else None
        raise ApiError(422, "invalid_grid", f"{what}: {exc}", details) from exc


def _name(body: StudyCreate, cell: Cell, seed: int) -> str:
    """``<study name>: loss.gamma=2 loss.alpha=0.25 seed=1`` (cut to the column's length)."""
    prefix = body.name or body.base.name
    label = f"{cell.label} seed={seed}"
    return (f"{prefix}: {label}" if prefix else label)[:NAME_MAX]
