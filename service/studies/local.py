"""``retinanet study``: a study run on this machine, one job after another or ``--processes``
at once, with the cells, overrides, table and plot of ``POST /v1/studies``.

Each job trains into ``OUT/cell<i>-seed<s>`` and, once done, leaves ``result.json`` (its
metrics history and wall time) there; running the command again skips finished jobs and
resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from detector import (
    Callback,
    EpochEvent,
    NonFiniteLossError,
    ProgressBar,
    RecipeError,
    Trainer,
    data_overrides,
    fit,
    last_checkpoint,
    usable_cpus,
)
from detector import load_recipe as resolve
from service.studies.grid import Cell, cells_of, job_overrides, seeds_of
from service.studies.table import JobResult, best_epoch, study_table, to_text
from service.study_schemas import DEFAULT_GRID

RESULT = "result.json"


class EpochLog(Callback):
    """Each epoch's event appended to a JSON-lines file (so an interrupted job keeps them)."""

    def __init__(self, *, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, event: EpochEvent) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event.to_json()) + "\n")


def add_study_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("study", help="train a grid of a recipe (gamma x alpha, ...) and compare")
    p.add_argument("recipe", type=Path, help="YAML recipe (see configs/)")
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2",
        help="a recipe key and its values (YAML), once per key; default: gamma x alpha",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, default=1, help="jobs per cell: seed, seed+1, ...")
    p.add_argument("--no-baseline", action="store_true", help="leave out alpha-balanced CE")
    p.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE")
    for split, what in (("train", "training"), ("val", "validation"), ("test", "test")):
        p.add_argument(
            f"--data-{split}", nargs=2, type=Path, metavar=("ANNOTATIONS", "IMAGE_DIR"),
            required=split != "test", help=f"{what} annotations and image folder",
        )  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="study folder: a run per job")
    p.add_argument(
        "--processes", type=int, default=1, metavar="N",
        help="jobs trained at once, each in its own process with 1/N of the cores",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(handler=cmd_study)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["loss.gamma=0,1,2", "loss.alpha=[0.25,0.5],0.75"]`` -> keys and YAML values."""
    if not items:
        return {k: list(v) for k, v in DEFAULT_GRID.items()}
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        grid[key] = [yaml.safe_load(v) for v in _split(values)]
    return grid


def _split(text: str) -> list[str]:
    """Split on the commas outside brackets (a value may be a list)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def cmd_study(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise ValueError(f"--processes {args.processes}: at least 1")
    grid = parse_grid(args.grid)
    base = [*data_overrides(args), *args.overrides]
    base_seed = resolve(args.recipe, base).seed
    for key, values in grid.items():  # each value alone first: the error names its key
        for value in values:
            try:
                resolve(args.recipe, [*base, *Cell(values={key: value}).overrides()])
            except RecipeError as exc:
                raise RecipeError(f"--grid {key}: {exc}") from None
    cells = cells_of(grid, baseline=not args.no_baseline, baseline_overrides=args.baseline_set)
    jobs = [
        Job(args.recipe, job_overrides(base, cell, seed), args.out / f"cell{i}-seed{seed}", i, seed)
        for i, cell in enumerate(cells)
        for seed in seeds_of(base_seed, args.seeds)
    ]
    results = run_jobs(jobs, processes=args.processes)
    table = study_table(cells, results)
    from service.studies.plot import plot_png  # matplotlib: only for this command

    (args.out / "table.json").write_text(table.model_dump_json(indent=2))
    (args.out / "plot.png").write_bytes(plot_png(table, title=args.recipe.stem))
    print(table.model_dump_json(indent=2) if args.json else to_text(table))
    return 0


class Job(NamedTuple):
    recipe: Path
    overrides: list[str]
    workdir: Path
    cell: int
    seed: int


def run_jobs(jobs: Sequence[Job], *, processes: int) -> list[JobResult]:
    """Every job's result, in order; with ``processes > 1`` that many train at once.

    Each process gets an equal share of the cores as torch threads, so that N jobs do not
    oversubscribe the CPU. Processes are spawned, not forked: a forked child of a process
    that has used torch's thread pools can deadlock."""
    if processes == 1:
        return [run_job(job) for job in jobs]
    threads = max(1, usable_cpus() // processes)
    with ProcessPoolExecutor(
        max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
        initializer=_use_threads, initargs=(threads,),
    ) as pool:  # fmt: skip
        return list(pool.map(run_job, jobs))


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_job(job: Job) -> JobResult:
    """Train one job (or take its earlier result) and read its best epoch.

    A job whose training halts (a non-finite loss or gradient) fails on its own, as a job of
    the service does: its cell's table entry says so and the study goes on; a rerun keeps it
    failed (delete its folder to retry it)."""
    recipe, overrides, workdir, cell, seed = job
    done = workdir / RESULT
    if not done.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = resolve(recipe, overrides)
        log = workdir / "epochs.jsonl"
        started = time.monotonic()
        resume = last_checkpoint(workdir).is_file()
        outcome: dict[str, Any] = {"status": "succeeded"}
        try:
            fit(cfg, workdir, callbacks=[ProgressBar(), EpochLog(path=log)], resume=resume)
        except NonFiniteLossError as exc:
            outcome = {"status": "failed", "error": str(exc)}
            print(f"{workdir.name} failed: {exc}", flush=True)
        lines = log.read_text().splitlines() if log.is_file() else []
        by_epoch = {e["epoch"]: e for e in map(json.loads, lines)}  # a resumed epoch: the later
        history = [by_epoch[k] for k in sorted(by_epoch)]
        wall_s = time.monotonic() - started
        done.write_text(json.dumps({**outcome, "history": history, "wall_s": wall_s}))
    result = json.loads(done.read_text())
    return JobResult(
        job_id=workdir.name, cell=cell, seed=seed, status=result.get("status", "succeeded"),
        best=best_epoch(result["history"]), wall_s=result["wall_s"],
    )  # fmt: skip
