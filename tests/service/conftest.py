"""Store fixtures on a real, migrated SQLite file (shared by the store's test modules)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.store.db import make_engine, migrate, session_factory

from .store_support import add_dataset


@pytest.fixture
def url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    return url


@pytest.fixture
def factory(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def dataset_id(factory) -> str:
    return add_dataset(factory)
