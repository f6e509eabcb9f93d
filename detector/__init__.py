"""RetinaNet with a sigmoid focal-loss head: data, model, training and evaluation.

No web code lives here. The service reaches the ML only through the names below (a test
walks ``service/`` and refuses any deeper import).
"""

from detector.artifact import ModelCard, ModelFileError, read_card, save_model_file, sha256_file
from detector.commands import data_overrides
from detector.commands import main as cli_main
from detector.config import TrainConfig
from detector.data.images import is_clean_text, is_file_name
from detector.data.validate import (
    CleanCoco,
    DatasetError,
    ValidationReport,
    load_coco,
    validate_coco,
)
from detector.draw import render_png
from detector.engine.callbacks import (
    Callback,
    EpochEvent,
    EventKind,
    ProgressBar,
    StepEvent,
    StopOnSignal,
    Trainer,
    start_payload,
)
from detector.engine.checkpoint import last_checkpoint, load_checkpoint, remove_stale_temporaries
from detector.engine.distributed import (
    is_main_process,
    local_devices,
    rank_environment,
    usable_cpus,
)
from detector.engine.tracking_tensorboard import tensorboard_dir
from detector.engine.trainer import FitResult, NonFiniteLossError, fit
from detector.evaluate.coco import CocoMetrics
from detector.export import ExportMismatchError, OnnxExport, ParityReport, export_onnx
from detector.final import Final, finalize, test_metrics_file
from detector.model.weight_names import is_weights_name
from detector.onnx_network import OnnxNetworkError, onnxruntime_predictor
from detector.plots import PLOT_NAMES, plots_dir
from detector.predict import DetectionOut, PredictOptions, Predictor, read_rgb
from detector.recipe import RecipeError, check_nesting, load_recipe, recipe_from_dict

__all__ = [
    "PLOT_NAMES",
    "Callback",
    "CleanCoco",
    "CocoMetrics",
    "DatasetError",
    "DetectionOut",
    "EpochEvent",
    "EventKind",
    "ExportMismatchError",
    "Final",
    "FitResult",
    "ModelCard",
    "ModelFileError",
    "NonFiniteLossError",
    "OnnxExport",
    "OnnxNetworkError",
    "ParityReport",
    "PredictOptions",
    "Predictor",
    "ProgressBar",
    "RecipeError",
    "StepEvent",
    "StopOnSignal",
    "TrainConfig",
    "Trainer",
    "ValidationReport",
    "check_nesting",
    "cli_main",
    "data_overrides",
    "export_onnx",
    "finalize",
    "fit",
    "is_clean_text",
    "is_file_name",
    "is_main_process",
    "is_weights_name",
    "last_checkpoint",
    "load_checkpoint",
    "load_coco",
    "load_recipe",
    "local_devices",
    "onnxruntime_predictor",
    "plots_dir",
    "rank_environment",
    "read_card",
    "read_rgb",
    "recipe_from_dict",
    "remove_stale_temporaries",
    "render_png",
    "save_model_file",
    "sha256_file",
    "start_payload",
    "tensorboard_dir",
    "test_metrics_file",
    "usable_cpus",
    "validate_coco",
]
