"""Where files live under the data directory; one place, so no path is built twice."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from detector import plots_dir, tensorboard_dir, test_metrics_file

LEFTOVER_AGE_S = 3600.0
"""Staging folders and temporary exports older than this are a crashed request's leftovers:
no live request keeps one that long (a body is received in full before its staging folder is
made), and an API on another host sharing the data directory keeps its own in-flight ones."""


@dataclass(frozen=True)
class Storage:
    """``<root>/datasets/<id>/{annotations.json, images/}``, ``<root>/jobs/<id>/...``,
    ``<root>/models/<id>/`` (exports)."""

    root: Path

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def log_file(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "log.txt"

    def model_file(self, job_id: str) -> Path:
        """The trained model (safetensors with its card), written when the job succeeds."""
        return self.job_dir(job_id) / "model.safetensors"

    def test_metrics_file(self, job_id: str) -> Path:
        """The job's test-set metrics; where ``detector.finalize`` writes them."""
        return test_metrics_file(self.job_dir(job_id))

    def tensorboard_dir(self, job_id: str) -> Path:
        """The job's TensorBoard event files (``detector.tensorboard_dir``)."""
        return tensorboard_dir(self.job_dir(job_id))

    def plot_file(self, job_id: str, name: str) -> Path:
        """One of the job's PNG plots (``detector.PLOT_NAMES``), drawn when it ends."""
        return plots_dir(self.job_dir(job_id)) / name

    def error_file(self, job_id: str) -> Path:
        """Why the job's last attempt failed, in the child's words (absent: it did not)."""
        return self.job_dir(job_id) / "error.txt"

    def export_file(self, model_id: str, fmt: str) -> Path:
        return self.root / "models" / model_id / f"model.{fmt}"

    def staging_dir(self) -> Path:
        """A fresh folder on the same filesystem, so finished uploads move in atomically."""
        parent = self.root / "staging"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent))

    def remove_leftovers(self, *, older_than_s: float = LEFTOVER_AGE_S) -> list[Path]:
        """Delete what a killed request left behind: upload staging folders and half-written
        ONNX exports (``.model.onnx.<id>.tmp``). Returns what was removed."""
        cutoff = time.time() - older_than_s
        candidates = [
            *(self.root / "staging").glob("*"),
            *(self.root / "models").glob("*/.*.tmp"),
        ]
        removed = []
        for path in candidates:
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue  # another process cleaned it first
            removed.append(path)
        return removed
