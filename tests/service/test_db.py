"""The store's database layer on real SQLite files: migrations, connection settings, sessions."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.exc import StatementError

from service.store import db, repo
from service.store.db import alembic_config, make_engine, migrate, session_factory

from .store_support import (
    add_job,
    at,
    dataset_fields,
    migrate_after,
    run_processes,
    schema_diffs,
)

# ---------------------------------------------------------------------------- migrations


def test_migrations_create_the_orm_schema(url):
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= {"datasets", "jobs", "job_events"}
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_migrate_twice_is_a_no_op(url, factory, dataset_id):
    migrate(url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with factory() as session:
        assert MigrationContext.configure(session.connection()).get_current_revision() == head
        assert repo.get_dataset(session, dataset_id).name == "train"


def test_migrate_from_several_processes_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    run_processes(migrate_after, url, 4)
    engine = make_engine(url)
    try:
        assert schema_diffs(engine) == []
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(factory):
    with factory() as session:
        assert session.connection().exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert session.connection().exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_read_only_sessions_do_not_wait_for_a_writer(url, factory, dataset_id):
    engine = make_engine(url)
    readers = session_factory(engine, read_only=True)
    try:
        with factory.begin() as writer:
            # A write session holds SQLite's write lock from its first statement (IMMEDIATE);
            # a read-only one begins DEFERRED and reads the last committed state without waiting.
            repo.create_dataset(writer, **dataset_fields("pending"))
            with readers() as reader:
                rows, _ = repo.list_datasets(reader, limit=10, offset=0)
        assert [d.name for d in rows] == ["train"]
    finally:
        engine.dispose()


def test_datetimes_round_trip_as_aware_utc_and_naive_ones_are_refused(factory, dataset_id):
    job_id = add_job(factory, dataset_id, now=at(5))
    assert _job(factory, job_id).created_at == at(5)
    assert _job(factory, job_id).created_at.utcoffset() is not None
    naive = datetime(2025, 1, 1)
    with pytest.raises(StatementError, match="naive datetime"), factory.begin() as session:
        repo.create_job(session, recipe={}, train_dataset_id=dataset_id, max_attempts=1, now=naive)


def _job(factory, job_id: str):
    with factory() as session:
        return repo.get_job(session, job_id)


def test_route_sessions_leave_room_in_every_pool() -> None:
    """Routes' dependency sessions wait for a thread while they hold a connection; if they
    could take a whole pool, requests would deadlock (see db.ROUTE_READ_SESSIONS)."""
    held = db.ROUTE_READ_SESSIONS + db.ROUTE_WRITE_SESSIONS
    for pool in (db.SQLITE_POOL, db.PG_POOL):
        assert held < pool["pool_size"] + pool["max_overflow"]
