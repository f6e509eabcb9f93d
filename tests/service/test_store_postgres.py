"""The job store on a real PostgreSQL server (``RETINANET_TEST_POSTGRES_URL``).

Start one with ``eval "$(bash scripts/postgres.sh | tail -1)"``. Without the variable these
tests skip, except under CI (``CI`` set), where they fail: CI must not silently skip them.
Each test works in a fresh schema that is dropped afterwards.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url, select, text

from service.store import repo
from service.store.db import make_engine, migrate
from service.store.tables import Job

from .store_support import (
    FROZEN_FENCED_OUT,
    add_dataset,
    add_job,
    assert_each_job_claimed_once,
    at,
    freeze_in_transaction,
    migrate_after,
    process_state,
    run_processes,
    schema_diffs,
)

URL_VARIABLE = "RETINANET_TEST_POSTGRES_URL"


def _server_url() -> str:
    """The configured server, else skip (or fail under CI)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    message = (
        f'{URL_VARIABLE} is not set; start a server: eval "$(bash scripts/postgres.sh | tail -1)"'
    )
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{message} (CI is set, so the PostgreSQL tests may not be skipped)")
    pytest.skip(message)


@pytest.fixture
def schema_url() -> Iterator[str]:
    """A URL whose connections work in a new, empty schema (dropped afterwards)."""
    server = make_url(_server_url())
    schema = f"test_{os.urandom(6).hex()}"
    admin = make_engine(server)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def url(schema_url: str) -> str:
    migrate(schema_url)
    return schema_url


def test_migrations_match_the_orm_and_rerun_as_a_no_op(url):
    migrate(url)
    engine = make_engine(url)
    try:
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_migrate_from_several_processes_at_once(schema_url):
    run_processes(migrate_after, schema_url, 4)
    engine = make_engine(schema_url)
    try:
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_claim_skips_a_job_locked_by_another_transaction(factory):
    dataset_id = add_dataset(factory)
    first = add_job(factory, dataset_id, now=at(0))
    second = add_job(factory, dataset_id, now=at(1))
    with factory.begin() as other:
        # Another claimer is mid-transaction on the first job; we must not wait for it.
        other.execute(select(Job).where(Job.id == first).with_for_update()).one()
        claim = repo.claim_next_job(factory, worker_id="w", lease_s=30, now=at(2))
    assert claim is not None and claim.job_id == second


def test_old_token_is_fenced_out_after_a_reclaim(factory):
    dataset_id = add_dataset(factory)
    job_id = add_job(factory, dataset_id)
    old = repo.claim_next_job(factory, worker_id="w1", lease_s=30, now=at(0))
    new = repo.claim_next_job(factory, worker_id="w2", lease_s=30, now=at(31))
    assert old is not None and new is not None and new.token == old.token + 1
    with factory.begin() as session:
        assert (
            repo.heartbeat(session, job_id=job_id, token=old.token, lease_s=30, now=at(32)) is None
        )
        assert not repo.finish_job(
            session, job_id=job_id, token=old.token, status="succeeded", now=at(32)
        )
    with factory() as session:
        row = repo.get_job(session, job_id)
        assert (row.status, row.lease_owner, row.created_at) == ("running", "w2", at(0))


def test_four_processes_claim_each_job_exactly_once(url):
    assert_each_job_claimed_once(url, jobs=40, workers=4)


def test_a_transaction_frozen_past_its_lease_is_cut_off_and_the_job_taken_over(url, factory):
    # A worker frozen (SIGSTOP) inside a transaction holds the job row's lock; claimers skip
    # locked rows, so without the server's cut the job would stay with the frozen worker.
    job_id = add_job(factory, add_dataset(factory))
    first = repo.claim_next_job(factory, worker_id="frozen", lease_s=1, now=at(0))
    assert first is not None
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    frozen = context.Process(
        target=freeze_in_transaction, args=(url, job_id, first.token, ready, 2.0)
    )
    frozen.start()
    assert frozen.pid is not None
    try:
        assert ready.wait(60), "the frozen process never locked the row"
        while process_state(frozen.pid) in ("R", "S", "D"):  # until stopped (or dead)
            time.sleep(0.05)
        started, second = time.monotonic(), None
        while second is None and time.monotonic() - started < 30:
            second = repo.claim_next_job(factory, worker_id="second", lease_s=60, now=at(10))
            time.sleep(0.2)
        assert second is not None, "the job stayed locked by the frozen transaction"
        assert (second.job_id, second.token) == (job_id, first.token + 1)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.join(60)
    # Its transaction was gone when it woke; written again, it was fenced out.
    assert frozen.exitcode == FROZEN_FENCED_OUT
    with factory() as session:
        job = repo.get_job(session, job_id)
        assert (job.lease_owner, job.checkpoint_iteration) == ("second", 0)
