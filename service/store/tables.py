"""The store's tables as SQLAlchemy 2 typed ORM models.

Migrations in ``migrations/versions`` create exactly this schema; a test compares the two, so a
change here needs a new migration.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FinalStatus = Literal["succeeded", "failed", "cancelled"]
EventKind = Literal["start", "step", "epoch", "end", "error", "status", "log"]
DatasetSource = Literal["upload", "folder"]

ACTIVE_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
FINAL_STATUSES: tuple[FinalStatus, ...] = ("succeeded", "failed", "cancelled")


def new_id() -> str:
    """A random 32-character hex id (uuid4)."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type and hands back naive values; storing UTC and re-attaching the zone
    on read keeps comparisons in SQL correct and values in Python unambiguous. Naive datetimes are
    refused on write because their meaning depends on the host's clock settings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC before storing."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to SQLite's naive values; convert PostgreSQL's session-zone values."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Deterministic constraint names, so later migrations can drop or alter them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every store table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    """A validated COCO dataset: files under the data directory plus its summary."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))
    annotations_path: Mapped[str] = mapped_column(Text)
    images_path: Mapped[str] = mapped_column(Text)
    num_images: Mapped[int] = mapped_column(Integer)
    num_boxes: Mapped[int] = mapped_column(Integer)
    class_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    categories: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Job(Base):
    """One training job; the row is the source of truth for its state and lease."""

    __tablename__ = "jobs"
    # Claiming filters on status and orders by priority then age.
    __table_args__ = (Index("ix_jobs_claim", "status", "priority", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    # SET NULL, not CASCADE: deleting a dataset must not erase the history of finished jobs.
    train_dataset_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("datasets.id", ondelete="SET NULL")
    )
    val_dataset_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("datasets.id", ondelete="SET NULL")
    )
    test_dataset_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("datasets.id", ondelete="SET NULL")
    )
    holdout_fraction: Mapped[float | None] = mapped_column(Float)
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    """Processes (one per GPU) that train the job together; > 1 is data-parallel."""
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    """Consecutive attempts that may end abnormally without progress (see ``leases``)."""
    checkpoint_iteration: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Iteration of the newest ``last.pt`` an attempt reported (0: none yet)."""
    attempt_from_iteration: Mapped[int] = mapped_column(
        Integer, default=0, server_default=text("0")
    )
    """``checkpoint_iteration`` when the current attempt was claimed: progress is beyond it."""
    stalled_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Attempts in a row that were killed or lost their lease without progress."""
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fencing_token: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    name: Mapped[str | None] = mapped_column(String(200), index=True)
    """A free label (not unique): a list filter."""
    # SET NULL: a job's history outlives its study's row, as it outlives its datasets.
    study_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("studies.id", ondelete="SET NULL"), index=True
    )
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    """Why the job was stopped when it was not its user who asked (a study's pruning)."""
    tag_rows: Mapped[list[JobTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="JobTag.tag"
    )

    @property
    def tags(self) -> list[str]:
        """The job's free labels, sorted."""
        return [row.tag for row in self.tag_rows]


class JobTag(Base):
    """One free label of a job. A table rather than a JSON column: a tag filter is then an
    indexed equality on SQLite and PostgreSQL alike."""

    __tablename__ = "job_tags"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Study(Base):
    """A grid of ordinary jobs (one per cell and seed) compared in one table."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The request that created it (base job, grid, seeds, baseline, pruning)."""
    cells: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """Per cell: ``{"values": {key: value}, "baseline": bool, "jobs": [{"id", "seed"}]}``."""
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobEvent(Base):
    """One progress/status event of a job; ``id`` doubles as the SSE event id."""

    __tablename__ = "job_events"
    # AUTOINCREMENT keeps SQLite from reusing the ids of deleted rows, so ids only grow.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Worker(Base):
    """A worker process that polled the store; ``seen_at`` feeds the readiness check and
    ``GET /v1/workers``."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    """The most processes (GPUs) it gives one job; it claims no job that asks for more."""
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When it stopped or was found dead (None: running); a stopped worker is not alive."""


class Model(Base):
    """The trained model of a succeeded job: its file and what the API shows about it."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # SET NULL: the model outlives its job's row, as datasets do.
    job_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    name: Mapped[str] = mapped_column(String(200))
    weights_path: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    weights_bytes: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    score_thresholds: Mapped[dict[str, float]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Test-set metrics when the job had a test set, else validation metrics."""
    metrics_split: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
