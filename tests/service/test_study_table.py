"""The study table's maths on hand-made results: best epochs, means, spreads, the verdict."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from service.studies.grid import Cell, cells_of, job_overrides, too_many
from service.studies.table import BestEpoch, JobResult, best_epoch, spread, study_table, to_text

GRID: dict[str, list[Any]] = {"loss.gamma": [0, 2], "loss.alpha": [0.25]}


def _result(cell: int, seed: int, ap: float | None, status: str = "succeeded") -> JobResult:
    per_class = {"circle": ap, "square": None}
    best = None if ap is None else BestEpoch(
        epoch=seed + 1, AP=ap, AP50=ap + 0.1, AP75=ap / 2, per_class_ap=per_class
    )  # fmt: skip
    return JobResult(
        job_id=f"j{cell}{seed}", cell=cell, seed=seed, status=status, best=best, wall_s=10.0 * seed
    )


def _metrics(ap: float) -> dict[str, Any]:
    return {"summary": {"AP": ap, "AP50": 0.5, "AP75": 0.1}, "per_class": [{"name": "c", "AP": ap}]}


def test_best_epoch_is_the_highest_ap_and_the_earliest_on_a_tie() -> None:
    history: list[dict[str, Any]] = [
        {"epoch": 1, "metrics": None},
        {"epoch": 2, "metrics": _metrics(0.3)},
        {"epoch": 3, "metrics": _metrics(0.5)},
        {"epoch": 4, "metrics": _metrics(0.5)},
    ]
    best = best_epoch(history)
    assert (
        best is not None and best.epoch == 3 and best.AP == 0.5 and best.per_class_ap == {"c": 0.5}
    )
    assert best_epoch([{"epoch": 1, "metrics": None}]) is None


def test_spread_is_std_from_three_seeds_half_range_with_two_none_with_one() -> None:
    three = spread([0.1, 0.2, 0.6])
    assert three.mean == pytest.approx(0.3) and three.spread == pytest.approx(
        statistics.stdev([0.1, 0.2, 0.6])
    )
    two = spread([0.1, None, 0.3])
    assert two.n == 2 and two.mean == pytest.approx(0.2) and two.spread == pytest.approx(0.1)
    one = spread([0.4])
    assert (one.mean, one.spread, one.min, one.max) == (0.4, None, 0.4, 0.4)
    assert spread([]).mean is None


def test_focal_beats_ce_by_more_than_the_seed_spread() -> None:
    cells = cells_of(GRID, baseline=True)
    results = [
        _result(0, 0, 0.30), _result(0, 1, 0.32),  # gamma 0: 31 ± 1
        _result(1, 0, 0.40), _result(1, 1, 0.44),  # gamma 2: 42 ± 2
        _result(2, 0, 0.29), _result(2, 1, 0.31),  # CE: 30 ± 1
    ]  # fmt: skip
    table = study_table(cells, results)
    assert table.best_cell == 1 and table.baseline_cell == 2 and table.pending_cells == 0
    assert table.cells[1].AP.mean == pytest.approx(0.42)
    assert table.cells[1].AP.spread == pytest.approx(0.02)
    assert table.cells[1].per_class_ap["circle"].mean == pytest.approx(0.42)
    assert table.cells[1].per_class_ap["square"].n == 0  # no ground truth: no value
    assert table.cells[1].wall_s.mean == pytest.approx(5.0)
    assert table.verdict.kind == "focal_wins" and table.verdict.lead_ap == pytest.approx(0.12)
    assert table.verdict.text == (
        "focal loss (loss.gamma=2 loss.alpha=0.25) beats alpha-balanced CE by 12.0 AP, "
        "more than the seed spread (2.0 AP)"
    )
    text = to_text(table).splitlines()
    assert text[0].split()[-4:] == ["AP", "circle", "AP", "square"]
    assert text[2].startswith("loss.gamma=2 loss.alpha=0.25*")
    assert text[2].split()[-2:] == ["42.0±2.0", "-"]  # circle's AP; square: no ground truth


def test_a_lead_within_the_spread_is_no_clear_winner_and_pending_cells_are_said() -> None:
    cells = cells_of(GRID, baseline=True)
    results = [
        _result(0, 0, 0.30), _result(0, 1, None, status="running"),
        _result(1, 0, 0.33), _result(1, 1, 0.37),  # 35 ± 2
        _result(2, 0, 0.30), _result(2, 1, 0.36),  # CE 33 ± 3
    ]  # fmt: skip
    table = study_table(cells, results)
    assert table.pending_cells == 1 and table.best_cell == 1  # the running cell does not count
    assert table.verdict.kind == "no_clear_winner"
    assert table.verdict.text == (
        "no clear winner: focal loss (loss.gamma=2 loss.alpha=0.25) and alpha-balanced CE "
        "differ by 2.0 AP, within the seed spread (3.0 AP) (1 cells still pending)"
    )


def test_ce_winning_one_seed_pruned_and_missing_baseline_are_said_plainly() -> None:
    cells = cells_of(GRID, baseline=True)
    ce_wins = study_table(
        cells,
        [_result(0, 0, 0.1), _result(0, 1, 0.12), _result(1, 0, 0.2), _result(1, 1, 0.2),
         _result(2, 0, 0.5), _result(2, 1, 0.5)],
    )  # fmt: skip
    assert ce_wins.verdict.kind == "ce_wins"
    assert ce_wins.verdict.text.startswith("alpha-balanced CE beats focal loss (loss.gamma=2")
    one_seed = study_table(
        cells, [_result(0, 0, 0.1), _result(1, 0, 0.4, status="pruned"), _result(2, 0, 0.3)]
    )
    assert one_seed.cells[1].pruned and one_seed.cells[1].AP.n == 0  # pruned: not scored
    assert one_seed.best_cell == 0 and one_seed.verdict.kind == "no_clear_winner"
    assert "spread is unknown" in one_seed.verdict.text
    waiting = study_table(
        cells, [_result(0, 0, 0.1), _result(1, 0, 0.2), _result(2, 0, None, "queued")]
    )
    assert waiting.verdict.kind == "pending" and "baseline" in waiting.verdict.text
    alone = study_table(cells_of(GRID, baseline=False), [_result(0, 0, 0.1), _result(1, 0, 0.2)])
    assert alone.verdict.kind == "no_baseline" and alone.baseline_cell is None


def test_cells_are_the_product_then_the_baseline_and_each_job_gets_its_overrides() -> None:
    cells = cells_of(
        {"loss.gamma": [0, 2], "loss.alpha": [0.25, 0.75]},
        baseline=True,
        baseline_overrides=["loss.alpha=0.75"],
    )
    assert [c.values for c in cells[:2]] == [
        {"loss.gamma": 0, "loss.alpha": 0.25},
        {"loss.gamma": 0, "loss.alpha": 0.75},
    ]
    assert (
        len(cells) == 5
        and cells[-1].baseline
        and cells[-1].label == "alpha-balanced CE loss.alpha=0.75"
    )
    assert job_overrides(["solver.lr=0.1"], cells[1], 7) == [
        "solver.lr=0.1", "loss.gamma=0", "loss.alpha=0.75", "seed=7",
    ]  # fmt: skip
    assert job_overrides([], cells[-1], 0)[-2:] == [
        "loss.classification=alpha_balanced_ce",
        "seed=0",
    ]
    assert isinstance(cells[0], Cell)
    reason = too_many({"loss.gamma": [0, 1, 2]}, 4, 2, cap=6)
    assert reason is not None and "loss.gamma (3)" in reason and "8 jobs" in reason
    assert too_many({"loss.gamma": [0, 1, 2]}, 4, 1, cap=6) is None
