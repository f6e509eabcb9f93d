"""A trained model as one safetensors file: the weights, and its card in the file's metadata.

The file is what leaves the training run: it loads with no pickle (unlike a checkpoint, which
also carries the optimiser and RNG state for resuming) and describes itself: the recipe that
builds the network, the classes with their COCO ids, the per-class score thresholds chosen on
the validation set, and the validation metrics they come from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from detector.config import TrainConfig
from detector.engine.checkpoint import load_checkpoint
from detector.evaluate.coco import CocoMetrics

FORMAT = "retinanet-service/1"
_CARD_KEY = "retinanet.card"


class ClassEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    name: str


class ModelCard(BaseModel):
    """What a model file says about itself."""

    model_config = ConfigDict(frozen=True)

    format: str = FORMAT
    recipe: TrainConfig
    classes: tuple[ClassEntry, ...]
    score_thresholds: dict[int, float] = {}
    """COCO category id -> the score with the best F1 on the validation set (classes with no
    correct detection there are absent)."""
    val_metrics: CocoMetrics | None = None


class ModelFileError(ValueError):
    """A file that is not a readable model file of this project."""


def card_from_checkpoint(ckpt: dict[str, Any]) -> ModelCard:
    """The card of a checkpoint (as :func:`detector.engine.checkpoint.load_checkpoint` reads it);
    thresholds and metrics come from the validation run stored with it, when there was one."""
    metrics = ckpt.get("val_metrics")
    val = None if metrics is None else CocoMetrics.model_validate(metrics)
    thresholds = {}
    if val is not None:
        thresholds = {
            c.category_id: c.best_f1_threshold
            for c in val.per_class
            if c.best_f1_threshold is not None
        }
    return ModelCard(
        recipe=TrainConfig.model_validate(ckpt["recipe"]),
        classes=tuple(ClassEntry.model_validate(c) for c in ckpt["classes"]),
        score_thresholds=thresholds,
        val_metrics=val,
    )


def save_model_file(checkpoint: Path, out: Path) -> ModelCard:
    """Write ``out`` (``.safetensors``) from one of our checkpoints; returns its card."""
    ckpt = load_checkpoint(checkpoint)
    card = card_from_checkpoint(ckpt)
    write_model_file(ckpt["model"], card, out)
    return card


def write_model_file(state: dict[str, Tensor], card: ModelCard, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    # safetensors refuses tensors that share memory; contiguous copies keep it simple.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={"format": FORMAT, _CARD_KEY: card.model_dump_json()})
    tmp.replace(out)


def read_model_file(path: Path) -> tuple[ModelCard, dict[str, Tensor]]:
    """The card and the weights; :class:`ModelFileError` for anything else."""
    card = read_card(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:  # a truncated or damaged file
        raise ModelFileError(f"{path}: unreadable weights: {exc}") from None
    return card, state


def read_card(path: Path) -> ModelCard:
    """The card alone (reads the header only)."""
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is not a safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT or _CARD_KEY not in metadata:
        raise ModelFileError(f"{path} is not a model file of this project (format {FORMAT})")
    try:
        return ModelCard.model_validate(json.loads(metadata[_CARD_KEY]))
    except (ValueError, ValidationError) as exc:
        raise ModelFileError(f"{path}: unreadable model card: {exc}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
