"""``finalize``: what a finished training run ends with, the same for every caller.

The command line and the service's worker both end a run this way: take the final checkpoint
(best, else last), score the recipe's test set with it once, and write the model file. It
lives here, above training and inference, because it needs both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.artifact import save_model_file
from detector.config import TrainConfig
from detector.engine.checkpoint import final_checkpoint
from detector.engine.tracking_history import read_history
from detector.engine.tracking_mlflow import finish_mlflow_run
from detector.evaluate.coco import CocoMetrics
from detector.plots import PLOTS_DIR, write_plots
from detector.predict import Predictor

TEST_METRICS = "metrics_test.json"


@dataclass(frozen=True)
class Final:
    checkpoint: Path
    """The checkpoint the run is judged and shipped by."""
    test_metrics: CocoMetrics | None
    """COCO metrics on ``cfg.data.test`` (None: the recipe has no test set)."""
    plots: tuple[Path, ...] = ()
    """The PNG plots written into the run folder."""


def test_metrics_file(workdir: Path) -> Path:
    """Where ``finalize`` writes the test metrics of the run in ``workdir``."""
    return workdir / TEST_METRICS


def finalize(cfg: TrainConfig, workdir: Path, *, model_file: Path | None = None) -> Final:
    """End the run ``cfg`` trained into ``workdir``: with a test set in the recipe, score it
    with the final checkpoint and write the metrics to :func:`test_metrics_file`; with
    ``model_file``, write the model file (safetensors and its card) from that checkpoint.
    Then draw the run's plots (``plots/``) and end its MLflow run (with the model file, or
    the checkpoint without one, and the plots as artifacts).
    Call it in one process only (rank 0 of a data-parallel run)."""
    checkpoint = final_checkpoint(workdir)
    metrics = None
    if cfg.data.test is not None:
        test = cfg.data.test
        predictor = Predictor.load(checkpoint)
        metrics = predictor.evaluate(test.annotations, test.images, strict=cfg.data.strict)
        test_metrics_file(workdir).write_text(metrics.model_dump_json(indent=2))
    if model_file is not None:
        save_model_file(checkpoint, model_file)
    plots = write_plots(workdir)
    artifacts = [(model_file or checkpoint, "model"), *((p, PLOTS_DIR) for p in plots)]
    if metrics is not None:
        artifacts.append((test_metrics_file(workdir), ""))
    finish_mlflow_run(cfg, workdir, artifacts=artifacts, history=read_history(workdir))
    return Final(checkpoint=checkpoint, test_metrics=metrics, plots=tuple(plots))
