"""Experiment tracking of a run, from its recipe's ``tracking`` section.

Every run keeps its per-epoch history (``metrics.jsonl``, :mod:`tracking_history`), writes
TensorBoard event files unless ``tracking.tensorboard`` is false (:mod:`tracking_tensorboard`)
and, with ``tracking.mlflow_uri``, is an MLflow run (:mod:`tracking_mlflow`). The trainer adds
these callbacks on rank 0; ``finalize`` ends the MLflow run with the model and the plots.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detector.config import TrainConfig
from detector.data.coco import CocoDetection
from detector.engine.callbacks import Callback
from detector.engine.tracking_history import MetricsHistory
from detector.engine.tracking_mlflow import MlflowTracker
from detector.engine.tracking_tensorboard import TensorBoardWriter


def tracking_callbacks(
    cfg: TrainConfig,
    workdir: Path,
    *,
    model: nn.Module,
    val_set: CocoDetection | None,
    device: torch.device,
) -> list[Callback]:
    """The callbacks that track the run ``cfg`` trains into ``workdir`` (``model`` is the
    network itself, not a data-parallel wrapper: it draws a few validation images)."""
    history = MetricsHistory(workdir=workdir)
    callbacks: list[Callback] = [history]
    if cfg.tracking.tensorboard:
        callbacks.append(
            TensorBoardWriter(workdir=workdir, cfg=cfg, model=model, val_set=val_set, device=device)
        )
    if cfg.tracking.mlflow_uri is not None:
        callbacks.append(MlflowTracker(cfg=cfg, workdir=workdir, history=history))
    return callbacks
