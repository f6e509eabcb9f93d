"""The initial weights a job over HTTP may name, resolved when the job is created.

A request may name torchvision weights (``ResNet50_Weights.IMAGENET1K_V2``, ``imagenet``,
``coco``: read from the workers' torchvision cache), or one of this service's models to
fine-tune from (``model.weights=model:<model_id>``, replaced here by that model's file inside
the data directory). It may never name a file on the server: a path reaches the training only
when the operator's recipe itself holds it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from detector import TrainConfig, is_weights_name
from service.refusal import Refusal
from service.store.errors import NotFound
from service.store.model_rows import get_model

MODEL_PREFIX = "model:"
_FIELDS = ("backbone_weights", "weights")


class JobWeightsError(Refusal):
    """Initial weights a job may not name (422, the field in the details)."""


def resolve_job_weights(
    session: Session, cfg: TrainConfig, *, recipe: TrainConfig, data_dir: Path
) -> TrainConfig:
    """``cfg`` (the recipe with the request's overrides) with ``model:<id>`` resolved to that
    model's file; :class:`JobWeightsError` for a path the request put there.

    Args:
        recipe: the operator's recipe without the request's overrides.
    """
    update: dict[str, str] = {}
    for field in _FIELDS:
        ref = getattr(cfg.model, field)
        if ref is None or ref == getattr(recipe.model, field) or is_weights_name(ref):
            continue
        if field == "weights" and ref.startswith(MODEL_PREFIX):
            update[field] = _model_file(session, ref.removeprefix(MODEL_PREFIX), data_dir)
            continue
        raise JobWeightsError(
            "invalid_recipe",
            f"model.{field}: {ref[:200]!r} is not accepted over HTTP: name torchvision weights "
            "(e.g. ResNet50_Weights.IMAGENET1K_V2, imagenet, coco)"
            + (" or a model of this service (model:<model_id>)" if field == "weights" else ""),
            {"keys": [f"model.{field}"]},
        )
    if not update:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})


def _model_file(session: Session, model_id: str, data_dir: Path) -> str:
    try:
        model = get_model(session, model_id)
    except NotFound:
        raise JobWeightsError(
            "invalid_recipe",
            f"model.weights: no model {model_id[:100]!r} to fine-tune from",
            {"keys": ["model.weights"]},
        ) from None
    path = Path(model.weights_path).resolve()
    if not path.is_relative_to(data_dir.resolve()):  # a row written by hand; never trusted
        raise JobWeightsError(
            "invalid_recipe",
            f"model.weights: model {model_id!r} has no file in the data directory",
            {"keys": ["model.weights"]},
        )
    return str(path)
