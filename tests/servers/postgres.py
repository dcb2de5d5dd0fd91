"""A private PostgreSQL cluster for the test suite.

Why private: the suite must not depend on (or pollute) a server someone else
started, and it must run the same on a laptop and in CI. One cluster is created with
``initdb`` in a throw-away directory, tuned for speed over durability (fsync off), and
listens on a free 127.0.0.1 port with trust authentication. Each test gets its own
database from :meth:`PostgresServer.create_database`.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is
created and run by the ``postgres`` system user (``runuser``), in a short directory
under the system temp dir that this user owns (pytest's own temp dirs are private to
root, and the Unix socket path must stay under ~100 bytes). Requires the Debian
package ``postgresql``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PostgresError", "PostgresServer", "find_postgres_bindir", "start_postgres"]

APT_HINT = "install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql"
SPEED_OPTIONS = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LIVE: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


class PostgresError(RuntimeError):
    """initdb, pg_ctl or a SQL command failed; the message includes the server log."""


def find_postgres_bindir() -> Path:
    """The ``bin`` directory of the newest installed PostgreSQL (Debian layout first, then PATH)."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name)) or (0,)

    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]
    candidates += [p.parent for p in Path("/usr/pgsql").parent.glob("pgsql-*/bin/pg_ctl")]
    if candidates:
        return max(candidates, key=lambda bindir: version(bindir / "pg_ctl"))
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {APT_HINT}")


def _free_port(host: str) -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A running private PostgreSQL cluster (superuser ``postgres``, trust auth)."""

    def __init__(self, workdir: Path, basedir: Path, bindir: Path, *, run_as: str | None) -> None:
        self.workdir = workdir
        self.basedir = basedir  # owned by the server's user: socket, log and PGDATA
        self.datadir = basedir / "data"  # PGDATA
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"
        self.run_as = run_as
        self.log_file = basedir / "server.log"
        self._owns_basedir = False
        self._databases: set[str] = set()

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` on this cluster."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children), from ``postmaster.pid``."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    @property
    def conninfo(self) -> str:
        """libpq connection string of the maintenance database, for psycopg."""
        return f"host={self.host} port={self.port} user={self.user} dbname=postgres"

    # ----------------------------------------------------------------- databases

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE (unique name unless given) and return its SQLAlchemy URL."""
        name = name or f"ght_test_{secrets.token_hex(6)}"
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        self.execute(f'CREATE DATABASE "{name}"')
        self._databases.add(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, even if connections are still open (a leaked pool must not block)."""
        if not _DB_NAME.match(name):
            raise ValueError(f"unsafe database name {name!r}")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._databases.discard(name)

    def execute(self, sql: str) -> None:
        """Run one statement in autocommit mode on the maintenance database."""
        import psycopg

        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.encode())
        except psycopg.Error as error:
            raise PostgresError(f"{sql}: {error}") from error

    # ----------------------------------------------------------------- lifecycle

    def _run(self, args: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the ``postgres`` user when we are root."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=timeout, cwd=self.basedir
        )

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str]) -> PostgresError:
        return PostgresError(
            f"{what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{self.log_tail()}"
        )

    def start(self) -> None:
        """pg_ctl start (waits until the server accepts connections)."""
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.basedir}",
                f"-c listen_addresses={self.host}",
                *SPEED_OPTIONS,
            ]
        )
        proc = self._run(
            ["pg_ctl", "-D", str(self.datadir), "-l", str(self.log_file), "-o", options, "-w", "start"]
        )
        if proc.returncode != 0:
            raise self._fail("pg_ctl start", proc)
        _LIVE.add(self)

    def stop(self) -> None:
        """pg_ctl stop -m fast (idempotent); keeps the data directory."""
        if not (self.datadir / "postmaster.pid").exists():
            return
        proc = self._run(["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop"])
        if proc.returncode != 0 and (self.datadir / "postmaster.pid").exists():
            raise self._fail("pg_ctl stop", proc)

    def cleanup(self) -> None:
        """Stop, keep a copy of the server log in ``workdir``, and remove the cluster files."""
        self.stop()
        if self.log_file.exists():
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_file, self.workdir / "postgres.log")
        if self._owns_basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)
        _LIVE.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "--- postgres log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} {self.datadir}>"


@atexit.register
def _stop_all() -> None:
    """Last resort: pg_ctl daemonizes, so a crashed run would otherwise leak clusters."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.cleanup()


def start_postgres(workdir: Path) -> PostgresServer:
    """initdb a private cluster, start it on a free 127.0.0.1 port and return it.

    ``workdir`` receives ``postgres.log`` on cleanup; the cluster itself lives in a
    directory the server's user owns (see the module docstring).
    """
    bindir = find_postgres_bindir()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_as: str | None = None
    basedir = Path(tempfile.mkdtemp(prefix="ght-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(basedir)
            raise PostgresError(f"running as root but there is no 'postgres' user; {APT_HINT}") from None
        if shutil.which("runuser") is None:
            shutil.rmtree(basedir)
            raise PostgresError("running as root but 'runuser' (util-linux) is missing")
        run_as = "postgres"
        os.chown(basedir, account.pw_uid, account.pw_gid)
    server = PostgresServer(workdir, basedir, bindir, run_as=run_as)
    server._owns_basedir = True
    try:
        proc = server._run(
            [
                "initdb", "-D", str(server.datadir), "--auth=trust", "-E", "UTF8",
                "--locale=C.UTF-8", "-U", "postgres", "--no-sync",
            ]
        )  # fmt: skip
        if proc.returncode != 0:
            raise server._fail("initdb", proc)
        for attempt in range(3):  # the free port may be taken by someone else meanwhile
            server.port = _free_port(server.host)
            try:
                server.start()
                break
            except PostgresError as error:
                if attempt == 2 or "already in use" not in str(error):
                    raise
        _wait_ready(server)
    except BaseException:
        server.cleanup()
        raise
    return server


def _wait_ready(server: PostgresServer, timeout: float = 10.0) -> None:
    """pg_ctl -w already waits; double-check over TCP since that is what the tests use."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.execute("SELECT 1")
            return
        except PostgresError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
