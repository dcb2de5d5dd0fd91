"""Helpers for the AD, delta and scheduling tests: Active Directory hospitals' mapping files, a
snapshot to compare two territorial directories (the same sources synchronised by full and by delta
runs), and `ght` run as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from directory_sync.store import Account, AccountState, Affiliation, Person, Store
from tests.hospitals import write_site
from tests.servers.logscan import record_cli
from tests.servers.samba import SambaDC

#: How these hospitals store their staff in AD: RPPS in employeeID, local job title in title.
AD_ATTRIBUTES: dict[str, Any] = {
    "login": "sAMAccountName",
    "family_name": {"from": "sn", "transforms": ["trim", "name_case"]},
    "given_name": {"from": "givenName", "transforms": ["trim", "name_case"]},
    "email": {"from": "mail", "transforms": ["trim", "lower"]},
    "rpps": {"from": "employeeID", "transforms": ["digits"]},
    "profession": {"from": "title", "transforms": ["trim", "lower", {"map": "job_titles"}]},
    "title": {"from": "title", "transforms": ["trim"]},
    "department": "department",
    "employee_id": "employeeNumber",
}
ROLES = {"GG-Medecins": "medecin", "GG-Urgentistes": "urgentiste", "GG-Cadres": "cadre"}


def ad_connection(dc: SambaDC, base_dn: str, *, ldaps: bool = False, **extra: Any) -> dict[str, Any]:
    """A `connection:` block for a test DC, reading as the ordinary `ght-sync` domain user (its password
    in a file, as systemd credentials or a Kubernetes Secret would hand it over)."""
    connection: dict[str, Any] = {
        "kind": "active_directory",
        "url": dc.ldaps_url if ldaps else dc.url,
        "bind_dn": dc.reader,
        "bind_password": {"file": str(dc.reader_password_file)},
        "base_dn": base_dn,
        "page_size": 1000,
        "timeout": 10,
        **extra,
    }
    if ldaps:
        connection["tls"] = {"ca_file": str(dc.ca_file)}
    return connection


def write_ad_site(
    directory: Path,
    code: str,
    connection: dict[str, Any],
    *,
    roles: dict[str, Any] | None = None,
    finess: str = "300780038",
) -> Path:
    """Write mappings/<code>.yaml for an AD hospital (AD_ATTRIBUTES, and `roles:` when given)."""
    path = write_site(directory, code, connection, finess=finess)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["attributes"] = AD_ATTRIBUTES
    if roles is not None:
        document["roles"] = roles
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def directory_snapshot(store: Store) -> dict[str, Any]:
    """The territorial directory as its users see it, without generated ids and timestamps.

    Accounts are keyed by site and anchor; people and affiliations by the anchors of their accounts
    (person ids are random, territorial logins depend on creation order).
    """
    with store.session() as session:
        accounts = list(session.execute(select(Account)).scalars())
        people = list(session.execute(select(Person)).scalars())
        affiliations = list(session.execute(select(Affiliation)).scalars())
    anchors: dict[str, set[str]] = defaultdict(set)
    for a in accounts:
        anchors[a.person_id].add(f"{a.site}/{a.anchor}")
    key = {person_id: " ".join(sorted(values)) for person_id, values in anchors.items()}
    return {
        "accounts": {
            f"{a.site}/{a.anchor}": {
                "dn": a.dn.lower(),
                "login": a.login,
                "state": a.state,
                "attributes": a.attributes,
                "facts": a.facts,
            }
            for a in accounts
        },
        "people": {
            key[p.id]: (p.family_name, p.given_name, p.email, p.rpps, p.status) for p in people if p.id in key
        },
        "affiliations": {
            f"{key[f.person_id]} @ {f.site}": (
                f.profession,
                f.department,
                f.title,
                f.employee_id,
                f.roles,
                f.active,
            )
            for f in affiliations
            if f.person_id in key
        },
    }


def assert_same_directory(left: Store, right: Store) -> None:
    """The two territorial directories are the same, as their users see them."""
    problems = differences(directory_snapshot(left), directory_snapshot(right))
    assert not problems, "\n".join(problems)


def active_logins(store: Store, site: str) -> dict[str, str]:
    """login -> account state, for the accounts of `site` not deleted."""
    with store.session() as session:
        rows = session.execute(
            select(Account.login, Account.state).where(
                Account.site == site, Account.state != AccountState.DELETED
            )
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def differences(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    """What differs between two `directory_snapshot`s, one line per key (empty when they are the same)."""
    lines = []
    for section in left.keys() | right.keys():
        a, b = left.get(section, {}), right.get(section, {})
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                lines.append(f"{section} {key}: {a.get(key)!r} != {b.get(key)!r}")
    return lines


def password_file(directory: Path, password: str) -> dict[str, str]:
    """A `bind_password:` naming a file that holds `password`."""
    path = directory / "bind.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return {"file": str(path)}


ROOT = Path(__file__).resolve().parents[1]


def ght_command(*args: str) -> list[str]:
    """The command line of `ght ARGS` (the console script's code, `cli.main`)."""
    return [sys.executable, "-c", "import cli; cli.main()", *args]


def ght_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def ght(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `ght ARGS` in a fresh process, as IT staff (or cron) would (its stderr kept with the logs)."""
    done = subprocess.run(
        ght_command(*args), cwd=cwd, capture_output=True, text=True, env=ght_env(), timeout=timeout
    )
    record_cli(args, done.stderr)
    return done
