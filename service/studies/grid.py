"""A study's cells: the cartesian product of its grid, plus the alpha-balanced CE baseline,
and the dotted overrides that make each of its jobs."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.study_schemas import CE_OVERRIDE


@dataclass(frozen=True)
class Cell:
    """One point of the grid (or the baseline) and the overrides that make it."""

    values: dict[str, Any]
    baseline: bool = False
    extra: tuple[str, ...] = field(default=())
    """Overrides of its own besides ``values`` (the baseline's)."""

    @property
    def label(self) -> str:
        """``loss.gamma=2 loss.alpha=0.25``, or ``alpha-balanced CE`` for the baseline."""
        if self.baseline:
            own = " ".join(o for o in self.extra if o != CE_OVERRIDE)
            return f"alpha-balanced CE {own}".strip()
        return " ".join(f"{k}={_text(v)}" for k, v in self.values.items())

    def overrides(self) -> list[str]:
        """This cell's dotted overrides, after the base job's."""
        return [*(f"{k}={_text(v)}" for k, v in self.values.items()), *self.extra]


def _text(value: Any) -> str:
    """A value as a YAML override reads it back (JSON is YAML)."""
    return json.dumps(value, separators=(",", ":"))


def cells_of(
    grid: Mapping[str, Sequence[Any]], *, baseline: bool, baseline_overrides: Sequence[str] = ()
) -> list[Cell]:
    """The grid's cells in the order of its keys (the last key varies fastest), then the
    baseline cell when asked."""
    keys = list(grid)
    cells = [
        Cell(values=dict(zip(keys, combo, strict=True)))
        for combo in itertools.product(*(grid[k] for k in keys))
    ]
    if baseline:
        cells.append(Cell(values={}, baseline=True, extra=(*baseline_overrides, CE_OVERRIDE)))
    return cells


def seeds_of(base_seed: int, seeds: int) -> list[int]:
    """The seeds of every cell: the base recipe's seed and the next ``seeds - 1``."""
    return [base_seed + i for i in range(seeds)]


def job_overrides(base: Sequence[str], cell: Cell, seed: int) -> list[str]:
    """All overrides of one job: the base job's, the cell's, then its seed."""
    return [*base, *cell.overrides(), f"seed={seed}"]


def too_many(grid: Mapping[str, Sequence[Any]], cells: int, seeds: int, cap: int) -> str | None:
    """Why ``cells x seeds`` jobs exceed ``cap`` (naming the keys), or None."""
    jobs = cells * seeds
    if jobs <= cap:
        return None
    sizes = " x ".join(f"{k} ({len(v)})" for k, v in grid.items())
    return (
        f"grid {sizes} gives {cells} cells (baseline included) x {seeds} seeds = {jobs} jobs, "
        f"more than RETINANET_STUDY_MAX_JOBS={cap}"
    )
