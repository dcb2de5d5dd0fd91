"""Where the test suite's logs go, and the secrets they must never contain.

Every log the suite's processes write lands in one directory, `$GHT_TEST_LOG_DIR` (a session folder
that tests/conftest.py creates): the gateway processes' output (tests/servers/gateway.py), the
standard error of `ght` runs (`record_cli`), and the test process's own log records. The secrets the
tests use are registered here as they are made: fixed ones (the clinicians' password), random ones
(slapd and Samba passwords, key-encryption keys, client secrets, authorization codes, tokens).
tests/test_zz_log_secrets.py, collected last, scans the folder for every registered secret.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

LOG_DIR_ENV = "GHT_TEST_LOG_DIR"
#: Shorter values would match by chance (and are no secret worth the name).
MIN_SECRET_LENGTH = 8


class SecretsRegistry:
    """The secrets the tests used (in this process), to look for in the logs."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str | None) -> str | None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            with self._lock:
                self._values.add(value)
        return value

    def values(self) -> set[str]:
        with self._lock:
            return set(self._values)


#: The session's registry (one per pytest process).
SECRETS = SecretsRegistry()


def log_dir() -> Path | None:
    value = os.environ.get(LOG_DIR_ENV)
    return Path(value) if value else None


def log_file(name: str, fallback: Path) -> Path:
    """`name` in the session's log folder (else in `fallback`, outside a test session)."""
    directory = log_dir() or fallback
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def record_cli(args: Iterable[str], stderr: str | None) -> None:
    """Keep a `ght` run's standard error (its log lines) with the session's logs."""
    directory = log_dir()
    if directory is None or not stderr:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"ght-cli-{os.getpid()}.log").open("a", encoding="utf-8") as file:
        file.write(f"$ ght {' '.join(args)}\n{stderr}\n")


@dataclass(frozen=True)
class Finding:
    file: Path
    line: int
    form: str  # how the secret appeared: as is, or URL-encoded

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: a registered secret ({self.form})"


def _forms(secret: str) -> dict[str, str]:
    forms = {"verbatim": secret, "url-encoded": quote(secret, safe=""), "form-encoded": quote_plus(secret)}
    return {name: value for name, value in forms.items() if name == "verbatim" or value != secret}


def scan(directory: Path, secrets: Iterable[str]) -> list[Finding]:
    """Every line of every file under `directory` that holds one of `secrets` (never says which)."""
    wanted = [
        (name, form) for s in secrets if len(s) >= MIN_SECRET_LENGTH for name, form in _forms(s).items()
    ]
    findings: list[Finding] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace")
        for name, form in wanted:
            if form not in text:  # one search of the whole file; lines only for a hit
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if form in line:
                    findings.append(Finding(path, number, name))
    return findings
