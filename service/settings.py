"""Service settings from ``RETINANET_*`` environment variables, validated once."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PACKAGED_RECIPES = Path(__file__).resolve().parents[1] / "configs"


class Settings(BaseSettings):
    """Every knob of the service; each field is the env var ``RETINANET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="RETINANET_", frozen=True, extra="forbid")

    data_dir: Path = Path("retinanet-data")
    """Datasets, job artifacts and (by default) the SQLite database live here."""
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/retinanet.db``. PostgreSQL:
    ``postgresql+psycopg://user:pass@host/db``."""
    api_key_hashes: Annotated[tuple[str, ...], NoDecode] = ()
    """SHA-256 hex digests of the accepted API keys, comma-separated (``retinanet hash-key``)."""
    auth_disabled: bool = False
    """Accept requests without a key. Only for local use on a trusted machine."""
    max_upload_mb: Annotated[int, Field(gt=0)] = 2048
    max_upload_files: Annotated[int, Field(gt=0)] = 200_000
    max_json_kb: Annotated[int, Field(gt=0)] = 1024
    """The largest body of any route other than the uploads (dataset zips, predict images)."""
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 1024
    """Uploads that would leave less free space than this under the data directory: 507."""
    dataset_root: Path | None = None
    """Server-side folders under this root may be registered as datasets (None: none)."""
    api_threads: Annotated[int, Field(gt=0, le=256)] = 8
    """Threads of the API process that run blocking work (sync routes, the database, uploads)
    at once; more requests wait for one. Raise it on a big host with PostgreSQL."""
    recipes_dir: Path = _PACKAGED_RECIPES
    lease_s: Annotated[float, Field(gt=0)] = 60.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 10.0
    poll_s: Annotated[float, Field(gt=0)] = 1.0
    max_attempts: Annotated[int, Field(gt=0)] = 3
    study_max_jobs: Annotated[int, Field(gt=0)] = 64
    """The most jobs (cells x seeds) one study may create; beyond, 422."""
    worker_stale_s: Annotated[float, Field(gt=0)] = 120.0
    """/health/ready fails when no worker was seen for this long."""
    worker_devices: Annotated[int, Field(gt=0)] | None = None
    """The most processes (GPUs) a worker gives one job; default: the GPUs it sees, or its
    CPU cores when it has none. A job that asks for more waits for a worker that has them."""
    predict_device: str = "auto"
    """Where the API runs inference: ``auto`` (CUDA when present), ``cpu``, ``cuda:0``..."""
    predict_runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    """What runs the dense network (backbone, FPN, head) for prediction: ``onnxruntime`` (CPU
    only; exported once per model and checked against PyTorch), ``torch``, or ``auto``: the
    faster one measured for the device, onnxruntime on the CPU and torch on CUDA. Decoding,
    thresholds, NMS, tiling and batching are the same code either way."""
    predict_threads: Annotated[int, Field(gt=0, le=1024)] | None = None
    """onnxruntime's intra-op threads per model (None: as many as PyTorch uses)."""
    model_cache_models: Annotated[int, Field(gt=0)] = 2
    """Models kept loaded for prediction (least recently used evicted first)."""
    model_cache_mb: Annotated[int, Field(gt=0)] = 2048
    """Memory bound of the loaded models' weights."""
    predict_max_batch: Annotated[int, Field(gt=0)] = 8
    """Images per forward pass when requests are batched together."""
    predict_max_delay_ms: Annotated[float, Field(ge=0)] = 0.0
    """How long the first request of a batch waits for others to join it. 0: no waiting; the
    requests that arrive while the model is busy still form the next batch (on a busy model
    the queue fills during each forward pass), and an idle model answers at once."""
    predict_queue_size: Annotated[int, Field(gt=0)] = 32
    """Requests waiting per model; beyond that the API answers 503 with Retry-After."""
    predict_max_files: Annotated[int, Field(gt=0)] = 16
    predict_max_file_mb: Annotated[int, Field(gt=0)] = 32
    predict_max_pixels: Annotated[int, Field(gt=0)] = 40_000_000
    """Larger images are refused before decoding (decompression bombs)."""

    mlflow_uri: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    """An MLflow tracking URI (``http://mlflow:5000``): each job becomes an MLflow run there
    (the worker sets the job recipe's ``tracking.mlflow_uri``; a job cannot name its own)."""

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip().lower() for v in value.split(",") if v.strip())
        return value

    @field_validator("mlflow_uri", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'retinanet.db').resolve()}"


def hash_key(key: str) -> str:
    """The digest stored in settings for an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache
def get_settings() -> Settings:
    """Read once per process; tests build ``Settings`` directly and override the dependency."""
    return Settings()
