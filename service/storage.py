"""Where files live under the data directory; one place, so no path is built twice."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


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
        return self.job_dir(job_id) / "metrics_test.json"

    def export_file(self, model_id: str, fmt: str) -> Path:
        return self.root / "models" / model_id / f"model.{fmt}"

    def staging_dir(self) -> Path:
        """A fresh folder on the same filesystem, so finished uploads move in atomically."""
        parent = self.root / "staging"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent))
