"""PNG plots of a run, where a terminal user looks: ``<run>/plots/{curves,pr_curves}.png``.

Drawn with matplotlib's Agg canvas on ``Figure`` objects made here, never through ``pyplot``:
no global figure registry, no backend switch for the rest of the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from detector.engine.tracking_history import EpochRecord, read_history
from detector.evaluate.coco import CocoMetrics

PLOTS_DIR = "plots"
CURVES = "curves.png"
PR_CURVES = "pr_curves.png"
PLOT_NAMES = (CURVES, PR_CURVES)
DPI = 100
CURVES_SIZE_PX = (1200, 800)
PR_SIZE_PX = (800, 600)
RECALL_GRID = np.linspace(0.0, 1.0, 101)
"""COCO's recall points, where ``ClassMetrics.pr_curve`` holds precision."""


def plots_dir(workdir: Path) -> Path:
    return workdir / PLOTS_DIR


def write_plots(workdir: Path) -> list[Path]:
    """Write the run's curves (and its PR curves, once it was evaluated) from its
    ``metrics.jsonl``; returns the files written ([] for a run that recorded no epoch)."""
    history = read_history(workdir)
    if not history:
        return []
    out = plots_dir(workdir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_save(curves_figure(history), out / CURVES)]
    evaluated = [r.metrics for r in history if r.metrics is not None]
    if evaluated:
        written.append(_save(pr_figure(evaluated[-1]), out / PR_CURVES))
    return written


def curves_figure(history: Sequence[EpochRecord]) -> Figure:
    """Per epoch: the train loss terms and their sum, the learning rate, the validation loss
    terms, and the validation AP and AP50."""
    fig = _figure(CURVES_SIZE_PX)
    (loss_ax, lr_ax), (val_ax, ap_ax) = fig.subplots(2, 2)
    epochs = [r.epoch for r in history]
    _lines(loss_ax, epochs, [r.train_losses for r in history], "train loss")
    lr_ax.plot(epochs, [r.lr for r in history], marker=".")
    _style(lr_ax, "learning rate (end of epoch)", ylabel="lr")
    validated = [r for r in history if r.val_losses is not None]
    _lines(
        val_ax,
        [r.epoch for r in validated],
        [r.val_losses for r in validated if r.val_losses is not None],
        "validation loss",
    )
    evaluated = [(r.epoch, r.metrics) for r in history if r.metrics is not None]
    for key in ("AP", "AP50"):
        points = [(e, m.summary.get(key)) for e, m in evaluated]
        defined = [(e, v) for e, v in points if v is not None]
        ap_ax.plot([e for e, _ in defined], [v for _, v in defined], marker="o", label=key)
    ap_ax.set_ylim(0.0, 1.0)
    _style(ap_ax, "validation AP", ylabel="AP", legend=bool(evaluated))
    return fig


def pr_figure(metrics: CocoMetrics) -> Figure:
    """Precision against recall at IoU 0.5, one line per class (COCO's interpolated curve)."""
    fig = _figure(PR_SIZE_PX)
    ax = fig.subplots()
    for cls in metrics.per_class:
        ap50 = "-" if cls.AP50 is None else f"{100 * cls.AP50:.1f}"
        ax.plot(RECALL_GRID, cls.pr_curve, label=f"{cls.name} (AP50 {ap50})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    _style(ax, "precision-recall at IoU 0.5", ylabel="precision", legend=True)
    return fig


def render_rgb(fig: Figure) -> NDArray[np.uint8]:
    """The figure's pixels, uint8[H, W, 3]."""
    canvas = FigureCanvasAgg(fig)
    # matplotlib leaves these two unannotated.
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    return np.asarray(rgba)[..., :3].copy()


def _figure(size_px: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _lines(ax: Axes, epochs: list[int], terms: Sequence[dict[str, float]], title: str) -> None:
    names = sorted({k for t in terms for k in t})
    for name in names:
        ax.plot(epochs, [t.get(name, np.nan) for t in terms], marker=".", label=name)
    if names:
        ax.plot(epochs, [sum(t.values()) for t in terms], marker=".", label="total", color="k")
    _style(ax, title, ylabel="loss", legend=bool(names))


def _style(ax: Axes, title: str, *, ylabel: str, legend: bool = False) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ax.get_xlabel() == "":
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def _save(fig: Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    tmp.replace(path)
    return path
