"""A study's table and verdict from its jobs' results (pure: no store, no HTTP).

Each job counts by its **best validation epoch**: the epoch of its metrics history
(``GET /v1/jobs/{id}/metrics``) with the highest AP, the earliest on a tie, which is the
checkpoint the job ships (``eval.metric`` AP). A cell is the mean over its succeeded jobs;
the spread is the sample standard deviation from 3 seeds on, half the range with 2 (a
standard deviation of two numbers says little more), unknown with 1. The verdict compares
the best finished focal cell with the baseline: a lead larger than the larger of the two
spreads is a win, anything else no clear winner.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.studies.grid import Cell
from service.study_schemas import JOB_STATUS_KEYS, CellRow, Spread, StudyTable, Verdict

METRIC_SOURCE = "each job's best validation epoch by AP (earliest on a tie), as in its metrics"
SPREAD_RULE = "sample std over seeds from 3 seeds, half the range (max-min)/2 with 2, none with 1"
FINAL = ("succeeded", "failed", "cancelled", "pruned")


@dataclass(frozen=True)
class BestEpoch:
    epoch: int
    AP: float | None
    AP50: float | None
    AP75: float | None
    per_class_ap: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    cell: int
    seed: int
    status: str
    """The job's status, or ``pruned`` for a job its study's pruning stopped."""
    best: BestEpoch | None
    wall_s: float | None


def best_epoch(history: Sequence[Mapping[str, Any]]) -> BestEpoch | None:
    """The best epoch of a metrics history (``EpochMetrics`` dicts), None without metrics."""
    scored = [h for h in history if h.get("metrics")]
    if not scored:
        return None
    top = max(scored, key=lambda h: (_ap(h), -int(h["epoch"])))
    metrics = top["metrics"]
    summary = metrics["summary"]
    return BestEpoch(
        epoch=int(top["epoch"]),
        AP=summary.get("AP"),
        AP50=summary.get("AP50"),
        AP75=summary.get("AP75"),
        per_class_ap={c["name"]: c.get("AP") for c in metrics.get("per_class", [])},
    )


def _ap(entry: Mapping[str, Any]) -> float:
    value = entry["metrics"]["summary"].get("AP")
    return float("-inf") if value is None else float(value)


def spread(values: Sequence[float | None]) -> Spread:
    """Mean and spread of the values that are known (see the module's rule)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return Spread(mean=None, spread=None, min=None, max=None, n=0)
    if len(known) >= 3:
        width: float | None = statistics.stdev(known)
    elif len(known) == 2:
        width = (max(known) - min(known)) / 2
    else:
        width = None
    return Spread(
        mean=statistics.fmean(known), spread=width, min=min(known), max=max(known), n=len(known)
    )


def cell_row(cell: Cell, jobs: Sequence[JobResult]) -> CellRow:
    """One cell's row: its jobs' counts and the statistics of those that succeeded."""
    done = [j for j in jobs if j.status == "succeeded" and j.best is not None]
    bests = [j.best for j in done if j.best is not None]
    classes = sorted({name for b in bests for name in b.per_class_ap})
    counts = Counter(j.status for j in jobs)
    return CellRow(
        values=cell.values,
        baseline=cell.baseline,
        label=cell.label,
        job_ids=[j.job_id for j in jobs],
        counts={k: counts.get(k, 0) for k in JOB_STATUS_KEYS},
        finished=all(j.status in FINAL for j in jobs),
        pruned=counts.get("pruned", 0) > 0,
        AP=spread([b.AP for b in bests]),
        AP50=spread([b.AP50 for b in bests]),
        AP75=spread([b.AP75 for b in bests]),
        per_class_ap={c: spread([b.per_class_ap.get(c) for b in bests]) for c in classes},
        best_epoch=spread([b.epoch for b in bests]),
        wall_s=spread([j.wall_s for j in done]),
    )


def study_table(cells: Sequence[Cell], results: Sequence[JobResult]) -> StudyTable:
    """The whole table: a row per cell, the best focal cell, and the verdict."""
    rows = [cell_row(cell, [r for r in results if r.cell == i]) for i, cell in enumerate(cells)]
    ready = [i for i, row in enumerate(rows) if row.finished and row.AP.mean is not None]
    focal = [i for i in ready if not rows[i].baseline]
    best = max(focal, key=lambda i: rows[i].AP.mean or 0.0, default=None)
    baseline = next((i for i, cell in enumerate(cells) if cell.baseline), None)
    pending = sum(not row.finished for row in rows)
    return StudyTable(
        metric_source=METRIC_SOURCE,
        spread_rule=SPREAD_RULE,
        cells=rows,
        best_cell=best,
        baseline_cell=baseline,
        pending_cells=pending,
        verdict=verdict(rows, best, baseline if baseline in ready else None, pending),
    )


def verdict(
    rows: Sequence[CellRow], best: int | None, baseline: int | None, pending: int
) -> Verdict:
    """The answer in plain words (AP in points, 0..100); ``baseline`` only once it finished."""
    waiting = f" ({pending} cells still pending)" if pending else ""
    if not any(row.baseline for row in rows):
        name = "none" if best is None else rows[best].label
        text = f"no baseline in this study; the best finished cell: {name}{waiting}"
        return Verdict(kind="no_baseline", text=text, lead_ap=None, spread_ap=None)
    if best is None or baseline is None:
        missing = "the alpha-balanced CE baseline" if baseline is None else "no focal cell"
        text = f"no verdict yet: {missing} has finished{waiting}"
        return Verdict(kind="pending", text=text, lead_ap=None, spread_ap=None)
    top, ce = rows[best], rows[baseline]
    assert top.AP.mean is not None and ce.AP.mean is not None
    lead = top.AP.mean - ce.AP.mean
    widths = [s for s in (top.AP.spread, ce.AP.spread) if s is not None]
    width = max(widths) if len(widths) == 2 else None
    focal = f"focal loss ({top.label})"
    if width is None:
        text = (
            f"no clear winner: {focal} leads alpha-balanced CE by {_pts(lead)} AP, but with "
            f"one seed the spread is unknown (ask for seeds >= 2){waiting}"
        )
        kind = "no_clear_winner"
    elif abs(lead) > width:
        winner, loser = (focal, "alpha-balanced CE") if lead > 0 else ("alpha-balanced CE", focal)
        text = (
            f"{winner} beats {loser} by {_pts(abs(lead))} AP, more than the seed spread "
            f"({_pts(width)} AP){waiting}"
        )
        kind = "focal_wins" if lead > 0 else "ce_wins"
    else:
        text = (
            f"no clear winner: {focal} and alpha-balanced CE differ by {_pts(lead)} AP, "
            f"within the seed spread ({_pts(width)} AP){waiting}"
        )
        kind = "no_clear_winner"
    return Verdict(kind=kind, text=text, lead_ap=lead, spread_ap=width)


def _pts(value: float) -> str:
    """AP (0..1) in points, as papers print it."""
    return f"{100 * value:.1f}"


def to_text(table: StudyTable) -> str:
    """The table as plain text (AP in points, mean ± spread; then AP per class), then the
    verdict."""
    classes = list(dict.fromkeys(c for row in table.cells for c in row.per_class_ap))
    header = (
        f"{'cell':<40} {'jobs':>9} {'AP':>11} {'AP50':>11} {'AP75':>11} {'epoch':>6} {'wall s':>7}"
        + "".join(f" {'AP ' + c[:8]:>11}" for c in classes)
    )
    lines = [header]
    for i, row in enumerate(table.cells):
        mark = "*" if i == table.best_cell else (" (pruned)" if row.pruned else "")
        done = f"{row.AP.n}/{len(row.job_ids)}"
        cols = [_pm(row.AP), _pm(row.AP50), _pm(row.AP75)]
        epoch = "-" if row.best_epoch.mean is None else f"{row.best_epoch.mean:.1f}"
        wall = "-" if row.wall_s.mean is None else f"{row.wall_s.mean:.0f}"
        name = f"{row.label}{mark}"
        per_class = [_pm(row.per_class_ap[c]) if c in row.per_class_ap else "-" for c in classes]
        lines.append(
            f"{name:<40} {done:>9} {cols[0]:>11} {cols[1]:>11} {cols[2]:>11} {epoch:>6} {wall:>7}"
            + "".join(f" {v:>11}" for v in per_class)
        )
    lines += ["", table.verdict.text]
    return "\n".join(lines)


def _pm(s: Spread) -> str:
    if s.mean is None:
        return "-"
    if s.spread is None:
        return _pts(s.mean)
    return f"{_pts(s.mean)}±{_pts(s.spread)}"
