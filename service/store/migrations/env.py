"""Alembic environment for the store.

``service.store.db.migrate`` hands over a connection that already holds the migration lock (in
``config.attributes["connection"]``); otherwise the URL comes from the ``sqlalchemy.url`` option,
e.g. ``alembic -c <ini> upgrade head`` or ``--sql`` (offline) when writing a new revision.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.store.db import make_engine
from service.store.tables import Base


def _configured_url() -> str:
    """The URL from the Alembic config; an error names the option to set."""
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or migrate with service.store.db.migrate(url)")
    return url


def _run_on(connection: Connection) -> None:
    """Run the pending migrations on ``connection``."""
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode lets future revisions rebuild tables.
        render_as_batch=True,
    )
    # Inside migrate()'s transaction this is a no-op, so the whole upgrade commits at once.
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Migrate a live database: the handed-over connection, else one from the URL."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = make_engine(_configured_url())
    try:
        with engine.connect() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


def run_offline() -> None:
    """Write the migration SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_configured_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
