"""Killing `ght sync run` at any moment loses nothing and duplicates nothing; the next run converges.

A synthetic GHT (three hospitals' LDIF exports) is synchronised once without interruption, as the
reference. Then, into another database, `ght sync run` is started and killed with SIGKILL at random
moments, many times, before a run is allowed to finish: the directory must be the reference's (the
same people, grouping the same accounts, with the same logins, affiliations and review cases).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from directory_sync.synthetic import SiteSpec, generate

ROOT = Path(__file__).resolve().parents[1]


def write_ght(directory: Path, database: Path) -> Path:
    ght = generate(seed=3, sites=3, accounts=4500)
    for spec in ght.sites:
        ght.write_ldif(spec.code, directory / f"{spec.code}.ldif")

    def connection_for(spec: SiteSpec) -> dict[str, Any]:
        return {"kind": "ldif", "path": str(directory / f"{spec.code}.ldif")}

    ght.write_mappings(directory / "mappings", connection_for)
    (directory / "mappings" / "codes").mkdir(exist_ok=True)
    (directory / "mappings" / "codes" / "g15.yaml").write_text((ROOT / "mappings/codes/g15.yaml").read_text())
    config = directory / "ght.toml"
    quoted = ", ".join(f'"{s.code}"' for s in ght.sites)
    config.write_text(
        f'database_url = "sqlite:///{database}"\nmappings_dir = "mappings"\nsites = [{quoted}]\n'
    )
    return config


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import cli; cli.main()", "--config", str(config), "sync", "run", "--json"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def snapshot(database: Path) -> set[tuple[Any, ...]]:
    """The directory without its random ids: each person as the accounts it groups, and what it holds."""
    with sqlite3.connect(database) as db:
        accounts: dict[str, list[str]] = {}
        for person_id, site, anchor, state in db.execute(
            "select person_id, site, anchor, state from account"
        ):
            accounts.setdefault(person_id, []).append(f"{site}/{anchor}/{state}")
        affiliations: dict[str, list[str]] = {}
        for person_id, site, active, primary, profession in db.execute(
            'select person_id, site, active, "primary", profession from affiliation'
        ):
            affiliations.setdefault(person_id, []).append(f"{site}/{active}/{primary}/{profession}")
        reviews = {person_id for (person_id,) in db.execute("select person_id from reviewcase")}
        return {
            (
                tuple(sorted(accounts.get(pid, []))),
                tuple(sorted(affiliations.get(pid, []))),
                login,
                family,
                status,
                pid in reviews,
            )
            for pid, login, family, status in db.execute("select id, login, family_name, status from person")
        }


def test_sigkill_at_random_moments_then_a_full_run_converges_to_the_reference(tmp_path: Path) -> None:
    reference_db = tmp_path / "reference.db"
    (tmp_path / "reference").mkdir()
    reference = start(write_ght(tmp_path / "reference", reference_db))
    started = time.monotonic()
    assert reference.wait(timeout=300) == 0
    duration = time.monotonic() - started

    killed_db = tmp_path / "killed.db"
    (tmp_path / "killed").mkdir()
    config = write_ght(tmp_path / "killed", killed_db)
    rng = random.Random(20261123)
    kills = 0
    for _ in range(10):
        process = start(config)
        time.sleep(rng.uniform(0.2, duration))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    assert kills >= 5, "the runs finished before they could be killed: make the GHT bigger"

    final = start(config)
    assert final.wait(timeout=300) == 0
    expected = snapshot(reference_db)
    assert snapshot(killed_db) == expected
    with sqlite3.connect(killed_db) as db:
        logins = [login for (login,) in db.execute("select login from person")]
        assert len(logins) == len(set(logins))  # nothing duplicated
        statuses = dict(db.execute("select status, count(*) from syncrun group by status").fetchall())
    assert statuses.get("running", 0) == 0  # interrupted runs are recorded as such by the next run
