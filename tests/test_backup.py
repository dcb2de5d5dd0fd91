"""Backup and restore of the territorial directory, as deploy/README.md tells operators to do them.

The demo GHT is synchronised into a database (SQLite file, or PostgreSQL), a signing key and a client
are added, a backup is taken while the store is open (SQLite: the online backup API, what
`sqlite3 ght.db ".backup ..."` does; PostgreSQL: `pg_dump --format=custom`), and restored into a FRESH
database (a new file; `pg_restore` into a new, empty database). The restored directory must hold the
same people, links, affiliations, review cases, audit trail, clients and signing keys, row for row; the
same key-encryption key must open its signing key; `ght db upgrade` must find nothing to do; and a sync
on it must change nothing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from directory_sync.config import Settings, load_settings
from directory_sync.store import Account, Person, Store, open_store
from directory_sync.sync import run_sync
from sso_gateway import Gateway
from sso_gateway.keys import KeyStore
from tests.servers.logscan import record_cli
from tests.servers.postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "deploy" / "demo" / "ght.toml"
KEK_VARIABLE = "GHT_TEST_BACKUP_KEK"


def _settings(database_url: str) -> Settings:
    return load_settings(
        DEMO_CONFIG,
        database_url=database_url,
        gateway={"issuer": "http://127.0.0.1:8000", "key_encryption_key": {"env": KEK_VARIABLE}},
    )


def _dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order (alembic_version included)."""
    metadata = MetaData()
    metadata.reflect(store.engine)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            order = list(table.primary_key.columns) or list(table.columns)
            rows[name] = [tuple(row) for row in conn.execute(select(table).order_by(*order))]
    return rows


def _people_and_links(store: Store) -> tuple[dict[str, str | None], dict[tuple[str, str], str]]:
    with store.session() as session:
        people = {p.id: p.login for p in session.execute(select(Person)).scalars()}
        links = {(a.site, a.login): a.person_id for a in session.execute(select(Account)).scalars()}
    return people, links


def _backup_sqlite(database_url: str, backup: Path) -> None:
    """The online backup API: a consistent copy of a live database (WAL included), page by page."""
    source = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    target = sqlite3.connect(backup)
    try:
        with target:
            source.backup(target)
    finally:
        target.close()
        source.close()


def _pg(server: PostgresServer, program: str, *args: str) -> None:
    proc = subprocess.run(
        [str(server.bindir / program), "-h", server.host, "-p", str(server.port), "-U", server.user, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{program} failed: {proc.stderr}"


def _backup_and_restore(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Back the database up, restore it into a fresh one, return the fresh one's URL."""
    if database_url.startswith("sqlite"):
        backup = tmp_path / "backup" / "ght-backup.db"
        backup.parent.mkdir()
        _backup_sqlite(database_url, backup)
        restored = tmp_path / "restored" / "ght.db"
        restored.parent.mkdir()
        restored.write_bytes(backup.read_bytes())  # restoring is putting the copy in place
        return f"sqlite:///{restored}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database = database_url.rsplit("/", 1)[1]
    dump = tmp_path / "ght.dump"
    _pg(server, "pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={dump}", database)
    fresh_url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(fresh_url.rsplit("/", 1)[1]))
    fresh = fresh_url.rsplit("/", 1)[1]
    _pg(
        server,
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        f"--dbname={fresh}",
        str(dump),
    )
    return fresh_url


def _ght(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GHT_DATABASE_URL": database_url}
    env.pop("GHT_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "--config", str(DEMO_CONFIG), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )
    record_cli(args, done.stderr)  # its log lines, scanned for secrets (tests/test_zz_log_secrets.py)
    return done


def test_backup_restores_people_links_and_keys(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEK_VARIABLE, "a-key-encryption-key-for-the-backup-test-only")
    settings = _settings(database_url)
    store = open_store(database_url)
    results = run_sync(settings, store)
    assert all(r.ok for r in results) and sum(r.created for r in results) > 40
    gateway = Gateway(settings, store)
    first = gateway.keys.rotate(publish_delay=0)
    second = gateway.keys.rotate(publish_delay=3600)  # one signing, one published before it signs
    client = gateway.clients.add("DPI", redirect_uris=["https://dpi.ght.example/oidc/callback"])
    assert client.secret
    before = _dump(store)
    people, links = _people_and_links(store)
    assert len(people) > 40 and len(links) > len(people)  # some people work at several sites

    restored_url = _backup_and_restore(database_url, tmp_path, request)
    assert restored_url != database_url
    store.engine.dispose()

    restored = open_store(restored_url, create=False)
    # Same people (ids and territorial logins), same links (account -> person), and every other row.
    assert _people_and_links(restored) == (people, links)
    after = _dump(restored)
    assert sorted(after) == sorted(before)
    for table in before:
        assert after[table] == before[table], f"table {table} differs after restore"
    assert before["gateway_signing_key"] and before["gateway_client"]

    # The same KEK opens the restored signing key; the JWKS is the same.
    keys = KeyStore(restored, settings.gateway)  # type: ignore[arg-type]
    assert keys.signing_key()[0] == first.kid
    assert {k["kid"] for k in keys.jwks()["keys"]} == {first.kid, second.kid}
    assert keys.jwks() == gateway.keys.jwks()

    # `ght db upgrade` on the restored database: already current, nothing to do.
    revision = restored.current_revision()
    upgrade = _ght(restored_url, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "already at revision" in upgrade.stdout
    assert restored.current_revision() == revision == restored.head_revision()

    # The restored directory is live: a sync finds nothing to change (and can write its run records).
    again = run_sync(_settings(restored_url), restored)
    assert all(r.ok for r in again)
    assert sum(r.created + r.linked + r.updated + r.closed + r.suspended for r in again) == 0
    assert _people_and_links(restored) == (people, links)
    restored.engine.dispose()


def test_a_backup_without_its_key_encryption_key_signs_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why deploy/README.md says to keep the KEK apart from, and as safely as, the backups."""
    database_url = f"sqlite:///{tmp_path}/ght.db"
    monkeypatch.setenv(KEK_VARIABLE, "the-original-key-encryption-key-0001")
    settings = _settings(database_url)
    store = open_store(database_url)
    Gateway(settings, store).keys.rotate(publish_delay=0)
    restored_url = _backup_and_restore(database_url, tmp_path, request)
    monkeypatch.setenv(KEK_VARIABLE, "another-key-encryption-key-00000002")
    keys = KeyStore(open_store(restored_url, create=False), _settings(restored_url).gateway)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="another key-encryption key"):
        keys.signing_key()
