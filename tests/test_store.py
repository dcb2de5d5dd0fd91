"""The territorial directory's schema: created on an empty database, upgraded on purpose, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from directory_sync.errors import StoreError
from directory_sync.store import Store, open_store
from directory_sync.store.database import SCHEMA_HEAD


def test_an_empty_database_gets_the_current_schema(database_url: str) -> None:
    store = open_store(database_url)
    assert store.current_revision() == store.head_revision()
    before, after = store.upgrade()  # safe to run twice
    assert before == after == store.head_revision()


def test_the_schema_head_the_code_knows_is_the_migrations_head(database_url: str) -> None:
    assert open_store(database_url).head_revision() == SCHEMA_HEAD


def test_an_outdated_schema_must_be_upgraded_on_purpose(database_url: str) -> None:
    store = open_store(database_url)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('zzzz-unknown')"))
    with pytest.raises(StoreError, match="which this version of ght does not know"):
        store.upgrade()
    with pytest.raises(StoreError, match="run `ght db upgrade`"):
        open_store(database_url)


def test_a_database_holding_other_tables_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/other.db"
    with create_engine(url).begin() as conn:
        conn.execute(text("CREATE TABLE patients (id INTEGER)"))
    with pytest.raises(StoreError, match="already holds other tables"):
        open_store(url)


def test_an_unusable_url_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match=r"URL 'mysql\+nodriver://x' is not usable: Can't load"):
        Store("mysql+nodriver://x")


def test_an_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        open_store("postgresql://ght@127.0.0.1:1/ght")
