"""The territorial directory's schema: created on an empty database, upgraded on purpose, never guessed."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import bindparam, create_engine, insert, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from directory_sync.errors import StoreError
from directory_sync.store import (
    Account,
    AccountState,
    Person,
    PersonStatus,
    Site,
    Store,
    open_store,
    sa_table,
)
from directory_sync.store import database as database_module
from directory_sync.store.bulk import insert_rows, select_rows, update_rows
from directory_sync.store.database import SCHEMA_HEAD


def test_an_empty_database_gets_the_current_schema(database_url: str) -> None:
    store = open_store(database_url)
    assert store.current_revision() == store.head_revision()
    before, after = store.upgrade()  # safe to run twice
    assert before == after == store.head_revision()


def test_the_schema_head_the_code_knows_is_the_migrations_head(database_url: str) -> None:
    assert open_store(database_url).head_revision() == SCHEMA_HEAD


def test_the_migrations_build_the_schema_the_models_declare(database_url: str) -> None:
    """Tables, columns, indexes: what Alembic would generate from the models is already there."""
    import sso_gateway.models  # noqa: F401  (the gateway's tables are in the same metadata)

    store = open_store(database_url)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


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


def test_bulk_inserts_store_exactly_what_sqlalchemy_would(database_url: str) -> None:
    """`insert_rows` (the first run's people, accounts, audit) stores the same text, dates and JSON as
    `insert(table)` through SQLAlchemy, on both stores: rows written by either read back the same."""
    store = open_store(database_url)
    person, account = sa_table(Person), sa_table(Account)
    paris = timezone(timedelta(hours=1))
    now = datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC)
    people = [
        {
            "id": f"p{i}",
            "family_name": "Bérenguier",
            "given_name": None if i else "Marie-Hélène",
            "status": PersonStatus.ACTIVE,
            "provenance": {"family_name": {"site": "ch-a", "since": now.isoformat()}} if i else {},
            "created_at": now,
            # the same instant in two time zones: remembered processing must not confuse them
            "updated_at": now.astimezone(paris) if i else now,
        }
        for i in range(2)
    ]
    accounts = [
        {
            "anchor": f"uuid-{i}",
            "dn": f"uid=l{i},ou=people,dc=a",
            "login": login,
            "state": AccountState.ENABLED if i % 2 else AccountState.DISABLED,
            "attributes": {"sn": "Bérenguier\u00e9", "mail": None, "n": i} if i != 3 else {},
            "fingerprint": "f" * 40,
            "facts": {"never_expires": True},
            "first_seen_at": now if i != 2 else now.astimezone(paris),
            "last_changed_at": now,
            "linked_by": "created",
        }
        for i, login in enumerate(["a", "b'c", "d\\e", "", "x" * 200])
    ]
    with store.session() as session:
        session.add_all(
            [Site(code="ch-a", name="A", finess="840000087"), Site(code="ch-b", name="B", finess="840000467")]
        )
        session.flush()
        insert_rows(session, person, people)
        session.execute(insert(person), [row | {"id": f"q{row['id']}"} for row in people])
        insert_rows(session, account, [row | {"site": "ch-a", "person_id": "p0"} for row in accounts])
        session.execute(insert(account), [row | {"site": "ch-b", "person_id": "qp0"} for row in accounts])
        session.commit()
    with store.engine.connect() as conn:  # raw values as stored, not as SQLAlchemy reads them back
        stored_people = conn.exec_driver_sql(
            "select family_name, given_name, status, provenance, created_at, updated_at "
            "from person order by id"
        ).all()
        stored_accounts = conn.exec_driver_sql(
            "select anchor, dn, login, state, attributes, facts, first_seen_at, last_changed_at, site "
            "from account order by anchor, site"
        ).all()
    assert stored_people[:2] == stored_people[2:]
    assert len(stored_accounts) == 10
    for ours, theirs in zip(stored_accounts[0::2], stored_accounts[1::2], strict=True):
        assert (ours[-1], theirs[-1]) == ("ch-a", "ch-b")
        assert ours[:-1] == theirs[:-1]
    with store.session() as session:
        first = session.execute(select(account).where(account.c.anchor == "uuid-0", account.c.site == "ch-a"))
        row = first.one()
    assert row.attributes == {"sn": "Bérenguier\u00e9", "mail": None, "n": 0}


def _site_and_person(session: Session, person_id: str, when: datetime, **person: Any) -> None:
    """Site ch-a and one person (`person`: more of its columns), for a test's accounts to belong to."""
    session.add(Site(code="ch-a", name="A", finess="840000087"))
    session.flush()
    row = {"id": person_id, "family_name": "Bérenguier", "created_at": when, "updated_at": when}
    insert_rows(session, sa_table(Person), [row | person])


def test_bulk_updates_store_exactly_what_sqlalchemy_would(database_url: str) -> None:
    """`update_rows` (a plan's updated accounts, recomputed people) sets the same text, dates, JSON and
    NULLs as `update(table)` through SQLAlchemy, on both stores, and only the columns it is given."""
    store = open_store(database_url)
    account = sa_table(Account)
    paris = timezone(timedelta(hours=1))
    then = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    now = datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC)
    with store.session() as session:
        _site_and_person(session, "p0", then)
        insert_rows(
            session,
            account,
            [
                {
                    "site": "ch-a",
                    "anchor": f"uuid-{i}",
                    "dn": "dn",
                    "login": f"l{i}",
                    "person_id": "p0",
                    "attributes": {},
                    "fingerprint": "f",
                    "first_seen_at": then,
                    "last_changed_at": then,
                    "deleted_at": then,
                }
                for i in range(4)
            ],
        )
        ids = dict(session.execute(select(account.c.anchor, account.c.id)).all())
        changes = [
            {
                "dn": f"uid=l{i},ou=people,dc=a",
                "state": AccountState.DISABLED if i % 2 else AccountState.ENABLED,
                "attributes": {"sn": "Bérenguier\u00e9", "mail": None, "n": i} if i else {},
                "last_changed_at": now.astimezone(paris) if i == 1 else now,
                "deleted_at": None,
            }
            for i in range(2)
        ]
        update_rows(
            session,
            account,
            "account_id",
            [c | {"account_id": ids[f"uuid-{i}"]} for i, c in enumerate(changes)],
        )
        session.execute(
            update(account).where(account.c.id == bindparam("account_id")),
            [c | {"account_id": ids[f"uuid-{i + 2}"]} for i, c in enumerate(changes)],
        )
        session.commit()
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "select dn, login, state, attributes, fingerprint, first_seen_at, last_changed_at, deleted_at "
            "from account order by anchor"
        ).all()
    assert stored[:2] == [(*row[:1], f"l{i}", *row[2:]) for i, row in enumerate(stored[2:])]
    assert stored[0][1:2] == ("l0",) and stored[0][5] == stored[2][5]  # columns not given are left alone
    with pytest.raises(ValueError, match="cannot update"):
        update_rows(store.engine.connect(), account, "account_id", [{"nickname": "x", "account_id": 1}])


