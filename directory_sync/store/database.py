"""Opening the territorial directory: an engine, sessions, and the schema kept by Alembic migrations.

SQLite (a file, the default) and PostgreSQL (by URL, in production) behave the same. A new, empty
database is created at the current schema; an existing one older than the code must be upgraded on
purpose (`ght db upgrade`), never behind an operator's back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from ..errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("ght.store")

#: The newest schema revision. Opening a directory already at it needs none of Alembic's machinery
#: (about a quarter of a second per `ght` process); tests/test_store.py checks it against the migrations.
SCHEMA_HEAD = "0010_account_state_index"


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: bulk applies touch several indexes at once
    # Checkpoint the write-ahead log every 10,000 pages (40 MiB), not 1,000: a checkpoint syncs the
    # database file, and at the default a delta run's small commits kept paying for them.
    cursor.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
    cursor.close()


_AUTOCHECKPOINT_PAGES = 10_000


class _Checkpointer(threading.Thread):
    """Checkpoints an SQLite database's write-ahead log whenever `wanted` is set, until `finish`."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="ght-checkpoint", daemon=True)
        self.engine = engine
        self.wanted = threading.Event()
        self._done = False
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with self.engine.connect() as connection:
                raw = connection.connection.driver_connection
                assert raw is not None
                while True:
                    self.wanted.wait()
                    self.wanted.clear()
                    last = self._done  # read before the checkpoint: it then covers every commit
                    # PASSIVE: copies what no reader still needs, never waits for the writer.
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if last:
                        return
        except BaseException as exc:  # reported by `finish`; the commits' work is not affected
            self.failure = exc

    def finish(self) -> None:
        self._done = True
        self.wanted.set()
        self.join()
        if self.failure is not None:
            log.warning("background checkpoint failed: %s", self.failure)


def _normalise_url(url: str) -> str:
    # "postgresql://" means psycopg 3 here: it is the driver we install.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Store:
    """The territorial directory behind one database URL."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        """`engine_options` go to SQLAlchemy's create_engine (a served gateway sizes its pool)."""
        self.url = _normalise_url(url)
        try:
            self.engine = create_engine(self.url, **engine_options)
        except (ArgumentError, ModuleNotFoundError) as exc:
            raise StoreError(f"database URL {url!r} is not usable: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._checkpointer: _Checkpointer | None = None  # the thread, while one runs (blocks nest)
        self._held = 0  # how many checkpoints_held blocks are open

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def checkpoints_in_background(self) -> Iterator[None]:
        """During the block, SQLite's write-ahead log is checkpointed by a thread of its own after
        each commit, instead of inside the commit that fills it (elsewhere: nothing changes).

        A checkpoint copies the log into the database file and syncs it: in a first sync of 100,000
        accounts, the site commits that ran them waited 1.1 s of their 1.9 s. In a thread (SQLite
        leaves the interpreter lock while it copies), the next site is read and planned meanwhile.
        The log is checkpointed once more before the block ends, so it leaves it as short as the
        commits' own checkpoints did. Blocks nest: a scheduler opens one for its whole life (its runs'
        last checkpoints are then done while it waits for the next run), and the runs' own blocks
        inside it change nothing.
        """
        if self.engine.dialect.name != "sqlite" or self._checkpointer is not None:
            yield
            return
        with self._checkpointing_thread():
            yield

    @contextmanager
    def checkpoints_held(self) -> Iterator[None]:
        """Within the block, the background checkpoints (`checkpoints_in_background`) wait for its end,
        unless the log has outgrown `_AUTOCHECKPOINT_PAGES` (seen as a commit starts: a large first
        run is not held); then one checkpoint covers all its commits.

        For a scheduler's runs: a checkpoint after each site's commit (eleven a delta run) took the
        second core from the reading process and from the directory servers while the run needed
        them; one checkpoint after the run is done while the scheduler waits for the next (a delta
        over ten sites: 0.201 s to 0.182 s, see benchmarks/README)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held and self._checkpointer is not None:
                self._checkpointer.wanted.set()

    def _log_pages(self) -> int:
        """The write-ahead log's length, in pages of 4 KiB."""
        try:
            return os.path.getsize(f"{self.engine.url.database}-wal") // 4096
        except OSError:
            return 0

    @contextmanager
    def _checkpointing_thread(self) -> Iterator[None]:
        checkpointer = _Checkpointer(self.engine)

        def no_autocheckpoint(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

        def autocheckpoint(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")

        def committed(_connection: Any) -> None:
            if not self._held or self._log_pages() > _AUTOCHECKPOINT_PAGES:
                checkpointer.wanted.set()

        event.listen(self.engine, "checkout", no_autocheckpoint)
        event.listen(self.engine, "checkin", autocheckpoint)
        event.listen(self.engine, "commit", committed)
        checkpointer.start()
        self._checkpointer = checkpointer
        try:
            yield
        finally:
            self._checkpointer = None
            checkpointer.finish()  # its connection goes back to the pool with the usual setting
            event.remove(self.engine, "checkout", no_autocheckpoint)
            event.remove(self.engine, "checkin", autocheckpoint)
            event.remove(self.engine, "commit", committed)

    # -- schema -------------------------------------------------------------------------------------

    def head_revision(self) -> str | None:
        """The newest schema revision(s) this version knows, comma-separated if branches exist."""
        from alembic.script import ScriptDirectory

        heads = ScriptDirectory.from_config(_alembic_config(self.engine)).get_heads()
        return ",".join(sorted(heads)) or None

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                heads = MigrationContext.configure(conn).get_current_heads()
        except OperationalError as exc:
            raise StoreError(f"cannot open the database {self.display_url}: {exc.orig}") from None
        return ",".join(sorted(heads)) or None

    def upgrade(self) -> tuple[str | None, str | None]:
        """Bring the schema to the newest revision. Safe to run twice. Returns (before, after)."""
        from alembic import command
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        before = self.current_revision()
        scripts = ScriptDirectory.from_config(_alembic_config(self.engine))
        known = {script.revision for script in scripts.walk_revisions()}
        if before is not None and not set(before.split(",")) <= known:
            raise StoreError(
                f"the database is at schema revision {before}, which this version of ght does not know "
                "(it was written by a newer version): refusing to touch it"
            )
        try:
            command.upgrade(_alembic_config(self.engine), "heads")
        except CommandError as exc:
            raise StoreError(f"cannot upgrade the schema of {self.display_url}: {exc}") from None
        return before, self.current_revision()

    def _recorded_revision(self) -> str | None:
        """The revision the database records, read with plain SQL (None if it records none or several)."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except DBAPIError:
            return None
        return rows[0] if len(rows) == 1 else None

    def ensure_schema(self) -> None:
        """Create the schema in an empty database; refuse to run on an outdated one."""
        if self._recorded_revision() == SCHEMA_HEAD:
            return
        current = self.current_revision()
        head = self.head_revision()
        if current == head:
            return
        if current is None:
            with self.engine.connect() as conn:
                tables = inspect(conn).get_table_names()
            if tables and "alembic_version" not in tables:
                raise StoreError(
                    f"the database {self.display_url} already holds other tables "
                    f"({', '.join(sorted(tables)[:3])}...): give ght a database of its own"
                )
            self.upgrade()
            return
        raise StoreError(
            f"the database schema is at revision {current}, this version needs {head}: run `ght db upgrade`"
        )


def open_store(url: str, *, create: bool = True, **engine_options: Any) -> Store:
    """The store at `url`, with its schema checked (and created if the database is empty)."""
    store = Store(url, **engine_options)
    if create:
        store.ensure_schema()
    return store
