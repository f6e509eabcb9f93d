"""Training recipes: the frozen pydantic models of every section (reading them from YAML
is :mod:`detector.recipe`).

A recipe is refused when any value is one the training cannot use (a number that is not
finite, an integer past 32 bits), so that a job never runs its whole budget to fail at the end.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from detector.evaluate.backends import EvalBackend
from detector.evaluate.coco import CLASS_KEYS, SUMMARY_KEYS
from detector.model.weight_names import (
    WeightsNameError,
    backbone_weights,
    is_weights_name,
    model_weights,
)

INT32_MAX = 2**31 - 1
"""The largest count a recipe may hold: every integer of a recipe is stored in the checkpoint,
and pickle's 4-byte-length integers (beyond about 2**2040) are refused by torch's safe loader,
so a larger one trains for the whole budget and then fails reading its own checkpoint."""
PositiveInt = Annotated[int, Field(gt=0, le=INT32_MAX)]
NonNegativeInt = Annotated[int, Field(ge=0, le=INT32_MAX)]
ImageSide = Annotated[int, Field(gt=0, le=8192)]
"""A resize target in pixels (the loader allocates the resized image)."""
Channels = Annotated[int, Field(gt=0, le=4096)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
WeightsRef = Annotated[str, Field(min_length=1, max_length=4096)]
"""A torchvision weights name (or alias), or a path to a local file."""
GROUP_NORM_GROUPS = 32


class _Frozen(BaseModel):
    # NaN passes every bound (all comparisons are false) and inf overflows the optimiser.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class DatasetSource(_Frozen):
    """A COCO dataset on disk: the annotations JSON and the folder its ``file_name``s are in."""

    annotations: Path
    images: Path


class DataConfig(_Frozen):
    """What is read and how it is augmented.

    Resizing happens here, in the loader workers on uint8 images (as detectron2's
    ``ResizeShortestEdge`` does), not inside the model: the model only normalises and pads.
    """

    train: DatasetSource | None = None
    val: DatasetSource | None = None
    test: DatasetSource | None = None
    train_min_sizes: tuple[ImageSide, ...] = Field(default=(800,), min_length=1, max_length=64)
    eval_min_size: ImageSide = 800
    max_size: ImageSide = 1333
    hflip_prob: Probability = 0.5
    vflip_prob: Probability = 0.0
    """Vertical flips, for views with no up and down (microscopy, aerial); off by default
    because they teach nonsense on photographs."""
    photometric: bool = False
    num_workers: Annotated[int, Field(ge=0, le=256)] = 2
    strict: bool = False
    """Treat every validation warning as an error (refuse to drop or clip any box)."""


class ModelConfig(_Frozen):
    """RetinaNet architecture, anchors, post-processing and initial weights."""

    backbone: Literal[
        "resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v3_large"
    ] = "resnet50"
    variant: Literal["v1", "v2"] = "v1"
    """``v1``: the paper's RetinaNet (torchvision's ``retinanet_resnet50_fpn``: P6 from P5,
    heads without normalisation). ``v2``: torchvision's ``retinanet_resnet50_fpn_v2`` (P6 from
    C5, GroupNorm in the head towers; torchvision trains it with ``loss.box=giou``)."""
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    """The backbone's normalisation: ``frozen_bn`` (fine-tuning from ImageNet statistics),
    ``bn`` (trained BatchNorm), ``gn`` (GroupNorm, up to 32 groups: no running statistics, so
    evaluation matches training from the first epoch; for training from scratch at small
    batches, as in He et al. 2019, "Rethinking ImageNet Pre-training")."""
    trainable_backbone_layers: Annotated[int, Field(ge=0, le=5)] = 3
    fpn_channels: Channels = 256
    head: Literal["focal", "torchvision"] = "focal"
    """``torchvision``: the stock RetinaNetHead and its per-image loss (fixed alpha 0.25,
    gamma 2, L1 boxes; ``loss`` is ignored), as a reference to compare against."""
    head_convs: Annotated[int, Field(ge=0, le=32)] = 4
    head_channels: Channels = 256
    prior_prob: Annotated[float, Field(gt=0, lt=1)] = 0.01
    anchor_sizes: tuple[
        PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat
    ] = (
        32,
        64,
        128,
        256,
        512,
    )
    """Base anchor size for each pyramid level P3..P7, in input pixels."""
    scales_per_octave: Annotated[int, Field(gt=0, le=16)] = 3
    aspect_ratios: tuple[PositiveFloat, ...] = Field(
        default=(0.5, 1.0, 2.0), min_length=1, max_length=16
    )
    fg_iou: Annotated[float, Field(gt=0, le=1)] = 0.5
    bg_iou: Annotated[float, Field(ge=0, le=1)] = 0.4
    score_thresh: Probability = 0.05
    nms_thresh: Probability = 0.5
    detections_per_img: PositiveInt = 100
    topk_candidates: PositiveInt = 1000
    backbone_weights: WeightsRef | None = None
    """ImageNet weights of the backbone: a torchvision name (``ResNet50_Weights.IMAGENET1K_V2``,
    or ``imagenet`` for the backbone's default), or a local state dict (.pt/.pth/.safetensors)."""
    weights: WeightsRef | None = None
    """A whole RetinaNet: a torchvision name (``RetinaNet_ResNet50_FPN_Weights.COCO_V1``, or
    ``coco`` for the variant's), or a local state dict (ours or torchvision's). Class logits
    of another class count are left at their init (and reported); all else must fit."""
    skip_mismatched_weights: bool = False
    """Also leave other layers whose shape differs at their init instead of refusing."""

    @field_validator("backbone_weights", "weights", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, PurePath) else value

    @model_validator(mode="after")
    def _check_ious(self) -> ModelConfig:
        if self.bg_iou > self.fg_iou:
            raise ValueError(f"bg_iou ({self.bg_iou}) must not exceed fg_iou ({self.fg_iou})")
        if self.head == "torchvision" and (self.head_convs, self.head_channels) != (
            4,
            self.fpn_channels,
        ):
            raise ValueError(
                "head=torchvision has 4 convs as wide as the FPN: "
                f"set head_convs=4 and head_channels={self.fpn_channels}"
            )
        if self.variant == "v2" and self.head_channels % GROUP_NORM_GROUPS:
            raise ValueError(
                f"variant v2 normalises the head with GroupNorm({GROUP_NORM_GROUPS}): "
                f"head_channels ({self.head_channels}) must be a multiple of {GROUP_NORM_GROUPS}"
            )
        # Files of ours may hold GroupNorm weights; torchvision's never do.
        if self.norm == "gn" and any(
            ref is not None and is_weights_name(ref)
            for ref in (self.backbone_weights, self.weights)
        ):
            raise ValueError(
                "norm=gn has no BatchNorm statistics to load torchvision's weights into: "
                "use norm=frozen_bn or bn with torchvision's weights"
            )
        return self

    @field_validator("backbone_weights", "weights")
    @classmethod
    def _check_weight_names(cls, ref: str | None, info: ValidationInfo) -> str | None:
        """A torchvision name must name weights of this backbone (and variant)."""
        backbone, variant = info.data.get("backbone"), info.data.get("variant")
        if ref is None or not is_weights_name(ref) or backbone is None or variant is None:
            return ref
        try:
            if info.field_name == "backbone_weights":
                backbone_weights(ref, backbone=backbone)
            else:
                model_weights(ref, backbone=backbone, variant=variant)
        except WeightsNameError as exc:
            raise ValueError(str(exc)) from None
        return ref


# "auto" is a pattern-checked string, not Literal["auto"]: clients generated from the OpenAPI
# document (openapi-python-client) parse a number-or-constant union by refusing the number.
AutoAlpha = Annotated[str, Field(pattern=r"^auto$")]


class LossConfig(_Frozen):
    """Classification and box losses and how they are weighted against each other.

    Plain binary cross-entropy is ``classification: sigmoid_focal, alpha: null, gamma: 0``.
    """

    classification: Literal["sigmoid_focal", "alpha_balanced_ce", "softmax_focal"] = "sigmoid_focal"
    """``softmax_focal``: K + 1 logits per anchor (background last), one softmax, the
    multi-class focal loss ``-alpha_y (1 - p_y)^gamma log p_y``; scores drop the background."""
    alpha: Probability | tuple[Probability, ...] | AutoAlpha | None = 0.25
    """Weight of positives: a scalar, one value per class, ``auto`` (per class, from the
    training set's class frequencies: alpha_c proportional to 1 / sqrt(frequency), scaled to
    a mean of 0.25, clipped to [0.01, 0.99]), or None for no weighting. Negatives (the
    background class of ``softmax_focal``) get 1 - alpha (1 - the mean alpha when per class)."""
    gamma: Annotated[float, Field(ge=0)] = 2.0
    box: Literal["smooth_l1", "l1", "giou"] = "smooth_l1"
    smooth_l1_beta: Annotated[float, Field(ge=0)] = 1.0 / 9.0
    weighting: Literal["fixed", "uncertainty"] = "fixed"
    """``uncertainty``: two learned log-variances weigh the terms (Kendall et al. 2018)."""
    cls_weight: Annotated[float, Field(ge=0)] = 1.0
    box_weight: Annotated[float, Field(ge=0)] = 1.0
    compile: bool = False
    """Compile the focal loss with torch.compile (falls back to eager if compiling fails)."""


class SolverConfig(_Frozen):
    """Optimiser, schedule and numerics. ``steps`` are in the unit of the budget."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    weight_decay_norm_bias: Annotated[float, Field(ge=0)] | None = 0.0
    """Decay for norm weights and biases; None applies ``weight_decay`` to them too."""
    batch_size: PositiveInt = 16
    """Images per iteration, all processes of a data-parallel run together."""
    max_iters: PositiveInt | None = None
    epochs: PositiveInt | None = None
    scheduler: Literal["multistep", "cosine"] = "multistep"
    steps: tuple[PositiveInt, ...] = Field(default=(), max_length=64)
    """LR drops, in iterations when ``max_iters`` is set, in epochs when ``epochs`` is."""
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.1
    warmup_iters: NonNegativeInt = 500
    warmup_factor: Annotated[float, Field(gt=0, le=1)] = 0.001
    clip_grad_norm: PositiveFloat | None = None
    amp: Literal["off", "fp16", "bf16"] = "off"
    """Mixed precision: bf16 on CUDA and on the CPU (fastest where the CPU has AMX or
    AVX-512 BF16; see bench/cpu_train_step.py), fp16 on CUDA only (ignored on the CPU)."""
    channels_last: bool = False
    sync_batchnorm: bool = False
    """Data-parallel runs on CUDA: BatchNorm statistics over all GPUs' images."""
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Evaluate and ship an exponential moving average of the weights (e.g. 0.999); the
    decay ramps up over ``ema_ramp_iters`` (see :mod:`detector.engine.ema`)."""
    ema_ramp_iters: PositiveInt = 200

    @model_validator(mode="after")
    def _check_budget(self) -> SolverConfig:
        if (self.max_iters is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_iters and epochs")
        budget = self.max_iters if self.max_iters is not None else self.epochs
        assert budget is not None
        if list(self.steps) != sorted(set(self.steps)) or any(s >= budget for s in self.steps):
            raise ValueError(f"steps must be increasing and below the budget ({budget})")
        return self


class EvalConfig(_Frozen):
    """When the model is scored on the validation set, and which number picks the best one."""

    period_epochs: PositiveInt = 1
    metric: str = "AP"
    """A COCO summary key (AP, AP50, AR100, ...), or one class: ``AP/<class name>``."""
    batch_size: PositiveInt = 8
    backend: EvalBackend = "faster_coco_eval"
    """The COCOeval engine: ``faster_coco_eval`` (C++) or ``pycocotools`` (the reference);
    the same numbers (checked to 1e-9 by a test), the first several times faster."""

    @field_validator("metric")
    @classmethod
    def _known(cls, name: str) -> str:
        return known_metric(name)


class EarlyStoppingConfig(_Frozen):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations."""

    metric: str = "AP"
    """As ``EvalConfig.metric``, or ``val_loss`` (lower is better)."""
    patience: PositiveInt = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("metric")
    @classmethod
    def _known(cls, name: str) -> str:
        return known_metric(name)


MlflowKey = Annotated[str, Field(min_length=1, max_length=250)]
MlflowValue = Annotated[str, Field(max_length=5000)]


class TrackingConfig(_Frozen):
    """Experiment tracking (see ``detector.engine.tracking``): TensorBoard event files in the
    run folder, and an MLflow run when a tracking URI is set. Neither may fail or stall the
    training: MLflow calls go through a background thread with bounded retries."""

    tensorboard: bool = True
    """Write TensorBoard event files under ``<run>/tensorboard`` (false: none are written)."""
    images: Annotated[int, Field(ge=0, le=32)] = 4
    """Validation images drawn (true boxes | predicted boxes) in TensorBoard per evaluation."""
    mlflow_uri: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    """An MLflow tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``, ...): each run
    becomes an MLflow run. The service sets it from ``RETINANET_MLFLOW_URI``."""
    experiment: MlflowKey = "retinanet"
    """The MLflow experiment the runs go to (created when missing)."""
    run_name: MlflowKey | None = None
    """The MLflow run's name (the service: the job id); default: the run folder's name."""
    tags: dict[MlflowKey, MlflowValue] = Field(default_factory=dict, max_length=64)
    """Tags of the MLflow run (the service adds the job and dataset ids)."""
    mlflow_wait_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """The longest the end of a run waits for MLflow calls still queued (a server that is
    down); what is left is dropped with a warning."""


class TrainConfig(_Frozen):
    """A whole training recipe."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig(max_iters=90_000, steps=(60_000, 80_000))
    eval: EvalConfig = EvalConfig()
    early_stopping: EarlyStoppingConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    checkpoint_period_iters: PositiveInt = 500
    """``last.pt`` is also written at every epoch end and when a run stops early."""
    seed: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


def known_metric(name: str) -> str:
    """``name`` if evaluation can report it; the first evaluation would fail on any other.

    Whether ``<key>/<class name>`` names a class of the dataset is the job's check.
    """
    key, sep, class_name = name.partition("/")
    if name in (*SUMMARY_KEYS, "val_loss") or (sep and key in CLASS_KEYS and class_name):
        return name
    raise ValueError(
        f"unknown metric {name!r}: one of {', '.join(SUMMARY_KEYS)}, val_loss, "
        f"or <{'|'.join(CLASS_KEYS)}>/<class name>"
    )
