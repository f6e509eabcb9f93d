"""Studies over real HTTP: a real server process, real workers training every cell for real
on tiny shapes, and the table checked against each job's own metrics; the same study run
locally by ``retinanet study``; the median rule stopping a real training run."""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from detector import fit, last_checkpoint
from detector.data.shapes import ShapesSpec, make_shapes_splits
from service.cli import main
from service.client import ApiClientError, Client
from service.store import repo
from service.store import studies as store
from service.store.db import make_engine, migrate, session_factory
from service.store.leases import add_event
from service.worker.events import DbEvents
from tests.trained import CONFIGS, shapes_recipe

from .e2e_support import API_KEY, DEADLINE_S, free_port, start, up, wait_for
from .store_support import add_dataset, at

# Two epochs of one iteration at 64 px, scored after each: the least that trains and scores
# (so that best epoch and mean differ from the last epoch's).
TINY = {
    "data": {"train_min_sizes": [64], "eval_min_size": 64, "max_size": 64},
    "solver": {"batch_size": 4, "epochs": 2, "steps": [], "warmup_iters": 1},
    "eval": {"period_epochs": 1, "batch_size": 4},
}
GRID = {"loss.gamma": [0, 2], "loss.alpha": [0.25, 0.75]}
MAX_JOBS = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 training and 2 validation images of 64 px."""
    root = tmp_path_factory.mktemp("study_shapes")
    spec = ShapesSpec(num_images=1, size_px=64, seed=5)
    paths = make_shapes_splits(root, spec, splits=[("train", 4), ("val", 2)])
    return {**paths, "images": root / "images"}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, shapes: dict[str, Path]
) -> Iterator[tuple[Client, Path, dict[str, str]]]:
    """The API (no embedded worker), a client, and uploaded train/val datasets."""
    root = tmp_path_factory.mktemp("studies")
    data_dir, port = root / "data", free_port()
    extra = {"RETINANET_STUDY_MAX_JOBS": str(MAX_JOBS)}
    server = start(
        ["serve", "--port", str(port), "--workers", "0"], data_dir, root / "api.log", extra
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up(server, f"{url}/health/live"), DEADLINE_S, "the API")
        with Client(url, api_key=API_KEY) as client:
            ids = {
                split: client.upload_dataset(shapes[split], shapes["images"], name=split)["id"]
                for split in ("train", "val")
            }
            yield client, data_dir, ids
    finally:
        server.terminate()
        server.wait(timeout=60)


def _base(ids: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "train_dataset_id": ids["train"], "val_dataset_id": ids["val"], "recipe": "shapes_tiny",
        "recipe_overrides": TINY, **extra,
    }  # fmt: skip


def _refusal(client: Client, **body: Any) -> ApiClientError:
    with pytest.raises(ApiClientError) as err:
        client.create_study(**body)
    assert err.value.status == 422, err.value
    return err.value


def test_bad_grids_are_refused_naming_the_key(service) -> None:
    client, _, ids = service
    unknown = _refusal(client, base=_base(ids), grid={"loss.gamma": [1], "loss.gama": [2]})
    assert unknown.code == "invalid_grid" and "loss.gama" in unknown.message
    assert unknown.details == {"keys": ["loss.gama"]}
    bad_value = _refusal(client, base=_base(ids), grid={"loss.gamma": [1, -1]})
    assert "grid key 'loss.gamma'" in bad_value.message
    empty = _refusal(client, base=_base(ids), grid={"loss.gamma": [1], "loss.alpha": []})
    assert [d["loc"] for d in empty.details] == [["body", "grid", "loss.alpha"]]
    wide = {"loss.gamma": [0, 1, 2], "loss.alpha": [0.25, 0.75]}
    big = _refusal(client, base=_base(ids), grid=wide, seeds=2)
    assert big.code == "too_many_jobs" and "loss.gamma (3) x loss.alpha (2)" in big.message
    assert f"RETINANET_STUDY_MAX_JOBS={MAX_JOBS}" in big.message
    baseline = _refusal(client, base=_base(ids), grid=GRID, baseline_overrides=["loss.nope=1"])
    assert "the baseline" in baseline.message and "loss.nope" in baseline.message
    assert client.studies()["count"] == 0 and client.jobs()["count"] == 0  # nothing was created


def test_a_study_cancelled_at_once_trains_none_of_its_jobs(service) -> None:
    client, _, ids = service
    study = client.create_study(
        base=_base(ids, tags=["cancel-me"]), grid=GRID, idempotency_key="c1"
    )
    assert study["jobs"] == 5 and study["counts"]["queued"] == 5 and study["status"] == "queued"
    assert (
        client.create_study(base=_base(ids, tags=["cancel-me"]), grid=GRID, idempotency_key="c1")[
            "id"
        ]
        == study["id"]
    )
    cancelled = client.cancel_study(study["id"])
    assert cancelled["status"] == "finished" and cancelled["counts"]["cancelled"] == 5
    jobs = client.jobs(study_id=study["id"])["data"]
    assert len(jobs) == 5 and {j["status"] for j in jobs} == {"cancelled"}
    assert all(j["started_at"] is None and j["tags"] == ["cancel-me"] for j in jobs)
    assert client.jobs(tag="cancel-me")["count"] == 5
    assert cancelled["table"]["verdict"]["kind"] == "pending"


@contextmanager
def _worker(data_dir: Path, log: Path) -> Iterator[None]:
    """A worker whose training uses one thread: two of them share the two cores of CI."""
    process = start(["worker"], data_dir, log, {"OMP_NUM_THREADS": "1"})
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's best epoch by AP, the earliest on a tie (the table's rule), from its metrics."""
    scored = [h for h in history if h["metrics"]]
    return max(scored, key=lambda h: (h["metrics"]["summary"]["AP"], -h["epoch"]))


