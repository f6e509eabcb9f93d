"""Attempt accounting by progress, and workers that stop or die, on a real SQLite store."""

from __future__ import annotations

from typing import Any

from service.store import repo
from service.store.tables import Job

from .store_support import add_job, at

LEASE_S = 30.0
KILLED = "training process killed by signal 9"


def claim(factory, worker: str = "w1", *, t: float) -> repo.Claim:
    got = repo.claim_next_job(factory, worker_id=worker, lease_s=LEASE_S, now=at(t))
    assert got is not None
    return got


def job(factory, job_id: str) -> Job:
    with factory() as session:
        return repo.get_job(session, job_id)


def fence(c: repo.Claim, t: float) -> dict[str, Any]:
    return {"job_id": c.job_id, "token": c.token, "now": at(t)}


def checkpoint(factory, c: repo.Claim, iteration: int) -> bool:
    with factory.begin() as session:
        return repo.record_checkpoint(session, job_id=c.job_id, token=c.token, iteration=iteration)


def kill(factory, c: repo.Claim, t: float) -> None:
    with factory.begin() as session:
        assert repo.retry_job(session, cause=KILLED, **fence(c, t))


def test_graceful_releases_never_spend_an_attempt(factory, dataset_id):
    job_id = add_job(factory, dataset_id, max_attempts=1)
    for i in range(5):
        c = claim(factory, t=10 * i)
        with factory.begin() as session:
            assert repo.release_job(session, **fence(c, 10 * i + 1))
    row = job(factory, job_id)
    assert (row.status, row.attempt, row.stalled_attempts) == ("queued", 5, 0)
    kill(factory, claim(factory, t=100), 101)  # one abnormal end without progress: the limit
    row = job(factory, job_id)
    assert (row.status, row.attempt) == ("failed", 6)
    assert row.error is not None and row.error.startswith(f"{KILLED}: 1 attempts in a row")


def test_a_job_that_progresses_between_kills_keeps_going(factory, dataset_id):
    job_id = add_job(factory, dataset_id, max_attempts=2)
    for i in range(10):
        c = claim(factory, t=10 * i)
        assert checkpoint(factory, c, iteration=5 * (i + 1))
        kill(factory, c, 10 * i + 5)
    row = job(factory, job_id)
    assert (row.status, row.attempt, row.stalled_attempts) == ("queued", 10, 0)
    assert row.checkpoint_iteration == 50


def test_a_job_that_dies_at_the_same_point_fails_after_the_limit_with_the_reason(
    factory, dataset_id
):
    job_id = add_job(factory, dataset_id, max_attempts=3)
    first = claim(factory, t=0)
    assert checkpoint(factory, first, iteration=5)
    with factory.begin() as session:
        step: dict[str, Any] = {"kind": "step", "payload": {"iteration": 7}}
        assert repo.record_event(session, **step, **fence(first, 1))
    kill(factory, first, 2)
    for i in range(3):
        c = claim(factory, t=10 + 10 * i)
        assert checkpoint(factory, c, iteration=5)  # resumed from 5: not progress
        assert job(factory, job_id).status == "running"
        kill(factory, c, 15 + 10 * i)
    row = job(factory, job_id)
    assert (row.status, row.attempt, row.stalled_attempts) == ("failed", 4, 3)
    assert row.error == (
        f"{KILLED}: 3 attempts in a row ended without progress (resuming from iteration 5, "
        "last step reported 7); gave up after 4 attempts in all"
    )


def test_expired_leases_count_by_progress_too(factory, dataset_id):
    job_id = add_job(factory, dataset_id, max_attempts=1)
    c = claim(factory, t=0)
    assert checkpoint(factory, c, iteration=3)
    claim(factory, "w2", t=LEASE_S + 1)  # w1's lease expired after progress: re-queued, taken
    assert job(factory, job_id).stalled_attempts == 0
    assert repo.claim_next_job(factory, worker_id="w3", lease_s=LEASE_S, now=at(99)) is None
    row = job(factory, job_id)
    assert row.status == "failed" and row.error is not None
    assert row.error.startswith("lease expired: 1 attempts in a row ended without progress")


def test_checkpoint_reports_are_fenced_and_never_go_back(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    old = claim(factory, t=0)
    assert checkpoint(factory, old, iteration=8)
    new = claim(factory, "w2", t=LEASE_S + 1)
    assert not checkpoint(factory, old, iteration=20)  # fenced out
    assert checkpoint(factory, new, iteration=4)  # an older file cannot undo progress
    assert job(factory, job_id).checkpoint_iteration == 8


def test_a_dead_worker_is_not_alive_and_its_job_is_requeued_at_once(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    with factory.begin() as session:
        repo.worker_seen(session, worker_id="w1", host="a", pid=1, devices=1, now=at(0))
        repo.worker_seen(session, worker_id="w2", host="a", pid=2, devices=4, now=at(0))
    held = claim(factory, "w1", t=1)
    with factory.begin() as session:
        released = repo.worker_gone(session, worker_id="w1", cause="worker died", now=at(2))
    assert released == [job_id]
    row = job(factory, job_id)
    assert (row.status, row.lease_owner, row.stalled_attempts) == ("queued", None, 1)
    again = claim(factory, "w2", t=3)  # long before w1's lease would have expired
    assert again.token == held.token + 1
    with factory() as session:
        assert [w.id for w, _ in repo.list_workers(session, seen_since=at(-1))] == ["w2"]
        assert repo.max_live_devices(session, seen_since=at(-1)) == 4
        gone = {w.id: w.stopped_at for w, _ in repo.list_workers(session, seen_since=None)}
        assert gone == {"w1": at(2), "w2": None}
    with factory.begin() as session:
        repo.worker_gone(session, worker_id="w2", cause="worker stopped", now=at(4))
    with factory() as session:
        assert repo.last_worker_seen(session) is None  # so /health/ready says 503
    with factory.begin() as session:  # a worker that reports again runs after all
        repo.worker_seen(session, worker_id="w1", host="a", pid=1, devices=1, now=at(5))
    with factory() as session:
        assert repo.last_worker_seen(session) == at(5)
