"""The job store on real SQLite files: claiming, leases, fencing, idempotency, events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from service.store import repo
from service.store.tables import Job, JobEvent

from .store_support import (
    T0,
    add_dataset,
    add_job,
    assert_each_job_claimed_once,
    at,
    claims_by_job,
)

LEASE_S = 30.0


def claim(factory, worker: str = "w1", *, now: datetime = T0) -> repo.Claim | None:
    return repo.claim_next_job(factory, worker_id=worker, lease_s=LEASE_S, now=now)


def job(factory, job_id: str) -> Job:
    with factory() as session:
        return repo.get_job(session, job_id)


def events(factory, job_id: str) -> list[JobEvent]:
    with factory() as session:
        return repo.events_after(session, job_id, after_id=0, limit=1000)


# ---------------------------------------------------------------------------- claiming


def test_claim_order_is_priority_then_age(factory, dataset_id):
    old_low = add_job(factory, dataset_id, now=at(0), priority=0)
    new_high = add_job(factory, dataset_id, now=at(2), priority=5)
    old_high = add_job(factory, dataset_id, now=at(1), priority=5)
    order = [claim(factory, now=at(10)) for _ in range(4)]
    assert [c.job_id if c else None for c in order] == [old_high, new_high, old_low, None]


def test_a_worker_claims_only_jobs_that_fit_its_devices(factory, dataset_id):
    big = add_job(factory, dataset_id, now=at(0), priority=5, devices=4)
    small = add_job(factory, dataset_id, now=at(1), devices=2)
    one = repo.claim_next_job(factory, worker_id="w2", lease_s=LEASE_S, now=at(2), max_devices=2)
    assert one is not None and one.job_id == small  # the bigger job waits; the next one goes
    assert (
        repo.claim_next_job(factory, worker_id="w2", lease_s=LEASE_S, now=at(3), max_devices=2)
        is None
    )
    assert job(factory, big).status == "queued"
    other = repo.claim_next_job(factory, worker_id="w8", lease_s=LEASE_S, now=at(4), max_devices=8)
    assert other is not None and other.job_id == big


def test_a_claimed_job_is_running_and_not_claimed_again(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    first = claim(factory, "w1", now=at(1))
    assert first == repo.Claim(job_id=job_id, token=1, attempt=1)
    assert claim(factory, "w2", now=at(2)) is None
    row = job(factory, job_id)
    assert (row.status, row.lease_owner, row.started_at) == ("running", "w1", at(1))
    assert row.lease_expires_at == at(1 + LEASE_S)
    assert claims_by_job(factory)[job_id] == 1


def test_released_job_is_claimed_again_with_higher_attempt_and_token(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    first = claim(factory, now=at(1))
    assert first is not None
    with factory.begin() as session:
        assert repo.release_job(session, job_id=job_id, token=first.token, now=at(2))
    released = job(factory, job_id)
    assert (released.status, released.attempt, released.lease_owner) == ("queued", 1, None)
    second = claim(factory, "w2", now=at(3))
    assert second == repo.Claim(job_id=job_id, token=2, attempt=2)
    assert job(factory, job_id).started_at == at(1)  # the first start is kept


# ---------------------------------------------------------------------------- leases, fencing


def test_heartbeat_extends_the_lease(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    c = claim(factory, now=at(0))
    assert c is not None
    with factory.begin() as session:
        beat = repo.heartbeat(session, job_id=job_id, token=c.token, lease_s=LEASE_S, now=at(20))
    assert beat == repo.HeartbeatResult(cancel_requested=False, lease_expires_at=at(20 + LEASE_S))
    assert claim(factory, "w2", now=at(LEASE_S + 1)) is None  # the old expiry has passed
    assert job(factory, job_id).lease_owner == "w1"


def test_old_token_is_fenced_out_after_a_reclaim(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    old = claim(factory, "w1", now=at(0))
    new = claim(factory, "w2", now=at(LEASE_S + 1))  # w1's lease expired
    assert old is not None and new is not None
    assert (new.job_id, new.token, new.attempt) == (job_id, old.token + 1, 2)
    before, n_events = job(factory, job_id), len(events(factory, job_id))
    with factory.begin() as session:
        t = at(LEASE_S + 2)
        kw: dict[str, Any] = {"job_id": job_id, "token": old.token, "now": t}
        assert repo.heartbeat(session, lease_s=LEASE_S, **kw) is None
        assert not repo.record_event(session, kind="step", payload={"iteration": 9}, **kw)
        assert not repo.finish_job(session, status="succeeded", **kw)
        assert not repo.release_job(session, **kw)
    after = job(factory, job_id)
    assert after.status == "running" and after.lease_owner == "w2"
    assert (after.progress, after.lease_expires_at) == (before.progress, before.lease_expires_at)
    assert len(events(factory, job_id)) == n_events
    with factory.begin() as session:
        ok = repo.record_event(
            session, job_id=job_id, token=new.token, kind="step", payload={"i": 1}, now=at(40)
        )
    assert ok


def test_lease_expiry_requeues_up_to_max_attempts_then_fails(factory, dataset_id):
    job_id = add_job(factory, dataset_id, max_attempts=2)
    first = claim(factory, "w1", now=at(0))
    second = claim(factory, "w2", now=at(100))
    assert first is not None and second is not None
    assert (first.attempt, second.attempt) == (1, 2)
    assert claim(factory, "w3", now=at(200)) is None
    row = job(factory, job_id)
    assert (row.status, row.attempt, row.finished_at) == ("failed", 2, at(200))
    assert row.error is not None
    assert row.error.startswith("lease expired: 2 attempts in a row ended without progress")
    assert row.lease_owner is None and row.lease_expires_at is None
    reasons = [e.payload.get("reason") or e.payload.get("error") for e in events(factory, job_id)]
    assert reasons == [None, "lease expired, re-queued", None, row.error]


def test_expired_job_with_a_cancel_request_is_cancelled_not_requeued(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    assert claim(factory, now=at(0)) is not None
    with factory.begin() as session:
        repo.request_cancel(session, job_id, now=at(1))
    assert claim(factory, "w2", now=at(100)) is None
    assert job(factory, job_id).status == "cancelled"


# ---------------------------------------------------------------------------- jobs


def test_idempotency_key_returns_the_same_job_or_conflicts(factory, dataset_id):
    first = add_job(factory, dataset_id, idempotency_key="k1", request_hash="h1")
    with factory.begin() as session:
        again, created = repo.create_job(
            session,
            recipe={"other": True},
            train_dataset_id=dataset_id,
            max_attempts=3,
            idempotency_key="k1",
            request_hash="h1",
            now=at(5),
        )
        assert (again.id, created) == (first, False)
    with pytest.raises(repo.IdempotencyConflict), factory.begin() as session:
        repo.create_job(
            session,
            recipe={},
            train_dataset_id=dataset_id,
            max_attempts=3,
            idempotency_key="k1",
            request_hash="h2",
            now=at(6),
        )
    assert add_job(factory, dataset_id) != add_job(factory, dataset_id)  # no key: always new


def test_create_job_names_the_missing_dataset(factory, dataset_id):
    with pytest.raises(repo.NotFound) as caught, factory.begin() as session:
        repo.create_job(
            session,
            recipe={},
            train_dataset_id=dataset_id,
            val_dataset_id="nope",
            max_attempts=3,
            now=T0,
        )
    assert (caught.value.what, caught.value.ident) == ("val dataset", "nope")


def test_cancel_queued_running_and_finished_jobs(factory, dataset_id):
    queued, running = add_job(factory, dataset_id, now=at(1)), add_job(factory, dataset_id)
    c = claim(factory, now=at(2))
    assert c is not None and c.job_id == running
    with factory.begin() as session:
        assert repo.request_cancel(session, queued, now=at(3)).status == "cancelled"
        assert repo.request_cancel(session, running, now=at(3)).cancel_requested
    assert job(factory, queued).finished_at == at(3)
    assert events(factory, queued)[-1].payload["status"] == "cancelled"
    with factory.begin() as session:
        beat = repo.heartbeat(session, job_id=running, token=c.token, lease_s=LEASE_S, now=at(4))
        assert beat is not None and beat.cancel_requested
        cancelled = repo.finish_job(
            session, job_id=running, token=c.token, status="cancelled", now=at(5)
        )
        assert cancelled
    for job_id in (queued, running):
        with pytest.raises(repo.Conflict), factory.begin() as session:
            repo.request_cancel(session, job_id, now=at(6))
    with pytest.raises(repo.NotFound), factory.begin() as session:
        repo.request_cancel(session, "missing", now=at(6))


def test_finish_job_clears_the_lease_and_records_the_outcome(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    c = claim(factory, now=at(1))
    assert c is not None
    with factory.begin() as session:
        done = repo.finish_job(
            session, job_id=job_id, token=c.token, status="failed", error="boom", now=at(2)
        )
    assert done
    row = job(factory, job_id)
    assert (row.status, row.error, row.finished_at) == ("failed", "boom", at(2))
    assert row.lease_owner is None and row.lease_expires_at is None
    assert events(factory, job_id)[-1].payload == {
        "status": "failed",
        "error": "boom",
        "checkpoint_iteration": 0,
    }


def test_list_jobs_newest_first_with_status_filter(factory, dataset_id):
    ids = [add_job(factory, dataset_id, now=at(i)) for i in range(5)]
    assert claim(factory, now=at(10)) is not None  # the oldest becomes running
    with factory() as session:
        page, total = repo.list_jobs(session, limit=2, offset=1)
        assert ([j.id for j in page], total) == ([ids[3], ids[2]], 5)
        running, count = repo.list_jobs(session, status="running", limit=10, offset=0)
        assert ([j.id for j in running], count) == ([ids[0]], 1)


# ---------------------------------------------------------------------------- datasets


def test_datasets_round_trip_list_and_not_found(factory, dataset_id):
    other = add_dataset(factory, "val")
    with factory() as session:
        row = repo.get_dataset(session, dataset_id)
        assert row.class_counts == {"circle": 4, "square": 3}
        assert row.categories[0] == {"id": 1, "name": "circle"}
        rows, total = repo.list_datasets(session, limit=1, offset=0)
        assert total == 2 and len(rows) == 1 and rows[0].id in {dataset_id, other}
        with pytest.raises(repo.NotFound):
            repo.get_dataset(session, "missing")


def test_delete_dataset_refused_while_a_job_needs_it(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    with pytest.raises(repo.Conflict, match=job_id), factory.begin() as session:
        repo.delete_dataset(session, dataset_id)  # queued
    c = claim(factory, now=at(1))
    assert c is not None
    with pytest.raises(repo.Conflict), factory.begin() as session:
        repo.delete_dataset(session, dataset_id)  # running
    with factory.begin() as session:
        repo.finish_job(session, job_id=job_id, token=c.token, status="succeeded", now=at(2))
    with factory.begin() as session:
        assert repo.delete_dataset(session, dataset_id).id == dataset_id
    row = job(factory, job_id)
    assert (row.status, row.train_dataset_id) == ("succeeded", None)  # history is kept
    with pytest.raises(repo.NotFound), factory.begin() as session:
        repo.delete_dataset(session, dataset_id)


# ---------------------------------------------------------------------------- events, workers


def test_events_progress_pages_and_epochs(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    c = claim(factory, now=at(1))
    assert c is not None
    with factory.begin() as session:
        for i, kind in enumerate(["start", "step", "epoch", "step", "epoch"]):
            payload = {"i": i}
            assert repo.record_event(
                session, job_id=job_id, token=c.token, kind=kind, payload=payload, now=at(2 + i)
            )
        with pytest.raises(ValueError, match="event kind"):
            repo.record_event(
                session, job_id=job_id, token=c.token, kind="typo", payload={}, now=at(9)
            )
    assert job(factory, job_id).progress == {"i": 3}
    everything = events(factory, job_id)
    ids = [e.id for e in everything]
    assert ids == sorted(ids) and len(ids) == 6  # claim + 5
    with factory() as session:
        page = repo.events_after(session, job_id, after_id=ids[1], limit=2)
        assert [e.id for e in page] == ids[2:4]
        assert [e.payload["i"] for e in repo.epoch_events(session, job_id)] == [2, 4]


def test_worker_seen_upserts_and_reports_the_latest(factory, dataset_id):
    with factory.begin() as session:
        assert repo.last_worker_seen(session) is None
        repo.worker_seen(session, worker_id="w1", host="a", pid=1, devices=1, now=at(1))
        repo.worker_seen(session, worker_id="w2", host="b", pid=2, devices=8, now=at(2))
    with factory.begin() as session:
        repo.worker_seen(session, worker_id="w1", host="a", pid=3, devices=2, now=at(5))
    held = add_job(factory, dataset_id)
    claim(factory, "w2", now=at(6))
    with factory() as session:
        assert repo.last_worker_seen(session) == at(5)
        listed = [
            (w.id, w.pid, w.devices, job) for w, job in repo.list_workers(session, seen_since=None)
        ]
        assert listed == [("w1", 3, 2, None), ("w2", 2, 8, held)]
        assert [w.id for w, _ in repo.list_workers(session, seen_since=at(3))] == ["w1"]


# ---------------------------------------------------------------------------- concurrency


def test_four_processes_claim_each_job_exactly_once(url):
    assert_each_job_claimed_once(url, jobs=40, workers=4)


def test_event_ids_only_grow_even_after_deletes(factory, dataset_id):
    job_id = add_job(factory, dataset_id)
    first = claim(factory, now=at(1))
    assert first is not None
    with factory.begin() as session:
        (newest,) = repo.events_after(session, job_id, after_id=0, limit=10)
        session.delete(newest)
        assert repo.release_job(session, job_id=job_id, token=first.token, now=at(2))
    assert min(e.id for e in events(factory, job_id)) > newest.id