def test_bulk_reads_give_exactly_what_sqlalchemy_gives(database_url: str) -> None:
    """`select_rows` (a delta's reads of the rows it changes, of the new accounts' candidates) gives the
    values SQLAlchemy gives for the same statement: dates with their time zone, JSON decoded, NULLs,
    labels, an IN list of any length."""
    store = open_store(database_url)
    person, account = sa_table(Person), sa_table(Account)
    now = datetime(2026, 11, 23, 8, 30, 15, 123456, tzinfo=UTC)
    with store.session() as session:
        _site_and_person(session, "p1", now, status=PersonStatus.SUSPENDED, suspended_at=now)
        insert_rows(
            session,
            account,
            [
                {
                    "site": "ch-a",
                    "anchor": f"uuid-{i}",
                    "dn": f"uid=l{i},dc=a",
                    "login": f"l{i}",
                    "state": AccountState.ENABLED,
                    "attributes": {"sn": "Bérenguier", "n": i, "none": None} if i else {},
                    "fingerprint": "f",
                    "facts": {},
                    "first_seen_at": now,
                    "last_changed_at": now,
                    "linked_by": "created",
                    "person_id": "p1",
                }
                for i in range(3)
            ],
        )
        session.commit()
    statement = (
        select(
            account.c.id,
            account.c.attributes,
            account.c.first_seen_at,
            person.c.suspended_at.label("p_suspended_at"),
            person.c.given_name,
        )
        .join(person, person.c.id == account.c.person_id)
        .where(account.c.anchor.in_(bindparam("anchors", expanding=True)))
        .order_by(account.c.id)
    )
    with store.session() as session:
        for anchors in (["uuid-0"], ["uuid-0", "uuid-2", "missing"], []):
            expected = [tuple(row) for row in session.execute(statement, {"anchors": anchors})]
            assert select_rows(session, statement, {"anchors": anchors}) == expected
        (got,) = select_rows(session, statement, {"anchors": ["uuid-1"]})
        assert got == tuple(session.execute(statement, {"anchors": ["uuid-1"]}).one())
        assert got[1] == {"sn": "Bérenguier", "n": 1, "none": None} and got[4] is None
        assert got[2].replace(tzinfo=UTC) == now  # (SQLite keeps no time zone: SQLAlchemy reads UTC back)


