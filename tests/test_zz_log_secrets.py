"""No secret or password in any log line: the logs of this whole test session, scanned last.

Named to be collected last (pytest collects test files in name order): by the time it runs, every
gateway process, `ght` command and in-process component of the session has written its logs into the
session's log folder ($GHT_TEST_LOG_DIR, tests/conftest.py), and every secret the tests used is
registered (tests/servers/logscan.py): the clinicians' password and any other password typed at the
sign-in page, slapd's and Samba's passwords, the key-encryption keys, client secrets, authorization
codes, access, refresh and ID tokens. Run alone or with any subset of the suite, it scans whatever the
session produced. The scanner itself is shown to find a planted secret.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.servers.gateway import PASSWORD
from tests.servers.logscan import SECRETS, SecretsRegistry, log_dir, scan


def test_the_scanner_finds_a_planted_secret(tmp_path: Path) -> None:
    registry = SecretsRegistry()
    planted = registry.add(f"planted-{secrets.token_urlsafe(16)}")
    spaced = registry.add("a pass phrase with spaces")
    registry.add("short")  # too short to be told from chance: not registered
    assert planted is not None and spaced is not None and len(registry.values()) == 2
    (tmp_path / "nested").mkdir()
    (tmp_path / "clean.log").write_text("nothing to see\n" * 50)
    (tmp_path / "nested" / "gateway.log").write_text(
        f'{{"message": "ok"}}\n{{"message": "bind as x with {planted} failed"}}\n'
    )
    (tmp_path / "cli.log").write_text("GET /cb?password=a+pass+phrase+with+spaces\nshort\n")
    findings = scan(tmp_path, registry.values())
    assert sorted((f.file.name, f.line, f.form) for f in findings) == [
        ("cli.log", 1, "form-encoded"),
        ("gateway.log", 2, "verbatim"),
    ]
    assert planted not in str(findings[0]) + str(findings[1])  # a finding never repeats the secret
    assert scan(tmp_path, {"not-there-at-all"}) == []


def test_no_registered_secret_in_any_log_of_this_session(test_log_dir: Path) -> None:
    assert log_dir() == test_log_dir
    registered = SECRETS.values()
    assert PASSWORD in registered  # registered on import, whatever ran before
    findings = scan(test_log_dir, registered)
    assert findings == [], "\n".join(str(f) for f in findings)
