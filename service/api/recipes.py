"""``/v1/recipes``: the training recipes a job may name, resolved (bases merged), so that a
client (the dashboard's job form) can show what each field defaults to; and a request's recipe
resolved as job creation does it: the name looked up in the recipes folder, then the dotted
overrides and the merged sections (``detector.load_recipe``), then the initial weights it
names (``service.store.job_weights``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from detector import RecipeError, TrainConfig, load_recipe
from service.api.deps import SettingsDep
from service.error_schemas import ErrorBody
from service.errors import ApiError
from service.schemas import RecipePublic, RecipesPublic
from service.settings import Settings
from service.store.job_weights import resolve_job_weights

router = APIRouter(prefix="/v1/recipes", tags=["recipes"])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}}


@router.get("", response_model=RecipesPublic, responses=_ERRORS)
def list_recipes(settings: SettingsDep) -> RecipesPublic:
    """Every recipe in ``RETINANET_RECIPES_DIR`` that loads (a broken file is left out: a job
    naming it is refused with its error)."""
    data = []
    for path in sorted(settings.recipes_dir.glob("*.yaml")):
        try:
            cfg = load_recipe(path, [])
        except RecipeError:
            continue
        data.append(RecipePublic(name=path.stem, recipe=cfg))
    return RecipesPublic(data=data, count=len(data))


def resolve_recipe(
    settings: Settings,
    session: Session,
    name: str,
    overrides: Sequence[str],
    update: Mapping[str, Any],
) -> TrainConfig:
    """The resolved recipe; 422 ``unknown_recipe`` for a name the folder lacks (a bad key or
    value raises ``RecipeError``, which the API answers 422 naming it), and a refusal for
    what a request may not name: initial weights on a server path, a tracking server (a
    ``file://`` URI would have the worker write where the job asks)."""
    recipe_file = settings.recipes_dir / f"{name}.yaml"
    if not recipe_file.is_file():
        names = sorted(p.stem for p in settings.recipes_dir.glob("*.yaml"))
        raise ApiError(422, "unknown_recipe", f"no recipe {name!r}; available: {', '.join(names)}")
    cfg = load_recipe(recipe_file, list(overrides), update=dict(update))
    if cfg.tracking.mlflow_uri is not None:  # the service's alone (service/worker/recipe.py)
        raise ApiError(
            422,
            "invalid_recipe",
            "tracking.mlflow_uri: a job cannot name a tracking server; the service's is "
            "RETINANET_MLFLOW_URI",
            {"keys": ["tracking.mlflow_uri"]},
        )
    return resolve_job_weights(
        session, cfg, recipe=load_recipe(recipe_file), data_dir=settings.data_dir
    )
