"""Request and response bodies of the HTTP API (one family of schemas per resource).

Request bodies refuse at the door what the store or the training cannot take: integers past
the store's 32-bit columns, non-finite numbers, text with control characters (PostgreSQL
refuses NUL; no path holds a newline), recipe overrides nested deeper than any recipe.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from detector import (
    CocoMetrics,
    DetectionOut,
    ParityReport,
    PredictOptions,
    TrainConfig,
    ValidationReport,
    check_nesting,
    is_clean_text,
)

# The store's definition, re-exported (``as``) for the API's schemas and routes.
from service.store.tables import EventKind
from service.store.tables import JobStatus as JobStatus

DB_INT_MIN, DB_INT_MAX = -(2**31), 2**31 - 1
"""The store's ``Integer`` columns: 32 bits on PostgreSQL."""
ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
"""Every id the service hands out (hex uuids); anything else cannot name a resource."""


def _clean(value: str) -> str:
    if not is_clean_text(value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[str, AfterValidator(_clean)]
ResourceId = Annotated[str, Field(pattern=ID_PATTERN)]
DatasetName = Annotated[Text, Field(min_length=1, max_length=200)]
LabelName = Annotated[Text, Field(min_length=1, max_length=200)]
"""A job's or a study's free name (not unique)."""
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=+\-]{0,63}$"
Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="letters, digits and _.:=+-")]
MAX_TAGS = 16
ServerPath = Annotated[Text, Field(min_length=1, max_length=4096)]


class Body(BaseModel):
    """The base of every request and response body: frozen, no unknown keys, finite numbers."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Readiness(Body):
    """``/health``'s answer; on 503, ``database`` or ``worker_last_seen_s`` says why."""

    status: Literal["ok", "unavailable"]
    database: str | None = Field(default=None, description='"ok", or the error it raised')
    worker_last_seen_s: float | None = Field(
        default=None, description="seconds since a worker was seen (None: never)"
    )


class DatasetRegister(Body):
    """Register a COCO dataset already on the server, under the configured dataset root."""

    name: DatasetName
    annotations: ServerPath = Field(
        description="COCO JSON, relative to the dataset root or absolute inside it"
    )
    images: ServerPath = Field(
        description="image folder, relative to the dataset root or absolute inside it"
    )


class DatasetReport(ValidationReport):
    """The validator's report as clients see it: its two paths, and the files its messages
    name, relative to the dataset (the folder holding both), never the server's paths."""

    annotations_path: str  # type: ignore[assignment]
    image_dir: str  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _relative(cls, data: Any) -> Any:
        if isinstance(data, ValidationReport):
            data = data.model_dump(mode="json")
        if not isinstance(data, dict) or not {"annotations_path", "image_dir"} <= data.keys():
            return data
        annotations, images = PurePath(data["annotations_path"]), PurePath(data["image_dir"])
        if not (annotations.is_absolute() and images.is_absolute()):
            return data
        base = PurePath(os.path.commonpath([annotations.parent, images]))
        # Messages name files too (a missing image, an unreadable JSON): by the same rule.
        prefix = f"{base.as_posix().rstrip('/')}/"
        issues = [
            {**issue, "message": str(issue.get("message", "")).replace(prefix, "")}
            if isinstance(issue, dict)
            else issue
            for issue in data.get("issues", [])
        ]
        return {
            **data,
            "annotations_path": annotations.relative_to(base).as_posix(),
            "image_dir": images.relative_to(base).as_posix() or ".",
            "issues": issues,
        }


class Category(Body):
    id: int = Field(description="COCO category id")
    name: str


class DatasetPublic(Body):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: str
    name: str
    source: Literal["upload", "folder"]
    num_images: int
    num_boxes: int
    class_counts: dict[str, int]
    categories: list[Category]
    created_at: datetime
    report: DatasetReport = Field(description="the validator's report (warnings and info)")


class DatasetsPublic(Body):
    data: list[DatasetPublic]
    count: int


class JobCreate(Body):
    train_dataset_id: ResourceId
    val_dataset_id: ResourceId | None = None
    test_dataset_id: ResourceId | None = None
    holdout_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="validation share of the training set when no val set is given",
    )
    recipe: str = Field(
        default="shapes_tiny", pattern=r"^[A-Za-z0-9_\-]+$", description="a recipe name"
    )
    recipe_overrides: Annotated[dict[str, Any], AfterValidator(check_nesting)] = Field(
        default_factory=dict, description="recipe sections merged over the named recipe"
    )
    overrides: list[Annotated[str, Field(max_length=10_000)]] = Field(
        default_factory=list, max_length=1000, description='dotted overrides: ["loss.gamma=1.5"]'
    )
    priority: int = Field(default=0, ge=DB_INT_MIN, le=DB_INT_MAX)
    devices: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes that train the job together, one per GPU (data-parallel)",
    )
    name: LabelName | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="list filters")


class Progress(Body):
    epoch: int | None = None
    iteration: int | None = None
    max_iters: int | None = None
    losses: dict[str, float] | None = None
    lr: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None


