"""Studies and job labels in the store, on SQLite and on PostgreSQL (when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.store import repo
from service.store import studies as store
from service.store.db import make_engine, migrate, session_factory
from service.store.leases import add_event
from service.store.tables import Job, JobTag, Study

from .store_support import add_dataset, add_job, at
from .test_store_postgres import schema_url  # noqa: F401  (the PostgreSQL fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("schema_url")
    migrate(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


def _study(
    factory: sessionmaker[Session], train: str, *, cells: int = 3, key: str | None = None,
    pruning: dict[str, int] | None = None, broken_last: bool = False,
) -> tuple[Study, bool]:  # fmt: skip
    """A study of ``cells`` cells (the last one the baseline) with one job each."""
    planned = [{"values": {"loss.gamma": i}, "baseline": i == cells - 1} for i in range(cells)]
    jobs = [store.StudyJob(cell=i, seed=0, recipe={"i": i}, name=f"c{i}") for i in range(cells)]
    fields: dict[str, Any] = {"train_dataset_id": train, "max_attempts": 3}
    if broken_last:  # fails once the others were added: none of them may stay
        jobs.append(store.StudyJob(cell=99, seed=1, recipe={}, name="x"))
    with factory.begin() as session:
        study, created = store.create_study(
            session, name="s", spec={"pruning": pruning}, cells=planned, jobs=jobs,
            job_fields=fields,
            tags=["study", "focal"], idempotency_key=key, request_hash="h", now=at(0),
        )  # fmt: skip
        session.expunge_all()
        return study, created


def test_jobs_are_listed_by_name_tag_and_study(backend) -> None:
    train = add_dataset(backend)
    tagged = add_job(backend, train, name="run-a", tags=["x", "y", "x"], now=at(1))
    add_job(backend, train, name="run-b", tags=["y"], now=at(2))
    study, _ = _study(backend, train)
    with backend() as session:
        assert repo.get_job(session, tagged).tags == ["x", "y"]
        by_tag = repo.list_jobs(session, tag="x", limit=10, offset=0)
        assert [j.id for j in by_tag[0]] == [tagged] and by_tag[1] == 1
        assert repo.list_jobs(session, tag="y", limit=10, offset=0)[1] == 2
        assert repo.list_jobs(session, name="run-b", tag="x", limit=10, offset=0)[1] == 0
        in_study, count = repo.list_jobs(session, study_id=study.id, limit=10, offset=0)
        assert count == 3 and {j.study_id for j in in_study} == {study.id}
        assert repo.list_jobs(session, tag="focal", status="queued", limit=2, offset=0)[1] == 3
        assert repo.list_jobs(session, tag="nothing", limit=10, offset=0) == ([], 0)


def test_a_study_is_created_with_all_its_jobs_or_not_at_all_and_replays(backend) -> None:
    train = add_dataset(backend)
    with pytest.raises(IndexError):
        _study(backend, train, broken_last=True)
    with backend() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(JobTag)) == 0
    study, created = _study(backend, train, key="k-1")
    again, replayed = _study(backend, train, key="k-1")
    assert created and not replayed and again.id == study.id
    assert [len(c["jobs"]) for c in study.cells] == [1, 1, 1]
    with backend() as session:
        assert len(store.study_jobs(session, study.id)) == 3
    with pytest.raises(repo.IdempotencyConflict), backend.begin() as session:
        store.create_study(
            session, name="s", spec={}, cells=[], jobs=[], job_fields={}, tags=[],
            idempotency_key="k-1", request_hash="other", now=at(0),
        )  # fmt: skip


def test_cancelling_a_study_cancels_its_unfinished_jobs_only(backend) -> None:
    train = add_dataset(backend)
    study, _ = _study(backend, train)
    claim = repo.claim_next_job(backend, worker_id="w", lease_s=60, now=at(1))
    assert claim is not None
    with backend.begin() as session:
        jobs = store.cancel_study(session, study.id, now=at(2))
        states = {j.id: (j.status, j.cancel_requested) for j in jobs}
    assert states.pop(claim.job_id) == ("running", True)  # asked to stop: its worker stops it
    assert set(states.values()) == {("cancelled", False)}
    with backend.begin() as session:  # again: harmless, finished jobs are left alone
        assert len(store.cancel_study(session, study.id, now=at(3))) == 3
    with pytest.raises(repo.NotFound), backend.begin() as session:
        store.cancel_study(session, "missing", now=at(3))


def _epoch(factory: sessionmaker[Session], job_id: str, epoch: int, ap: float) -> None:
    with factory.begin() as session:
        metrics = {"summary": {"AP": ap}, "per_class": []}
        add_event(session, job_id, "epoch", {"epoch": epoch, "metrics": metrics}, at(5))


def test_the_median_rule_prunes_a_focal_job_behind_its_peers_at_the_epoch(backend) -> None:
    train = add_dataset(backend)
    study, _ = _study(backend, train, cells=5, pruning={"epoch": 2, "min_peers": 2})
    ids = [c["jobs"][0]["id"] for c in study.cells]  # the last: the baseline
    for i in range(5):
        assert repo.claim_next_job(backend, worker_id=f"w{i}", lease_s=60, now=at(1 + i))
    _epoch(backend, ids[0], 2, 0.5)
    _epoch(backend, ids[1], 2, 0.1)

    def prune(job_id: str, epoch: int = 2) -> str | None:
        with backend.begin() as session:
            return store.prune_if_behind(session, job_id=job_id, epoch=epoch)

    assert prune(ids[1]) is None  # one peer only: too early to judge
    _epoch(backend, ids[2], 2, 0.4)
    assert prune(ids[2]) is None  # 0.4 against the median of 0.5 and 0.1: ahead
    _epoch(backend, ids[3], 2, 0.2)
    assert prune(ids[3], epoch=1) is None  # not the pruning epoch
    reason = prune(ids[3])
    assert reason is not None and reason.startswith("pruned at epoch 2: AP 0.2000 below")
    _epoch(backend, ids[4], 2, 0.0)
    assert prune(ids[4]) is None  # the baseline is never pruned
    with backend() as session:
        pruned = repo.get_job(session, ids[3])
        assert pruned.cancel_requested and pruned.cancel_reason == reason
        assert not repo.get_job(session, ids[4]).cancel_requested
