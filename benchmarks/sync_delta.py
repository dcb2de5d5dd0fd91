"""Delta sync cost: a delta run after 1% of accounts changed, against a full run over the same changes.

Two sources, each measured the same way, on this machine:

- **OpenLDAP**: the seeded synthetic GHT (`directory_sync.synthetic`: default 10 hospitals, 100,000
  accounts) in one private slapd with syncprov (one database per hospital); delta by syncrepl.
- **Active Directory**: one hospital of at least 10,000 users in a private Samba AD DC (added over LDAP,
  without passwords), with nested role groups; delta by uSNChanged. Needs root (Samba); skipped
  otherwise, with the reason.

For each: `ght sync run` creates the directory (full), then 1% of the accounts change at the source
(70% modified, 15% added, 15% deleted; the new accounts are new people of the same synthetic
population, not copies of one another). The directory file is copied, and the same changes are
synchronised by a delta run and by a full run, each two ways:

- **as a process**: `ght sync run --json` (the default mode, then `--full`), Python start-up included;
- **as a scheduler runs it**: a long-lived process holding what `ght sync run --every` keeps from run
  to run (`directory_sync.sync.KeptRuns`: the store, its background checkpoints, the reading process).
  Its first run synchronises the changes above; then, `--rounds` times (3), another 1% of the
  accounts change at the source and its next run is timed: what every run after the first of a
  scheduler costs, checkpoints included (they are done beside the runs, on the other core). The
  medians are compared (this machine's other tenants make single figures vary by a third).

The delta and full directories are compared after each (they must be the same) and the delta's cost
is printed as a share of the full run's.

Usage: python benchmarks/sync_delta.py [--accounts 100000] [--sites 10] [--ad-users 10000]
       [--changed 0.01] [--rounds 3] [--skip-ldap] [--skip-ad]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap3
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from directory_sync.config import load_settings  # noqa: E402
from directory_sync.connectors import DeltaConnector, open_connector  # noqa: E402
from directory_sync.delta import Watermark  # noqa: E402
from directory_sync.store import SiteWatermark, open_store  # noqa: E402
from directory_sync.synthetic import SiteSpec, SyntheticGHT, generate, job_title_map  # noqa: E402
from tests.ad_sites import differences, directory_snapshot  # noqa: E402
from tests.servers.samba import samba_unavailable, start_samba_dc  # noqa: E402
from tests.servers.slapd import SlapdServer, Suffix, start_slapd  # noqa: E402

MODIFIED, ADDED = 0.70, 0.15  # the rest of the changed accounts are deleted


def environment(checkout: Path, database: Path) -> dict[str, str]:
    """What a `ght` process runs with: the code of `checkout`, the directory `database`."""
    return {**os.environ, "PYTHONPATH": str(checkout), "GHT_DATABASE_URL": f"sqlite:///{database}"}


def ght_sync(config: Path, database: Path, *options: str) -> tuple[dict[str, Any], float]:
    """`ght sync run --json` as its own process on `database`: (result, wall-clock seconds)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "--config",
            str(config),
            "sync",
            "run",
            "--json",
            *options,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(ROOT, database),
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"ght sync run {' '.join(options)} failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout), seconds


_SCHEDULER = """
import json, sys, time
from pathlib import Path
from directory_sync.config import load_settings
from directory_sync.sync import KeptRuns

with KeptRuns() as kept:
    for line in sys.stdin:  # one run per line ("delta" or "full"), as a scheduler's ticks
        started, cpu = time.perf_counter(), time.thread_time()
        results = kept.run(load_settings(Path(sys.argv[1])), full=line.strip() == "full")
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
        assert all(r.ok for r in results), [r.error for r in results]
        modes = sorted({r.mode for r in results})
        print(json.dumps({"seconds": seconds, "cpu": cpu, "modes": modes}), flush=True)
"""


