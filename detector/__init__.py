"""RetinaNet with a sigmoid focal-loss head: data, model, training and evaluation.

No web code lives here. The service reaches the ML only through the names below.
"""

from detector.config import RecipeError, TrainConfig, load_recipe, recipe_from_dict
from detector.data.validate import (
    CleanCoco,
    DatasetError,
    ValidationReport,
    load_coco,
    validate_coco,
)
from detector.engine.callbacks import Callback, EpochEvent, StepEvent
from detector.engine.trainer import FitResult, NonFiniteLossError, fit
from detector.evaluate.coco import CocoMetrics
from detector.predict import DetectionOut, Predictor

__all__ = [
    "Callback",
    "CleanCoco",
    "CocoMetrics",
    "DatasetError",
    "DetectionOut",
    "EpochEvent",
    "FitResult",
    "NonFiniteLossError",
    "Predictor",
    "RecipeError",
    "StepEvent",
    "TrainConfig",
    "ValidationReport",
    "fit",
    "load_coco",
    "load_recipe",
    "recipe_from_dict",
    "validate_coco",
]
