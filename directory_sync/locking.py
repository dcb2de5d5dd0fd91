"""Run locks: two syncs of the same site never overlap, from two processes or from two hosts.

A sync reads a site, plans against the directory, then applies; two runs of one site at once would
plan against the same state and apply twice (and the second would take the first for an interrupted
run). So every run that writes holds its site's lock from before it records its start until it ends.

- **PostgreSQL**: a session-level advisory lock (`pg_try_advisory_lock`) on a connection of its own,
  held for the whole run. Every host that shares the database shares the lock, and the server releases
  it when the holder's connection ends, so a killed process or a dead host never leaves a site locked.
  The holder names itself in `application_name`, so that the run that finds the lock taken can say who
  holds it.
- **SQLite** (one host by nature): an exclusive `flock` on `<database>.locks/<site>.lock`, released by
  the kernel when the holder exits; the holder writes its host, pid and start time in the file.

A run that finds its site's lock taken does not wait: it is skipped with `SiteBusy`, which says who
holds the lock. The next scheduled run will pick up whatever changed meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from .errors import GhtError
from .store import Store


class SiteBusy(GhtError):
    """Another run of the same site holds its lock: this run is skipped, nothing is changed."""

    exit_code = 0  # not a failure: the site is being synchronised, by the other run

    def __init__(self, site: str, holder: str) -> None:
        self.site = site
        self.holder = holder
        super().__init__(f"site {site}: another sync of this site is running ({holder}): skipped")


def lock_key(site: str) -> int:
    """The advisory lock key of a site: a signed 64-bit digest of a name no other software uses."""
    digest = hashlib.blake2b(f"ght-federation sync {site}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _holder_name(site: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"ght sync {site} on {socket.gethostname()} pid {os.getpid()} since {when}"


@contextlib.contextmanager
def site_lock(store: Store, site: str) -> Iterator[None]:
    """Hold the run lock of `site` for the duration of the block; raise `SiteBusy` if it is taken."""
    dialect = store.engine.dialect.name
    if dialect == "postgresql":
        with _advisory_lock(store, site):
            yield
    elif dialect == "sqlite":
        with _file_lock(store, site):
            yield
    else:  # pragma: no cover - the store only opens SQLite and PostgreSQL
        raise NotImplementedError(f"no run lock for {dialect}")


@contextlib.contextmanager
def _advisory_lock(store: Store, site: str) -> Iterator[None]:
    key = lock_key(site)
    connection = store.engine.connect()
    try:
        connection.execute(_SET_NAME, {"name": _holder_name(site)})
        if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one():
            raise SiteBusy(site, _advisory_holder(connection, key))
        connection.commit()  # ends the implicit transaction; a session-level lock outlives it
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.execute(_SET_NAME, {"name": ""})
                connection.commit()
            except SQLAlchemyError:
                connection.invalidate()  # the session is gone, and its lock with it
    finally:
        connection.close()


_SET_NAME = text("SELECT set_config('application_name', :name, false)")


def _advisory_holder(connection: Connection, key: int) -> str:
    """Who holds advisory lock `key`, from pg_locks and pg_stat_activity (as far as we may see)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    row = connection.execute(
        text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low "
            "AND l.objsubid = 1"
        ),
        {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
    ).first()
    connection.rollback()
    if row is None or not row.application_name:
        return "PostgreSQL advisory lock held by another session"
    where = f", connected from {row.client_addr}" if row.client_addr else ""
    return f"{row.application_name}{where}"


# In-process locks for SQLite databases that have no file (":memory:").
_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_GUARD = threading.Lock()


@contextlib.contextmanager
def _file_lock(store: Store, site: str) -> Iterator[None]:
    database = store.engine.url.database
    if not database or database == ":memory:":
        with _MEMORY_GUARD:
            lock = _MEMORY_LOCKS.setdefault(site, threading.Lock())
        if not lock.acquire(blocking=False):
            raise SiteBusy(site, "another run in this process")
        try:
            yield
        finally:
            lock.release()
        return
    path = lock_file(Path(database), site)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown holder"
            raise SiteBusy(site, f"{holder}; lock file {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_name(site) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_file(database: Path, site: str) -> Path:
    """The lock file of `site` for the SQLite database file `database`."""
    return database.with_name(database.name + ".locks") / f"{site}.lock"