class Scheduler:
    """A process that runs syncs on command as `ght sync run --every` runs them: the configuration read
    again and the run itself on the clock; the store, its checkpoints and the reading process kept."""

    def __init__(self, config: Path, database: Path, mode: str, checkout: Path = ROOT) -> None:
        """`checkout`: the code it runs (this one by default; `compare_delta.py` runs others)."""
        self.mode = mode
        self.cpu: list[float] = []  # the main thread's CPU time of each run
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SCHEDULER, str(config)],
            cwd=checkout,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(checkout, database),
        )

    def run(self) -> tuple[float, list[str]]:
        """One run: (wall-clock seconds, modes); its main thread's CPU seconds are kept in `cpu`."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{self.mode}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            raise SystemExit(f"the {self.mode} scheduler failed: {self.process.communicate()[1][-2000:]}")
        figures = json.loads(line)
        self.cpu.append(figures["cpu"])
        return figures["seconds"], figures["modes"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        if self.process.wait(timeout=120) != 0:
            raise SystemExit(f"the {self.mode} scheduler failed: {self.process.communicate()[1][-2000:]}")


def summary(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    sites = result["sites"]
    assert all(s["status"] == "succeeded" for s in sites), [s["error"] for s in sites]
    read = sum(s["read"] for s in sites)
    return {
        "seconds": round(seconds, 2),
        "seconds_in_sync": round(sum(s["seconds"] for s in sites), 2),  # without start-up and set-up
        "read": read,
        "entries_per_s": round(read / seconds),
        "modes": sorted({s["mode"] for s in sites}),
        "created": sum(s["created"] for s in sites),
        "updated": sum(s["updated"] for s in sites),
        "closed": sum(s["closed"] for s in sites),
        "unchanged": sum(s["unchanged"] for s in sites),
    }


def source_reads(config: Path, work: Path) -> dict[str, Any]:
    """The connectors alone, in this process: every site's delta read from its stored watermark, then
    its full read (no mapping, no store): what the delta mechanism itself costs against a full read."""
    settings = load_settings(config)
    store = open_store(f"sqlite:///{work}/bench.db")
    with store.session() as session:
        stored = {w.site: w for w in session.execute(select(SiteWatermark)).scalars()}
    # Closed before the files are copied: closing any descriptor of a file drops all of this process's
    # POSIX locks on it, a connection left open here would lose its own, and its SQLite would read the
    # next runs' log through a stale view ("database disk image is malformed").
    store.engine.dispose()
    delta_records = full_records = 0
    delta_seconds = full_seconds = 0.0
    for site in settings.load_sites():
        watermark = stored[site.code]
        connector = open_connector(site)
        assert isinstance(connector, DeltaConnector)
        started = time.perf_counter()
        delta_records += sum(1 for _ in connector.read_changes(Watermark(**_fields(watermark))))
        delta_seconds += time.perf_counter() - started
        started = time.perf_counter()
        full_records += sum(1 for _ in connector.read_all())
        full_seconds += time.perf_counter() - started
    return {
        "delta_read": {"records": delta_records, "seconds": round(delta_seconds, 3)},
        "full_read": {"records": full_records, "seconds": round(full_seconds, 2)},
        "delta_read_share_of_full_read": round(delta_seconds / full_seconds, 3),
    }


def _fields(row: SiteWatermark) -> dict[str, Any]:
    return {"kind": row.kind, "source": row.source, "value": row.value, "state": row.state}


def compare(
    config: Path, work: Path, changed: int, change_again: Callable[[], int], rounds: int
) -> dict[str, Any]:
    """Copy the directory; synchronise the changes by delta on one copy, by full on another, as a
    process and as a scheduler (whose next `rounds` runs each follow `change_again`); compare the
    directories."""
    reads = source_reads(config, work)
    for copy in ("full.db", "delta-scheduler.db", "full-scheduler.db"):
        for suffix in ("", "-wal", "-shm"):
            if (work / f"bench.db{suffix}").exists():
                shutil.copy(work / f"bench.db{suffix}", work / f"{copy}{suffix}")
    delta, delta_seconds = ght_sync(config, work / "bench.db")
    full, full_seconds = ght_sync(config, work / "full.db", "--full")
    # The same again with nothing changed since: what a process pays whatever the changes (Python's
    # start-up and imports, the store, the reading process, ten sites asked for what changed).
    _, quiet_seconds = ght_sync(config, work / "bench.db")
    delta_scheduler = Scheduler(config, work / "delta-scheduler.db", "delta")
    full_scheduler = Scheduler(config, work / "full-scheduler.db", "full")
    first_delta, _ = delta_scheduler.run()
    first_full, _ = full_scheduler.run()
    changed_again, deltas, fulls, delta_modes, full_modes = [], [], [], set(), set()
    for _ in range(rounds):  # the machine's other tenants make single figures vary: medians
        changed_again.append(change_again())
        seconds, modes = delta_scheduler.run()
        deltas.append(seconds)
        delta_modes.update(modes)
        seconds, modes = full_scheduler.run()
        fulls.append(seconds)
        full_modes.update(modes)
    delta_scheduler.close()
    full_scheduler.close()
    next_delta, next_full = statistics.median(deltas), statistics.median(fulls)
    problems = differences(
        directory_snapshot(open_store(f"sqlite:///{work}/bench.db")),
        directory_snapshot(open_store(f"sqlite:///{work}/full.db")),
    ) + differences(
        directory_snapshot(open_store(f"sqlite:///{work}/delta-scheduler.db")),
        directory_snapshot(open_store(f"sqlite:///{work}/full-scheduler.db")),
    )
    delta_summary, full_summary = summary(delta, delta_seconds), summary(full, full_seconds)
    return {
        "accounts_changed_at_the_source": changed,
        "connectors_alone": reads,
        "delta": delta_summary,
        "full_over_the_same_changes": full_summary,
        "delta_cost_share_of_full": round(delta_seconds / full_seconds, 3),
        "as_a_process_with_no_change_seconds": round(quiet_seconds, 2),
        "delta_cost_share_of_full_beyond_that": round((delta_seconds - quiet_seconds) / full_seconds, 3),
        "delta_cost_share_of_full_in_sync": round(
            delta_summary["seconds_in_sync"] / full_summary["seconds_in_sync"], 3
        ),
        "as_a_scheduler_runs_it": {
            "accounts_changed_before_each_next_run": changed_again,
            "next_runs": {
                "delta_seconds": [round(d, 3) for d in deltas],
                "full_seconds": [round(f, 2) for f in fulls],
            },
            "delta_seconds": round(next_delta, 3),  # medians
            "delta_modes": sorted(delta_modes),
            "full_seconds": round(next_full, 2),
            "full_modes": sorted(full_modes),
            "delta_share_of_full": round(next_delta / next_full, 3),
            # The scheduler's main thread alone (the reading process and the checkpoints use the
            # other core): medians of the same next runs.
            "main_thread_cpu_seconds": {
                "delta": round(statistics.median(delta_scheduler.cpu[1:]), 3),
                "full": round(statistics.median(full_scheduler.cpu[1:]), 2),
            },
            "first_run": {
                "delta_seconds": round(first_delta, 3),
                "full_seconds": round(first_full, 2),
                "delta_share_of_full": round(first_delta / first_full, 3),
            },
        },
        "directories_identical": not problems,
        "differences": problems[:5],
    }


# -- OpenLDAP: the synthetic GHT ---------------------------------------------------------------------


def newcomers(sites: int, batch: int) -> SyntheticGHT:
    """People to hire: a small synthetic GHT of its own (names, titles and departments drawn like
    everyone else's). Their logins and mail addresses get the batch's mark, as a directory gives a
    newcomer a free one when a namesake already has it."""
    return generate(seed=100 + batch, sites=sites, accounts=sites * 500)


def ldap_changes(
    server: SlapdServer,
    specs: list[SiteSpec],
    accounts: dict[str, list[Any]],
    share: float,
    batch: int = 1,
    gone: set[str] | None = None,
) -> int:
    """Change `share` of the accounts of every site over LDAP, as the rootDN; how many changed.
    `gone`: DNs deleted by an earlier batch (left alone; the ones deleted now are added to it)."""
    rng = random.Random(7 * batch)
    hired = newcomers(len(specs), batch)
    gone = gone if gone is not None else set()
    total = 0
    for index, spec in enumerate(specs):
        present = [a for a in accounts[spec.code] if a.dn not in gone]
        chosen = rng.sample(present, round(len(accounts[spec.code]) * share))
        modified = chosen[: round(len(chosen) * MODIFIED)]
        deleted = chosen[len(modified) + round(len(chosen) * ADDED) :]
        added = len(chosen) - len(modified) - len(deleted)
        with ldap3.Connection(
            server.url, server.root_dn(spec.suffix), server.root_password, auto_bind=True
        ) as conn:
            for account in modified:
                title = "telephoneNumber"
                conn.modify(
                    account.dn, {title: [(ldap3.MODIFY_REPLACE, [f"+33 4 90 00 {rng.randrange(10**4):04d}"])]}
                )
                conn.modify(
                    account.dn, {"employeeNumber": [(ldap3.MODIFY_REPLACE, [f"N{rng.randrange(10**6):06d}"])]}
                )
            for account in deleted:
                conn.delete(account.dn)
                gone.add(account.dn)
            for newcomer in hired.accounts(hired.sites[index].code)[:added]:
                attributes = {
                    k: v for k, v in newcomer.attributes.items() if k not in ("objectClass", "entryUUID")
                }
                uid = attributes["uid"] = [f"{attributes['uid'][0]}.n{batch}"]
                if "mail" in attributes:
                    local, domain = attributes["mail"][0].split("@")
                    attributes["mail"] = [f"{local}.n{batch}@{domain}"]
                conn.add(
                    f"uid={uid[0]},ou=people,{spec.suffix}", newcomer.attributes["objectClass"], attributes
                )
                assert conn.result["result"] == 0, conn.result
        total += len(chosen)
    return total


def bench_ldap(work: Path, accounts: int, sites: int, share: float, rounds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ght = generate(seed=1, sites=sites, accounts=accounts)
    suffixes = []
    for spec in ght.sites:
        path = work / f"{spec.code}.ldif"
        ght.write_ldif(spec.code, path)
        suffixes.append(Suffix(spec.suffix, path))
    server = start_slapd(work / "slapd", suffixes)  # with syncprov (session log of 10,000 changes)
    setup = time.perf_counter() - t0
    try:
        secret = work / "bind.password"
        secret.write_text(server.reader_password)

        def connection_for(spec: SiteSpec) -> dict[str, Any]:
            return {
                "kind": "ldap",
                "url": server.url,
                "bind_dn": server.reader_dn(spec.suffix),
                "bind_password": {"file": str(secret)},
                "base_dn": f"ou=people,{spec.suffix}",
                "page_size": 500,
            }

        ght.write_mappings(work / "mappings", connection_for)
        config = _config(work, [s.code for s in ght.sites])
        first, first_seconds = ght_sync(config, work / "bench.db")
        staff = {spec.code: ght.accounts(spec.code) for spec in ght.sites}
        gone: set[str] = set()
        batches = iter(range(1, 100))
        changed = ldap_changes(server, ght.sites, staff, share, next(batches), gone)
        figures = compare(
            config,
            work,
            changed,
            lambda: ldap_changes(server, ght.sites, staff, share, next(batches), gone),
            rounds,
        )
    finally:
        server.stop()
    return {
        "source": f"slapd {_slapd_version()}, {sites} databases (one per hospital), syncprov, loopback",
        "set_up_seconds": round(setup, 1),
        "first_run_full": summary(first, first_seconds),
        **figures,
    }


# -- Active Directory: one large hospital on Samba ---------------------------------------------------


def bench_ad(work: Path, users: int, share: float, rounds: int) -> dict[str, Any]:
    reason = samba_unavailable()
    if reason:
        return {"skipped": reason}
    ght = generate(seed=2, sites=1, accounts=users)
    spec = ght.sites[0]
    t0 = time.perf_counter()
    dc = start_samba_dc(work / "samba", "CHBENCH.TEST")
    try:
        provisioned = time.perf_counter() - t0
        staff = dc.add_ou("Personnel")
        groups = dc.add_ou("Groupes")
        t1 = time.perf_counter()
        rows = [_ad_user(account) for account in ght.accounts(spec.code)]
        doctors = [f"CN={row['sam']},{staff}" for row in rows if "employeeID" in row]
        dc.add_users(staff, rows)
        loaded = time.perf_counter() - t1
        emergency = [dn for dn in doctors[: len(doctors) // 3]]
        urgentistes = dc.add_group(groups, "GG-Urgentistes", emergency)
        dc.add_group(groups, "GG-Medecins", [urgentistes, *doctors[len(doctors) // 3 :]])

        mappings = work / "mappings"
        mappings.mkdir()
        document = {
            "site": {"code": spec.code, "name": spec.name, "finess": spec.finess},
            "connection": {
                "kind": "active_directory",
                "url": dc.url,
                "bind_dn": dc.reader,
                "bind_password": {"file": str(dc.reader_password_file)},
                "base_dn": staff,
                "page_size": 1000,
            },
            "attributes": {
                "login": "sAMAccountName",
                "family_name": {"from": "sn", "transforms": ["trim", "name_case"]},
                "given_name": {"from": "givenName", "transforms": ["trim", "name_case"]},
                "email": {"from": "mail", "transforms": ["trim", "lower"]},
                "rpps": {"from": "employeeID", "transforms": ["digits"]},
                "profession": {"from": "title", "transforms": ["trim", "lower", {"map": "job_titles"}]},
                "department": {"from": "department", "transforms": ["trim"]},
                "title": {"from": "title", "transforms": ["trim"]},
                "employee_id": "employeeNumber",
            },
            "value_maps": {"job_titles": job_title_map(spec.dialect)},
            "roles": {"nested": True, "groups": {"GG-Medecins": "medecin", "GG-Urgentistes": "urgentiste"}},
        }
        (mappings / f"{spec.code}.yaml").write_text(
            yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
        )
        config = _config(work, [spec.code])
        first, first_seconds = ght_sync(config, work / "bench.db")

        present = [f"CN={r['sam']},{staff}" for r in rows]

        def ad_changes(batch: int) -> int:
            rng = random.Random(7 * batch)
            chosen = rng.sample(present, round(users * share))
            modified = chosen[: round(len(chosen) * MODIFIED)]
            deleted = chosen[len(modified) + round(len(chosen) * ADDED) :]
            added = len(chosen) - len(modified) - len(deleted)
            for dn in modified:
                dc.replace(dn, department=rng.choice(["Réanimation", "Urgences", "Cardiologie", "Pédiatrie"]))
            for dn in deleted:
                dc.delete(dn)
                present.remove(dn)
            hired = newcomers(1, batch)
            dc.add_users(staff, [_ad_user(a, batch) for a in hired.accounts(hired.sites[0].code)[:added]])
            return len(chosen)

        batches = iter(range(1, 100))
        figures = compare(config, work, ad_changes(next(batches)), lambda: ad_changes(next(batches)), rounds)
    finally:
        dc.close()
    return {
        "source": f"Samba {_samba_version()} AD DC (private, loopback, one process), users without passwords",
        "users": users,
        "set_up_seconds": {"provision": round(provisioned, 1), "add_users_over_ldap": round(loaded, 1)},
        "first_run_full": summary(first, first_seconds),
        **figures,
    }


def _ad_user(account: Any, batch: int | None = None) -> dict[str, str]:
    """A synthetic account as a Samba user (`batch`: a newcomer's, with that batch's mark)."""
    a = {k: v[0] for k, v in account.attributes.items() if k != "objectClass"}
    mark = "" if batch is None else f"n{batch}"
    row = {
        "sam": f"{a['uid'][: 20 - len(mark)]}{mark}",  # sAMAccountName: at most 20 characters
        "given": a.get("givenName", "-").strip() or "-",
        "family": a["sn"].strip() or "-",
        "title": a["title"].strip() or "-",
        "department": a.get("ou", "-").strip() or "-",
        "employeeNumber": a["employeeNumber"],
    }
    if a.get("mail"):
        local, domain = a["mail"].split("@")
        row["mail"] = f"{local}.{mark}@{domain}" if mark else a["mail"]
    if a.get("businessCategory"):
        row["employeeID"] = a["businessCategory"]
    return row


# -- common ------------------------------------------------------------------------------------------


def _config(work: Path, sites: list[str]) -> Path:
    (work / "mappings" / "codes").mkdir(parents=True, exist_ok=True)
    (work / "mappings" / "codes" / "g15.yaml").write_text((ROOT / "mappings/codes/g15.yaml").read_text())
    config = work / "ght.toml"
    database = f"sqlite:///{work}/bench.db"
    config.write_text(
        f'database_url = "{database}"\nmappings_dir = "mappings"\nsites = {json.dumps(sites)}\n'
    )
    return config


def _slapd_version() -> str:
    done = subprocess.run(["/usr/sbin/slapd", "-VV"], capture_output=True, text=True)
    words = (done.stdout + done.stderr).split()
    return next((w for w in words if w[:1].isdigit()), "?")


def _samba_version() -> str:
    done = subprocess.run(["samba", "--version"], capture_output=True, text=True)
    return done.stdout.strip().removeprefix("Version ")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--ad-users", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of accounts changed (0.01: 1%%)")
    parser.add_argument("--rounds", type=int, default=3, help="a scheduler's next runs timed (medians)")
    parser.add_argument("--skip-ldap", action="store_true")
    parser.add_argument("--skip-ad", action="store_true")
    args = parser.parse_args()

    report: dict[str, Any] = {}
    if not args.skip_ldap:
        with tempfile.TemporaryDirectory(prefix="ght-bench-delta-") as tmp:
            report["openldap_synthetic_ght"] = bench_ldap(
                Path(tmp), args.accounts, args.sites, args.changed, args.rounds
            )
    if not args.skip_ad:
        with tempfile.TemporaryDirectory(prefix="ght-bench-delta-ad-") as tmp:
            report["active_directory_samba"] = bench_ad(Path(tmp), args.ad_users, args.changed, args.rounds)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    report["conditions"] = {
        "store": "SQLite (file, WAL), one per run",
        "python": platform.python_version(),
        "ldap3": ldap3.__version__,
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "changes": f"{args.changed:.0%} of accounts: {MODIFIED:.0%} modified, {ADDED:.0%} added, "
        f"{1 - MODIFIED - ADDED:.0%} deleted",
        "target": "delta cost <= 0.05 of the full run's: proportional to the changes, not to the "
        "directory's size (issue 3). As a scheduler runs it, that is the run's own cost; as a process, "
        "a fixed cost comes on top (start-up: the run with no change), printed beside it",
    }
    print(yaml.safe_dump(report, sort_keys=False, allow_unicode=True))


if __name__ == "__main__":
    main()
