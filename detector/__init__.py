"""RetinaNet with a sigmoid focal-loss head: data, model, training and evaluation.

No web code lives here. The service reaches the ML only through the names below.
"""

from detector.artifact import ModelCard, ModelFileError, read_card, save_model_file, sha256_file
from detector.config import RecipeError, TrainConfig, load_recipe, recipe_from_dict
from detector.data.validate import (
    CleanCoco,
    DatasetError,
    ValidationReport,
    load_coco,
    validate_coco,
)
from detector.engine.callbacks import Callback, EpochEvent, StepEvent
from detector.engine.checkpoint import load_checkpoint, remove_stale_temporaries
from detector.engine.distributed import local_devices
from detector.engine.trainer import FitResult, NonFiniteLossError, fit
from detector.evaluate.coco import CocoMetrics
from detector.export import ExportMismatchError, OnnxExport, ParityReport, export_onnx
from detector.predict import DetectionOut, PredictOptions, Predictor, read_rgb

__all__ = [
    "Callback",
    "CleanCoco",
    "CocoMetrics",
    "DatasetError",
    "DetectionOut",
    "EpochEvent",
    "ExportMismatchError",
    "FitResult",
    "ModelCard",
    "ModelFileError",
    "NonFiniteLossError",
    "OnnxExport",
    "ParityReport",
    "PredictOptions",
    "Predictor",
    "RecipeError",
    "StepEvent",
    "TrainConfig",
    "ValidationReport",
    "export_onnx",
    "fit",
    "load_checkpoint",
    "load_coco",
    "load_recipe",
    "local_devices",
    "read_card",
    "read_rgb",
    "recipe_from_dict",
    "remove_stale_temporaries",
    "save_model_file",
    "sha256_file",
    "validate_coco",
]
