"""``/v1/recipes``: the training recipes a job may name, resolved (bases merged), so that a
client (the dashboard's job form) can show what each field defaults to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from detector import RecipeError, load_recipe
from service.api.deps import SettingsDep
from service.schemas import ErrorBody, RecipePublic, RecipesPublic

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
        data.append(RecipePublic(name=path.stem, recipe=cfg.model_dump(mode="json")))
    return RecipesPublic(data=data, count=len(data))
