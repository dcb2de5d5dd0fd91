"""Shared fixtures: real slapd and PostgreSQL servers (the logic lives in tests/servers/)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.servers` must be importable however pytest is launched (`pytest` or `python -m pytest`).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from directory_sync.logs import QUIET_LOGGERS  # noqa: E402
from tests.servers.logscan import LOG_DIR_ENV, SECRETS, SecretsRegistry  # noqa: E402
from tests.servers.postgres import PostgresServer, start_postgres  # noqa: E402
from tests.servers.samba import SambaDC, samba_unavailable, start_samba_dc  # noqa: E402
from tests.servers.slapd import SlapdFactory, SlapdServer, Suffix, start_slapd  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def test_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's log folder ($GHT_TEST_LOG_DIR, inherited by every process the tests start): the
    gateways' logs, `ght`'s standard error, and this process's own log records (INFO and up) go there;
    tests/test_zz_log_secrets.py scans it for the registered secrets (tests/servers/logscan.py)."""
    directory = Path(os.environ.get(LOG_DIR_ENV) or tmp_path_factory.mktemp("logs"))
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[LOG_DIR_ENV] = str(directory)
    handler = logging.FileHandler(directory / f"pytest-{os.getpid()}.log", encoding="utf-8")
    handler.setLevel(logging.INFO)
    # As `ght` and the gateway log them (directory_sync/logs.py): httpx's request lines (full URLs,
    # here mostly the tests' own client's) only from WARNING up.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(QUIET_LOGGERS))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        root.setLevel(logging.INFO)
    yield directory
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()


@pytest.fixture(scope="session")
def secrets_registry() -> SecretsRegistry:
    """`secrets_registry.add(value)`: a secret a test used, never to be found in any log."""
    return SECRETS


@pytest.fixture
def slapd_factory(tmp_path: Path) -> Iterator[SlapdFactory]:
    """Start private slapd instances: ``slapd_factory([Suffix(...)], syncprov=..., ...)``.

    Each instance gets its own directory under ``tmp_path``; all are stopped at teardown.
    """
    servers: list[SlapdServer] = []

    def factory(suffixes: list[Suffix], **kwargs: Any) -> SlapdServer:
        server = start_slapd(tmp_path / f"slapd{len(servers)}", suffixes, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def samba_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], SambaDC]]:
    """Provision private Samba AD DCs for a test module: ``samba_factory("CHNIMES.TEST")`` (about 5 s
    each; share one per module). Skipped, with the reason, where Samba cannot run (not root, not
    installed). All are stopped at the module's end."""
    reason = samba_unavailable()
    if reason:
        pytest.skip(reason)
    dcs: list[SambaDC] = []

    def factory(realm: str) -> SambaDC:
        dc = start_samba_dc(tmp_path_factory.mktemp(f"samba-{realm.split('.')[0].lower()}"), realm)
        dcs.append(dc)
        return dc

    yield factory
    for dc in dcs:
        dc.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the whole run (started on first use only)."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database; tests using it run against both stores."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ght.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url.rsplit("/", 1)[1])
