"""A study's plot: AP against gamma, one line per alpha (per value of the other keys), error
bars over seeds, and the alpha-balanced CE baseline as a band (mean ± spread)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

# A bare Figure draws with Agg into memory: no pyplot, no display, no global backend switch.
from matplotlib.figure import Figure

from service.study_schemas import CellRow, StudyTable

X_KEY = "loss.gamma"


def plot_png(table: StudyTable, *, title: str) -> bytes:
    """The plot as PNG bytes; cells without a finished mean are left out."""
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    axes = figure.add_subplot()
    focal = [row for row in table.cells if not row.baseline]
    x_key = _x_key(focal)
    for label, rows in _lines(focal, x_key).items():
        points = [(_x(r, x_key), r) for r in rows if r.AP.mean is not None]
        if not points:
            continue
        points.sort(key=lambda p: p[0])
        xs = [p[0] for p in points]
        ys = [100 * (r.AP.mean or 0.0) for _, r in points]
        errors = [100 * (r.AP.spread or 0.0) for _, r in points]
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label or "focal loss")
    if table.baseline_cell is not None:
        _band(axes, table.cells[table.baseline_cell])
    axes.set_xlabel(x_key or "cell")
    axes.set_ylabel("AP (validation, best epoch)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    out = io.BytesIO()
    figure.savefig(out, format="png", bbox_inches="tight")
    return out.getvalue()


def _x_key(rows: Sequence[CellRow]) -> str | None:
    """gamma when the grid has it, else its first key."""
    keys = list(rows[0].values) if rows else []
    return X_KEY if X_KEY in keys else (keys[0] if keys else None)


def _x(row: CellRow, key: str | None) -> float:
    value: Any = row.values.get(key) if key else None
    return float(value) if isinstance(value, int | float) else 0.0


def _lines(rows: Sequence[CellRow], x_key: str | None) -> dict[str, list[CellRow]]:
    """The cells grouped by their values other than the x axis' (alpha, ...)."""
    lines: dict[str, list[CellRow]] = {}
    for row in rows:
        rest = " ".join(f"{k}={v}" for k, v in row.values.items() if k != x_key)
        lines.setdefault(rest, []).append(row)
    return lines


def _band(axes: Any, row: CellRow) -> None:
    """The baseline: its mean as a line, ± its spread as a band."""
    if row.AP.mean is None:
        return
    mean, width = 100 * row.AP.mean, 100 * (row.AP.spread or 0.0)
    axes.axhline(mean, color="black", linestyle="--", label=f"{row.label} (mean ± spread)")
    axes.axhspan(mean - width, mean + width, color="grey", alpha=0.25)
