"""Scheduled syncs and run locks: two runs of one site never overlap, across processes (and hosts
sharing one PostgreSQL); a run that finds the lock taken is skipped and says who holds it.

Every `ght` here is a separate process; the lock is a file lock on SQLite and an advisory lock on
PostgreSQL (each test runs against both through `database_url`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col

from directory_sync.locking import SiteBusy, site_lock
from directory_sync.store import SyncRun, open_store
from tests.ad_sites import ROOT, ght, ght_command, ght_env, password_file
from tests.hospitals import ldap_connection, person, suffix_ldif, write_config, write_site
from tests.servers.slapd import SlapdServer, Suffix

SUFFIX = "dc=ch-orange,dc=fr"


@pytest.fixture
def ght_dir(tmp_path: Path, database_url: str) -> Path:
    """Two hospitals: ch-orange (an LDIF export) and ch-valreas (another), on the test's database."""
    for code in ("ch-orange", "ch-valreas"):
        suffix = f"dc={code},dc=fr"
        export = suffix_ldif(
            tmp_path / f"{code}.ldif",
            suffix,
            [person(suffix, "pgarcia", "Garcia", "Paul", title="Infirmier")],
        )
        write_site(tmp_path, code, {"kind": "ldif", "path": str(export), "anchor": "dn"})
    write_config(tmp_path, ["ch-orange", "ch-valreas"], database_url)
    return tmp_path


def sites_of(output: str) -> dict[str, dict[str, Any]]:
    return {s["site"]: s for s in json.loads(output)["sites"]}


def test_a_run_finding_its_site_locked_skips_it_and_says_who_holds_it(
    ght_dir: Path, database_url: str
) -> None:
    store = open_store(database_url)
    with site_lock(store, "ch-orange"):
        done = ght("sync", "run", "--json", cwd=ght_dir)
    assert done.returncode == 0, done.stderr  # skipping is not a failure: the site is being synchronised
    sites = sites_of(done.stdout)
    assert sites["ch-orange"]["status"] == "skipped"
    assert f"ght sync ch-orange on {socket.gethostname()} pid {os.getpid()}" in sites["ch-orange"]["error"]
    assert sites["ch-valreas"]["status"] == "succeeded"  # the other site is not held up
    assert "skipped: site ch-orange: another sync of this site is running" in done.stderr
    with store.session() as session:  # the holder's run is not taken for an interrupted one
        assert [r.site for r in session.execute(select(SyncRun)).scalars()] == ["ch-valreas"]

    done = ght("sync", "run", "--json", "--site", "ch-orange", cwd=ght_dir)
    assert sites_of(done.stdout)["ch-orange"]["status"] == "succeeded"


def test_a_lock_held_by_a_process_that_was_killed_is_free_again(ght_dir: Path, database_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from directory_sync.locking import site_lock\n"
            "from directory_sync.store import open_store\n"
            "with site_lock(open_store(sys.argv[1]), 'ch-orange'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            database_url,
        ],
        cwd=ROOT,
        env=ght_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SiteBusy), site_lock(open_store(database_url), "ch-orange"):
            pass
        holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel or the server must release it
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:  # PostgreSQL notices the lost connection a moment later
            try:
                with site_lock(open_store(database_url), "ch-orange"):
                    break
            except SiteBusy:
                assert time.monotonic() < deadline, "the killed holder's lock was never released"
                time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_started_together_never_overlap(
    tmp_path: Path, slapd_factory: Any, database_url: str
) -> None:
    """The first run is stuck reading (its server paused); the second, from another process, skips."""
    server: SlapdServer = slapd_factory(
        [
            Suffix(
                SUFFIX,
                suffix_ldif(tmp_path / "orange.ldif", SUFFIX, [person(SUFFIX, "pgarcia", "Garcia", "Paul")]),
            )
        ]
    )
    secret = password_file(tmp_path, server.reader_password)
    write_site(
        tmp_path, "ch-orange", ldap_connection(server, SUFFIX, "UNUSED", bind_password=secret, timeout=20)
    )
    write_config(tmp_path, ["ch-orange"], database_url)
    store = open_store(database_url)
    server.pause()
    first = subprocess.Popen(
        ght_command("sync", "run", "--json"), cwd=tmp_path, env=ght_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not _running(store, "ch-orange"):  # the first run holds the lock once its run is recorded
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started"
            time.sleep(0.1)
        second = ght("sync", "run", "--json", cwd=tmp_path)
        assert sites_of(second.stdout)["ch-orange"]["status"] == "skipped"
    finally:
        server.resume()
    out, _ = first.communicate(timeout=60)
    assert sites_of(out)["ch-orange"]["status"] == "succeeded"
    with store.session() as session:
        assert [r.status for r in session.execute(select(SyncRun)).scalars()] == ["succeeded"]


def _running(store: Any, site: str) -> bool:
    with store.session() as session:
        return (
            session.execute(
                select(SyncRun).where(col(SyncRun.site) == site, col(SyncRun.status) == "running")
            ).first()
            is not None
        )


def test_sync_every_runs_deltas_on_schedule_until_sigterm(tmp_path: Path, slapd_factory: Any) -> None:
    server: SlapdServer = slapd_factory(
        [
            Suffix(
                SUFFIX,
                suffix_ldif(tmp_path / "orange.ldif", SUFFIX, [person(SUFFIX, "pgarcia", "Garcia", "Paul")]),
            )
        ]
    )
    secret = password_file(tmp_path, server.reader_password)
    write_site(tmp_path, "ch-orange", ldap_connection(server, SUFFIX, "UNUSED", bind_password=secret))
    database_url = f"sqlite:///{tmp_path}/ght.db"
    write_config(tmp_path, ["ch-orange"], database_url)
    scheduler = subprocess.Popen(
        ght_command("sync", "run", "--every", "1s", "--json"),
        cwd=tmp_path,
        env=ght_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = open_store(database_url)
        deadline = time.monotonic() + 60
        while len(_finished(store)) < 3:
            assert scheduler.poll() is None, scheduler.communicate()
            assert time.monotonic() < deadline, "fewer than three runs in a minute"
            time.sleep(0.2)
        scheduler.send_signal(signal.SIGTERM)
        _, err = scheduler.communicate(timeout=30)
    finally:
        scheduler.kill()
    assert scheduler.returncode == 0, err
    assert "stopped after" in err
    runs = _finished(store)
    assert runs[:3] == [("full", "succeeded"), ("delta", "succeeded"), ("delta", "succeeded")]


def _finished(store: Any) -> list[tuple[str, str]]:
    with store.session() as session:
        return [
            (r.mode, r.status)
            for r in session.execute(
                select(SyncRun).where(col(SyncRun.finished_at).is_not(None)).order_by(col(SyncRun.id))
            ).scalars()
        ]


@pytest.mark.parametrize("interval", ["10x", "0s", "ten minutes"])
def test_an_interval_ght_cannot_read_is_refused_before_anything_runs(tmp_path: Path, interval: str) -> None:
    done = ght("sync", "run", "--every", interval, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "--every" in done.stderr