def test_bulk_inserts_refuse_rows_that_do_not_fit_the_table(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/ght.db")
    with store.session() as session, pytest.raises(ValueError, match="account: no column nickname"):
        insert_rows(session, sa_table(Account), [{"site": "ch-a", "nickname": "x"}])
    with store.session() as session, pytest.raises(ValueError, match="one lacks 'anchor'"):
        insert_rows(session, sa_table(Account), [{"site": "ch-a", "anchor": "1"}, {"site": "ch-a"}])


def test_a_sync_checkpoints_the_write_ahead_log_in_the_background(tmp_path: Path) -> None:
    """During a sync, commits leave the log's checkpoints to a thread (not to the commit that fills
    the log); afterwards connections checkpoint as usual and the log holds nothing left to copy."""
    store = open_store(f"sqlite:///{tmp_path}/ght.db")

    def autocheckpoint() -> int:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    assert autocheckpoint() == 10_000
    with store.checkpoints_in_background():
        assert autocheckpoint() == 0
        for batch in range(3):
            with store.session() as session:
                session.add(Site(code=f"ch-{batch}", name="x" * 100_000, finess="840000087"))
                session.commit()
    assert autocheckpoint() == 10_000
    # The database file alone (without its log) holds the commits: they were checkpointed (300 kB,
    # far below the 10,000 pages after which a commit would have checkpointed them itself).
    shutil.copyfile(tmp_path / "ght.db", tmp_path / "copy.db")
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("select count(*) from site").fetchone() == (3,)


def test_background_checkpoints_nest_for_a_scheduler_holding_them_across_runs(tmp_path: Path) -> None:
    """A scheduler holds the block for its whole life; a run's own block inside it changes nothing, so
    the run's last commits are checkpointed while the scheduler waits, not at the end of the run."""
    store = open_store(f"sqlite:///{tmp_path}/ght.db")

    def autocheckpoint() -> int:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())

    with store.checkpoints_in_background():
        for run in range(2):
            with store.checkpoints_in_background(), store.session() as session:
                session.add(Site(code=f"ch-{run}", name="x" * 100_000, finess="840000087"))
                session.commit()
            assert autocheckpoint() == 0  # still the scheduler's: the commits still leave it to the thread
        _wait_for_the_file_to_hold(tmp_path / "ght.db", 2)  # copied by the thread, while nothing runs
    assert autocheckpoint() == 10_000


def _sites_in_the_file(database: Path) -> int | None:
    """How many sites the database file holds without its log (None: the copy caught a checkpoint
    half-written, try again)."""
    copy = database.with_name("copy.db")
    shutil.copyfile(database, copy)
    with sqlite3.connect(copy) as connection, contextlib.suppress(sqlite3.DatabaseError):
        return int(connection.execute("select count(*) from site").fetchone()[0])
    return None


def _wait_for_the_file_to_hold(database: Path, sites: int) -> None:
    deadline = time.monotonic() + 10
    while _sites_in_the_file(database) != sites:
        assert time.monotonic() < deadline, "the log was not checkpointed in the background"
        time.sleep(0.05)


def test_a_schedulers_run_holds_its_checkpoints_until_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within `checkpoints_held` (a scheduler's run) the commits stay in the log; one checkpoint after
    the block copies them all. A log grown past the checkpoint size is checkpointed anyway, from the
    next commit on."""
    store = open_store(f"sqlite:///{tmp_path}/ght.db")
    database = tmp_path / "ght.db"
    with store.engine.connect() as connection:  # the schema, into the file
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    with store.checkpoints_in_background():
        with store.checkpoints_held():
            for site in range(2):
                with store.session() as session:
                    session.add(Site(code=f"ch-{site}", name="x" * 1000, finess="840000087"))
                    session.commit()
            time.sleep(0.5)  # a checkpoint after each commit takes milliseconds
            assert _sites_in_the_file(database) == 0
        _wait_for_the_file_to_hold(database, 2)
        monkeypatch.setattr(database_module, "_AUTOCHECKPOINT_PAGES", 10)
        with store.checkpoints_held(), store.session() as session:
            session.add(Site(code="ch-large", name="x" * 100_000, finess="840000087"))  # 25 pages
            session.commit()
            session.add(Site(code="ch-next", name="x", finess="840000087"))  # sees the long log
            session.commit()
            _wait_for_the_file_to_hold(database, 4)
