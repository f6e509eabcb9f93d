"""Request and response bodies of ``/v1/studies``: a grid of ordinary jobs and its table."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator

from service.schemas import Body, JobCreate, LabelName, Text
from service.store.tables import JobStatus

GRID_KEY_PATTERN = r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*$"
GridKey = Annotated[str, Field(pattern=GRID_KEY_PATTERN, max_length=200)]
Scalar = bool | int | float | Annotated[Text, Field(max_length=200)]
GridValue = Scalar | Annotated[list[Scalar], Field(max_length=64)]
"""A recipe value, written into the job's overrides as YAML (``loss.alpha=[0.25,0.75]``)."""
DEFAULT_GRID: dict[str, list[GridValue]] = {
    "loss.gamma": [0, 0.5, 1, 2, 5],
    "loss.alpha": [0.25, 0.5, 0.75],
}
"""The paper's Table 1 (a), (b): gamma against alpha."""
CE_OVERRIDE = "loss.classification=alpha_balanced_ce"
"""The baseline cell's own override: the paper's alpha-balanced cross-entropy."""


class Pruning(Body):
    """The median rule (Optuna's ``MedianPruner``): a focal job whose validation AP at
    ``epoch`` is below the median of the other jobs of its study that reached that epoch
    before it (at least ``min_peers`` of them) is stopped and marked pruned. The baseline is
    never pruned. ``epoch`` must be one the recipe evaluates (``eval.period_epochs``)."""

    epoch: int = Field(ge=1, le=100_000)
    min_peers: int = Field(default=2, ge=1, le=1000)


class StudyCreate(Body):
    name: LabelName | None = None
    base: JobCreate = Field(description="the job every cell starts from (its name, tags too)")
    grid: dict[GridKey, Annotated[list[GridValue], Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: dict(DEFAULT_GRID),
        min_length=1,
        max_length=8,
        description="dotted recipe keys, each with its values; cells: their cartesian product",
    )
    seeds: int = Field(default=1, ge=1, le=16, description="jobs per cell: seed, seed+1, ...")
    baseline: bool = Field(default=True, description=f"add the cell {CE_OVERRIDE}")
    baseline_overrides: list[Annotated[Text, Field(max_length=10_000)]] = Field(
        default_factory=list,
        max_length=100,
        description='the baseline cell\'s own overrides, e.g. ["loss.alpha=0.75"]',
    )
    pruning: Pruning | None = None

    @field_validator("grid")
    @classmethod
    def _no_seed(cls, grid: dict[str, list[GridValue]]) -> dict[str, list[GridValue]]:
        if "seed" in grid:
            raise ValueError("grid key 'seed': use 'seeds' for repetitions")
        return grid


class Spread(Body):
    """Mean and spread over a cell's finished seeds (values as the evaluator gives them:
    0..1). ``spread``: the sample standard deviation from 3 seeds on, half the range
    (max - min) / 2 with 2, None with 1 (unknown)."""

    mean: float | None
    spread: float | None
    min: float | None
    max: float | None
    n: int


class CellRow(Body):
    values: dict[str, GridValue] = Field(description="the grid's values of this cell")
    baseline: bool
    label: str
    job_ids: list[str]
    counts: dict[str, int] = Field(description="its jobs per status (pruned apart)")
    finished: bool = Field(description="every job of it ended")
    pruned: bool
    AP: Spread
    AP50: Spread
    AP75: Spread
    per_class_ap: dict[str, Spread]
    best_epoch: Spread
    wall_s: Spread


class Verdict(Body):
    kind: Literal["focal_wins", "ce_wins", "no_clear_winner", "pending", "no_baseline"]
    text: str
    lead_ap: float | None = Field(description="best focal cell minus the baseline, AP (0..1)")
    spread_ap: float | None = Field(description="the larger seed spread of the two")


class StudyTable(Body):
    metric_source: str = Field(description="which validation epoch of each job the numbers are")
    spread_rule: str
    cells: list[CellRow]
    best_cell: int | None = Field(description="index of the finished focal cell of best mean AP")
    baseline_cell: int | None
    pending_cells: int = Field(description="cells with a job still queued or running")
    verdict: Verdict


StudyStatus = Literal["queued", "running", "finished"]


class StudySummary(Body):
    id: str
    name: str | None
    status: StudyStatus
    counts: dict[str, int] = Field(description="jobs per status; pruned jobs apart")
    jobs: int
    created_at: datetime


class StudyPublic(StudySummary):
    grid: dict[str, list[GridValue]]
    seeds: int
    baseline: bool
    pruning: Pruning | None
    table: StudyTable


class StudiesPublic(Body):
    data: list[StudySummary]
    count: int


JOB_STATUS_KEYS: tuple[str, ...] = (*get_args(JobStatus), "pruned")