@pytest.mark.slow
def test_a_two_by_two_study_with_two_seeds_trains_every_cell_and_tables_their_metrics(
    service, tmp_path: Path
) -> None:
    client, data_dir, ids = service
    study = client.create_study(name="focal", base=_base(ids, tags=["grid"]), grid=GRID, seeds=2)
    assert study["jobs"] == 10  # 4 cells and the baseline, 2 seeds each
    with _worker(data_dir, tmp_path / "w1.log"), _worker(data_dir, tmp_path / "w2.log"):
        done = client.wait_study(study["id"], timeout_s=DEADLINE_S)
    assert done["counts"]["succeeded"] == 10, done["counts"]
    table = done["table"]
    assert table["pending_cells"] == 0 and len(table["cells"]) == 5
    for cell in table["cells"]:
        jobs = [client.job(j) for j in cell["job_ids"]]
        recipes = [j["recipe"] for j in jobs]
        assert sorted(r["seed"] for r in recipes) == [0, 1] and len(jobs) == 2
        if cell["baseline"]:
            assert {r["loss"]["classification"] for r in recipes} == {"alpha_balanced_ce"}
        else:
            assert {(r["loss"]["gamma"], r["loss"]["alpha"]) for r in recipes} == {
                (cell["values"]["loss.gamma"], cell["values"]["loss.alpha"])
            }
        assert all(j["study_id"] == study["id"] and j["name"].startswith("focal: ") for j in jobs)
        bests = [_best(client.metrics(j["id"])["history"]) for j in jobs]
        for key in ("AP", "AP50", "AP75"):
            values = [b["metrics"]["summary"][key] for b in bests]
            assert cell[key]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert cell[key]["spread"] == pytest.approx((max(values) - min(values)) / 2, abs=1e-12)
        assert cell["best_epoch"]["mean"] == statistics.fmean(b["epoch"] for b in bests)
        for name, stats in cell["per_class_ap"].items():
            values = [
                next(c["AP"] for c in b["metrics"]["per_class"] if c["name"] == name) for b in bests
            ]
            assert stats["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert cell["wall_s"]["n"] == 2 and cell["wall_s"]["mean"] > 0
    focal = [i for i, c in enumerate(table["cells"]) if not c["baseline"]]
    assert table["best_cell"] == max(focal, key=lambda i: table["cells"][i]["AP"]["mean"])
    assert table["baseline_cell"] == 4
    assert table["verdict"]["kind"] in ("focal_wins", "ce_wins", "no_clear_winner")
    assert "alpha-balanced CE" in table["verdict"]["text"]
    png = client.study_plot(study["id"])
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert client.jobs(study_id=study["id"], status="succeeded")["count"] == 10
    assert study["id"] in [s["id"] for s in client.studies()["data"]]


@pytest.mark.slow
def test_retinanet_study_runs_the_grid_here_and_prints_the_same_table(
    shapes: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    args = [
        "study", str(CONFIGS / "shapes_tiny.yaml"), "--grid", "loss.gamma=0,2", "--no-baseline",
        "--data-train", str(shapes["train"]), str(shapes["images"]),
        "--data-val", str(shapes["val"]), str(shapes["images"]),
        "--set", "data.train_min_sizes=[64]", "--set", "data.eval_min_size=64",
        "--set", "data.max_size=64", "--set", "solver.batch_size=4", "--set", "solver.epochs=1",
        "--set", "solver.steps=[]", "--set", "solver.warmup_iters=1", "--out", str(out), "--json",
    ]  # fmt: skip
    assert main(args) == 0
    table = json.loads((out / "table.json").read_text())
    assert '"kind": "no_baseline"' in capfd.readouterr().out  # the same table, printed
    assert [c["label"] for c in table["cells"]] == ["loss.gamma=0", "loss.gamma=2"]
    for i, cell in enumerate(table["cells"]):
        result = json.loads((out / f"cell{i}-seed0" / "result.json").read_text())
        ap = result["history"][-1]["metrics"]["summary"]["AP"]  # one epoch: the best
        assert cell["AP"]["mean"] == ap and cell["AP"]["n"] == 1
    assert table["verdict"]["kind"] == "no_baseline"
    assert (out / "plot.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main([*args[:-1]]) == 0  # again: the finished jobs are read, not trained
    assert "loss.gamma=0" in capfd.readouterr().out
    bad = main([*args[:3], "loss.gama=1", *args[4:]])
    assert bad != 0 and "loss.gama" in capfd.readouterr().err
    assert main([*args, "--processes", "0"]) != 0
    assert "--processes 0: at least 1" in capfd.readouterr().err
    # A job whose training halts fails alone: its cell says so, the study goes on and ends;
    # here both jobs train at once, each in a process of its own.
    diverging = [
        *args[:3], "solver.lr=1000000.0,0.002", *args[4:-3], "--set", "solver.optimizer=sgd",
        "--set", "solver.clip_grad_norm=null", "--set", "solver.warmup_iters=0",
        "--set", "solver.epochs=4",
        "--out", str(tmp_path / "diverging"), "--processes", "2",
    ]  # fmt: skip
    assert main(diverging) == 0
    assert "cell0-seed0 failed: non-finite" in capfd.readouterr().out
    failed, fine = json.loads((tmp_path / "diverging" / "table.json").read_text())["cells"]
    assert failed["counts"]["failed"] == 1 and failed["AP"]["n"] == 0
    assert fine["counts"]["succeeded"] == 1 and fine["AP"]["n"] == 1


@pytest.mark.slow
def test_a_training_behind_the_median_at_the_pruning_epoch_is_asked_to_stop(
    shapes: dict[str, Path], tmp_path: Path
) -> None:
    """The worker's events callback on a real training run applies the study's median rule:
    two peers recorded AP 1.0 at epoch 1 (no tiny model reaches it), so the job is pruned."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        factory = session_factory(engine)
        train = add_dataset(factory)
        with factory.begin() as session:
            study, _ = store.create_study(
                session, name=None, spec={"pruning": {"epoch": 1, "min_peers": 2}},
                cells=[{"values": {"loss.gamma": g}, "baseline": False} for g in (0, 1, 2)],
                jobs=[store.StudyJob(cell=i, seed=0, recipe={}, name=None) for i in range(3)],
                job_fields={"train_dataset_id": train, "max_attempts": 3}, tags=[],
                idempotency_key=None, request_hash=None, now=at(0),
            )  # fmt: skip
            ids = [c["jobs"][0]["id"] for c in study.cells]
        claim = repo.claim_next_job(factory, worker_id="w", lease_s=600, now=at(2))
        assert claim is not None and claim.job_id in ids
        with factory.begin() as session:
            for peer in set(ids) - {claim.job_id}:
                metrics = {"summary": {"AP": 1.0}, "per_class": []}
                add_event(session, peer, "epoch", {"epoch": 1, "metrics": metrics}, at(1))
        workdir = tmp_path / "run"
        events = DbEvents(
            sessions=factory, job_id=claim.job_id, token=claim.token, lease_s=600,
            last_checkpoint=last_checkpoint(workdir),
        )  # fmt: skip
        root = shapes["images"].parent
        size = ["data.train_min_sizes=[64]", "data.eval_min_size=64", "data.max_size=64"]
        budget = ["solver.epochs=1", "solver.steps=[]", "solver.warmup_iters=1"]
        cfg = shapes_recipe(root, *size, *budget, "solver.batch_size=4", "data.num_workers=0")
        fit(cfg, workdir, callbacks=[events])
        with factory() as session:
            job = repo.get_job(session, claim.job_id)
            assert job.cancel_requested, "the worker stops it at its next heartbeat"
            assert job.cancel_reason is not None
            assert job.cancel_reason.startswith("pruned at epoch 1: AP ")
            assert "below the median 1.0000 of 2 other jobs" in job.cancel_reason
    finally:
        engine.dispose()
