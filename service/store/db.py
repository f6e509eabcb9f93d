"""Engines, sessions and migrations for the store (SQLite file or PostgreSQL by URL).

Nothing here is global: callers build an engine with ``make_engine`` once per process, a
sessionmaker with ``session_factory``, and own both.

SQLite transactions: the pysqlite driver's own transaction handling is switched off and every
transaction starts with an explicit ``BEGIN <mode>``. Write sessions (the default) use
``BEGIN IMMEDIATE``: the write lock is taken up front (waiting up to the busy timeout), so two
writers serialize instead of failing with "database is locked" when a read-then-write
transaction finds its snapshot stale. ``read_only=True`` sessions use ``BEGIN DEFERRED`` so that
long or frequent readers (listings, event streams) never wait for or block writers.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_S: Final = 30.0
# Connections per engine. The API's thread pool runs up to 40 requests at once, each holding a
# connection while it runs: a smaller pool makes requests time out waiting for one. SQLite
# connections are cheap files handles; PostgreSQL ones are server processes (default limit 100,
# shared by the API, the workers and their training children), so it gets fewer and waits.
SQLITE_POOL: Final[dict[str, Any]] = {"pool_size": 16, "max_overflow": 48, "pool_timeout": 30}
PG_POOL: Final[dict[str, Any]] = {"pool_size": 8, "max_overflow": 24, "pool_timeout": 30}
# The most sessions API routes hold at once through their dependencies (reads, writes). Such a
# session is closed only after FastAPI has serialized the route's answer, which waits for a
# thread; if these sessions could take the whole pool, the threads would all wait for a
# connection and the answers for a thread: a deadlock (seen on PostgreSQL under load). Below
# the smallest pool, a connection is always left for the code that holds one only while it
# runs (event streams, uploads, predict), so every wait ends.
ROUTE_READ_SESSIONS: Final = 16
ROUTE_WRITE_SESSIONS: Final = 8
# Execution option read by the SQLite "begin" listener: DEFERRED, IMMEDIATE or EXCLUSIVE.
SQLITE_BEGIN: Final = "sqlite_begin"
WRITE_TRANSACTION: Final[dict[str, Any]] = {SQLITE_BEGIN: "IMMEDIATE"}
READ_TRANSACTION: Final[dict[str, Any]] = {SQLITE_BEGIN: "DEFERRED"}
_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
# Any fixed 64-bit number; every migrator of one database must use the same one.
_PG_MIGRATION_LOCK: Final = 0x7265_7469_6E61_6E65  # "retinane"


def make_engine(url: str | URL, *, frozen_transaction_s: float | None = None) -> Engine:
    """An engine for ``url``: ``sqlite:///path.db`` or ``postgresql+psycopg://...``.

    ``frozen_transaction_s`` (PostgreSQL only): the server ends a transaction of this engine
    that has sat idle that long, and with it the row locks it held. A process frozen inside a
    transaction (SIGSTOP, a paused VM, a debugger) would otherwise hold them until it wakes,
    and the job row it locked could never be taken over. Workers pass their lease: past it
    their writes are fenced out anyway, so the cut transaction loses nothing. SQLite has no
    such cut: a process frozen inside a write transaction holds the file's write lock until it
    resumes or dies (docs/reliability.md).
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url)
    if sa_url.drivername == "postgresql":
        # A bare postgresql:// would pick psycopg2, which the project does not install.
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    # pre_ping: a worker idles between jobs and the server may have dropped its connections.
    engine = create_engine(sa_url, pool_pre_ping=True, **PG_POOL)
    if frozen_transaction_s is not None:
        timeout_ms = max(1, round(frozen_transaction_s * 1000))
        event.listen(engine, "connect", partial(_set_idle_transaction_timeout, timeout_ms))
    return engine


def _set_idle_transaction_timeout(
    timeout_ms: int, dbapi_connection: Any, _record: ConnectionPoolEntry
) -> None:
    """Set ``idle_in_transaction_session_timeout`` for a new PostgreSQL connection."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET idle_in_transaction_session_timeout = {int(timeout_ms)}")
    dbapi_connection.commit()  # a SET inside a rolled-back transaction would be undone


def _sqlite_engine(url: URL) -> Engine:
    """A SQLite engine with WAL, a busy timeout, foreign keys and explicit BEGIN modes."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S}, **SQLITE_POOL)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    """Configure each new SQLite connection.

    ``isolation_level = None`` stops pysqlite from emitting its own (deferred, DML-only) BEGIN;
    ``_on_sqlite_begin`` emits ours, as SQLAlchemy's SQLite docs describe.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock that another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch the database to WAL: readers never block the writer, so the API stays responsive
    while workers write.

    SQLite answers "database is locked" at once, without calling the busy handler, when
    another connection holds the lock this switch needs (several processes opening a new
    database together: the API, its worker, ``retinanet migrate``). Retry up to the busy
    timeout instead of failing the process.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _on_sqlite_begin(conn: Connection) -> None:
    """Emit ``BEGIN <mode>``, the mode taken from the ``sqlite_begin`` execution option."""
    mode = str(conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")).upper()
    if mode not in _BEGIN_MODES:
        raise ValueError(f"{SQLITE_BEGIN}={mode!r}; expected one of {sorted(_BEGIN_MODES)}")
    conn.exec_driver_sql(f"BEGIN {mode}")


def session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """A sessionmaker for ``engine``; the caller owns transactions (``with factory.begin()``).

    Objects stay readable after commit (``expire_on_commit=False``) so that API handlers can
    serialise what a repository function returned. ``read_only`` only changes how SQLite begins
    (DEFERRED instead of IMMEDIATE); use it for sessions that never write.
    """
    options = READ_TRANSACTION if read_only else WRITE_TRANSACTION
    return sessionmaker(bind=engine.execution_options(**options), expire_on_commit=False)


@dataclass(frozen=True)
class Sessions:
    """The two session factories of one engine: ``write`` (the default, ``BEGIN IMMEDIATE`` on
    SQLite) and ``read`` (never takes the write lock)."""

    write: sessionmaker[Session]
    read: sessionmaker[Session]

    @classmethod
    def of(cls, engine: Engine) -> Sessions:
        return cls(write=session_factory(engine), read=session_factory(engine, read_only=True))


def alembic_config() -> Config:
    """An Alembic config built in code (no alembic.ini needed) for the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(url: str | URL) -> None:
    """Upgrade the database at ``url`` to the newest schema (``alembic upgrade head``).

    Safe to run from several processes at once: all of the upgrade happens in one transaction
    that first takes a database-wide lock (``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped
    advisory lock on PostgreSQL), so later callers wait and then find nothing left to do.
    """
    engine = make_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            config = alembic_config()
            # env.py migrates this connection inside the transaction that holds the lock.
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()