class JobPublic(Body):
    id: str
    name: str | None = None
    tags: list[str] = Field(default_factory=list)
    study_id: str | None = Field(default=None, description="the study the job is a cell of")
    status: JobStatus
    priority: int
    devices: int
    attempt: int
    max_attempts: int
    cancel_requested: bool
    train_dataset_id: str | None = Field(description="None once the dataset was deleted")
    val_dataset_id: str | None
    test_dataset_id: str | None
    progress: Progress | None
    error: str | None
    cancel_reason: str | None = Field(
        default=None, description="why it was stopped without its user asking (study pruning)"
    )
    waiting_for: str | None = Field(
        default=None,
        description="why a queued job has not started: no live worker, or none with its devices",
    )
    recipe: TrainConfig = Field(description="the resolved recipe the job trains")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventMessage(Body):
    """One server-sent event of ``GET /v1/jobs/{id}/events``, as its fields arrive."""

    id: str = Field(description="the event's id: send it as Last-Event-ID to resume after it")
    event: EventKind
    data: str = Field(description="the event's payload, a JSON object")


class JobsPublic(Body):
    data: list[JobPublic]
    count: int


class EpochMetrics(Body):
    epoch: int
    iteration: int
    train_losses: dict[str, float]
    val_losses: dict[str, float] | None
    metrics: CocoMetrics | None = Field(description="validation COCO metrics (None: not evaluated)")


class MetricsPublic(Body):
    job_id: str
    status: JobStatus
    latest: CocoMetrics | None = Field(description="the last validation COCO metrics")
    test: CocoMetrics | None = Field(description="test-set COCO metrics of the best checkpoint")
    history: list[EpochMetrics]


class ModelClass(Body):
    id: int = Field(description="COCO category id")
    name: str
    score_threshold: float | None = Field(
        description="the score with the best F1 on the validation set (None: never correct)"
    )


class ModelPublic(Body):
    id: str
    name: str
    job_id: str | None
    classes: list[ModelClass]
    recipe: TrainConfig = Field(description="the recipe the model was trained with")
    metrics: CocoMetrics | None = Field(description="COCO metrics (see metrics_split)")
    metrics_split: Literal["test", "val"] | None
    weights_sha256: str
    weights_bytes: int
    created_at: datetime


class ModelsPublic(Body):
    data: list[ModelPublic]
    count: int


class PredictForm(PredictOptions):
    """The predict form: the images and the options (:class:`detector.PredictOptions`, the one
    definition of their bounds). Limits set by the server (``RETINANET_PREDICT_MAX_FILES``,
    ``..._MAX_FILE_MB``, ``..._MAX_PIXELS``) are filled into the document at start-up."""

    files: list[UploadFile] = Field(min_length=1, description="the images (JPEG, PNG, ...)")

    def options(self) -> PredictOptions:
        return PredictOptions.model_validate(self.model_dump(exclude={"files"}))


class ImageDetections(Body):
    file: str
    width: int
    height: int
    detections: list[DetectionOut] = Field(description="bbox: [x, y, w, h], original pixels")


class PredictPublic(Body):
    model_id: str
    images: list[ImageDetections]


class ExportRequest(Body):
    format: Literal["onnx"] = "onnx"
    input_size: (
        tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]] | None
    ) = Field(
        default=None, description="(H, W) of the graph's input; default: the recipe's longest side"
    )


class ExportPublic(Body):
    model_id: str
    format: Literal["onnx"]
    input_size: tuple[int, int]
    sha256: str
    bytes: int
    parity: ParityReport = Field(description="onnxruntime vs PyTorch on sample images")
    download: str = Field(description="GET this path for the file")


class WorkerPublic(Body):
    id: str
    host: str
    pid: int
    devices: int = Field(description="the most processes (GPUs) it gives one job")
    last_seen_at: datetime
    alive: bool = Field(description="seen within RETINANET_WORKER_STALE_S")
    job_id: str | None = Field(description="the job it is running, if any")


class WorkersPublic(Body):
    data: list[WorkerPublic]
    count: int
    max_devices: int = Field(
        description="the most devices a job can ask for and be run by a live worker (0: none)"
    )


class SampleBox(Body):
    category_id: int = Field(description="COCO category id")
    bbox: tuple[float, float, float, float] = Field(description="[x, y, w, h], image pixels")


class DatasetSample(Body):
    """One image of a dataset with its boxes as its annotation file has them."""

    image_id: int
    file_name: str
    width: int | None
    height: int | None
    boxes: list[SampleBox]
    url: str = Field(description="GET this path for the image file")


class DatasetSamples(Body):
    data: list[DatasetSample]
    count: int = Field(description="images in the dataset's annotation file")


class JobHistoryEntry(Body):
    """A claim, a training start (or resume), a status change or an error of a job."""

    id: int
    kind: Literal["start", "status", "error"]
    at: datetime
    status: JobStatus | None = None
    attempt: int | None = None
    worker_id: str | None = None
    iteration: int | None = Field(
        default=None, description="start: resumed from; status: the checkpoint's iteration"
    )
    message: str | None = Field(
        default=None,
        description="status: the reason; error: the error; start: the setup's warnings (a "
        "weak anchor fit, a precision this device only emulates), one per line",
    )


class JobHistory(Body):
    job_id: str
    data: list[JobHistoryEntry]


class RecipePublic(Body):
    name: str
    recipe: TrainConfig = Field(description="the resolved recipe, bases merged")


class RecipesPublic(Body):
    data: list[RecipePublic]
    count: int
