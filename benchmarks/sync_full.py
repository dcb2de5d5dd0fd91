"""Full sync throughput: raw ldap3 paged read vs end-to-end `ght sync run`, on a synthetic GHT.

What it does, in one run on this machine:
1. generates a seeded synthetic GHT (`directory_sync.synthetic`: default 10 hospitals, 100,000
   accounts, ~20% of people at several sites) and loads it into one real, private slapd (one
   database per hospital, `slapadd -q`);
2. the reference: reads every site with ldap3 alone, a paged subtree search with the same bind,
   filter, attributes and page size as the sync, touching every attribute value;
3. the product: `ght sync run` as a separate process into a new SQLite file (read, map, reconcile,
   apply), then a second run with no source change;
4. prints each rate, its ratio to the reference, and the sync process's peak memory (max RSS).

Usage: python benchmarks/sync_full.py [--accounts 100000] [--sites 10] [--page-size 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ldap3
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from directory_sync.config import load_site_mapping  # noqa: E402
from directory_sync.synthetic import SiteSpec, SyntheticGHT, generate  # noqa: E402
from tests.servers.slapd import SlapdServer, Suffix, start_slapd  # noqa: E402

PASSWORD_ENV = "GHT_BENCH_BIND_PASSWORD"


def raw_read(server: SlapdServer, mappings: list[Path]) -> tuple[int, float]:
    """Entries read and seconds taken by a bare ldap3 paged search of every site."""
    total, started = 0, time.perf_counter()
    for path in mappings:
        site = load_site_mapping(path)
        connection = site.connection
        conn = ldap3.Connection(
            ldap3.Server(connection.url, get_info=ldap3.NONE),
            connection.bind_dn,
            os.environ[PASSWORD_ENV],
            auto_bind=True,
            read_only=True,
        )
        cookie = None
        while True:
            conn.search(
                connection.base_dn,
                connection.filter,
                attributes=site.source_attributes,
                paged_size=connection.page_size,
                paged_cookie=cookie,
            )
            for entry in conn.response:
                if entry["type"] == "searchResEntry":
                    total += 1
                    for values in entry["raw_attributes"].values():
                        for value in values:
                            value.decode("utf-8", "replace")
            cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
            if not cookie:
                break
        conn.unbind()
    return total, time.perf_counter() - started


def correlation_quality(ght: SyntheticGHT, database: Path) -> dict[str, float | int]:
    """The directory against the generator's truth.

    wrong merges: people holding accounts of two or more humans. Missed links not in review: humans
    whose accounts ended in several people that no open review case connects (a reviewer could never
    bring them together). Review precision: share of cases whose true person is among the candidates.
    """
    truth = {(site, anchor): human for human, accounts in ght.truth.items() for site, anchor in accounts}
    humans_of: dict[str, set[str]] = {}
    people_of: dict[str, set[str]] = {}
    with sqlite3.connect(database) as db:
        for person_id, site, anchor in db.execute("select person_id, site, anchor from account"):
            human = truth[(site, anchor)]
            humans_of.setdefault(person_id, set()).add(human)
            people_of.setdefault(human, set()).add(person_id)
        cases = [
            (site, anchor, person_id, json.loads(candidates))
            for site, anchor, person_id, candidates in db.execute(
                "select site, anchor, person_id, candidates from reviewcase where status = 'open'"
            )
        ]
    links = {frozenset((person_id, c["person"])) for _, _, person_id, candidates in cases for c in candidates}
    missed = 0
    for people in people_of.values():
        if len(people) < 2:
            continue
        group = list(people)
        reached, changed = {group[0]}, True
        while changed:
            changed = False
            for person in group:
                if person not in reached and any(frozenset((person, other)) in links for other in reached):
                    reached.add(person)
                    changed = True
        missed += len(reached) < len(group)
    right = sum(
        1
        for site, anchor, _, candidates in cases
        if any(truth[(site, anchor)] in humans_of.get(c["person"], ()) for c in candidates)
    )
    accounts = len(truth)
    return {
        "humans": len(people_of),
        "humans_at_several_sites": sum(
            1 for accounts_ in ght.truth.values() if len({s for s, _ in accounts_}) > 1
        ),
        "wrong_merges": sum(1 for humans in humans_of.values() if len(humans) > 1),
        "missed_links_not_in_review": missed,
        "review_cases": len(cases),
        "review_cases_per_1000_accounts": round(len(cases) * 1000 / accounts, 1),
        "review_cases_with_the_true_person_among_candidates": round(right / len(cases), 3) if cases else 1.0,
    }


def ght_sync(config: Path, *options: str) -> tuple[dict, float, int]:
    """Run `ght sync run --json` as its own process: (result, seconds, peak RSS in bytes)."""
    started = time.perf_counter()
    process = subprocess.Popen(
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
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ght sync run failed ({process.returncode}): {stderr.decode()[-2000:]}")
    # The child has been reaped: RUSAGE_CHILDREN holds the largest max RSS of the children so far.
    # slapd is not our child (slapd_factory runs it via Popen too, but it is still running).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return json.loads(stdout), seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ght-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ght = generate(seed=args.seed, sites=args.sites, accounts=args.accounts)
        suffixes = []
        for spec in ght.sites:
            path = work / f"{spec.code}.ldif"
            ght.write_ldif(spec.code, path)
            suffixes.append(Suffix(spec.suffix, path))
        server = start_slapd(work / "slapd", suffixes)
        print(
            f"set-up: generated and loaded {ght.account_count:,} accounts in {time.perf_counter() - t0:.1f} s"
        )
        try:
            os.environ[PASSWORD_ENV] = server.reader_password

            def connection_for(spec: SiteSpec) -> dict:
                return {
                    "kind": "ldap",
                    "url": server.url,
                    "bind_dn": server.reader_dn(spec.suffix),
                    "bind_password": {"env": PASSWORD_ENV},
                    "base_dn": f"ou=people,{spec.suffix}",
                    "page_size": args.page_size,
                }

            mappings = ght.write_mappings(work / "mappings", connection_for)
            (work / "mappings" / "codes").mkdir(exist_ok=True)
            (work / "mappings" / "codes" / "g15.yaml").write_text(
                (ROOT / "mappings/codes/g15.yaml").read_text()
            )
            config = work / "ght.toml"
            config.write_text(
                f'database_url = "sqlite:///{work}/bench.db"\nmappings_dir = "mappings"\n'
                f"sites = {json.dumps([s.code for s in ght.sites])}\n"
            )

            raw_count, raw_seconds = raw_read(server, mappings)
            first, first_seconds, peak = ght_sync(config)
            second, second_seconds, _ = ght_sync(config, "--full")  # a full read, not a delta
            _, raw_seconds_after = raw_read(server, mappings)
        finally:
            server.stop()

        read = sum(s["read"] for s in first["sites"])
        assert read == raw_count == ght.account_count, (read, raw_count, ght.account_count)
        assert all(s["status"] == "succeeded" for s in first["sites"] + second["sites"])
        quality = correlation_quality(ght, work / "bench.db")
        raw_rate = raw_count / ((raw_seconds + raw_seconds_after) / 2)
        first_rate = read / first_seconds
        second_rate = read / second_seconds
        with sqlite3.connect(work / "bench.db") as db:
            people = db.execute("select count(*) from person").fetchone()[0]
            multi = db.execute(
                "select count(*) from "
                "(select person_id from affiliation group by person_id having count(*) > 1)"
            ).fetchone()[0]

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        yaml.safe_dump(
            {
                "conditions": {
                    "accounts": read,
                    "sites": args.sites,
                    "seed": args.seed,
                    "page_size": args.page_size,
                    "people_in_directory": people,
                    "people_at_several_sites": multi,
                    "store": f"SQLite {sqlite3.sqlite_version} (file, WAL)",
                    "ldap_server": "slapd (private, loopback, mdb, one database per site)",
                    "python": platform.python_version(),
                    "ldap3": ldap3.__version__,
                    "cpu": f"{cpu}, {os.cpu_count()} cores",
                    "load_average_1min": round(os.getloadavg()[0], 2),
                },
                "reference_raw_ldap3_read": {
                    "entries_per_s": round(raw_rate),
                    "seconds": round((raw_seconds + raw_seconds_after) / 2, 2),
                },
                "ght_sync_run_first": {
                    "entries_per_s": round(first_rate),
                    "seconds": round(first_seconds, 2),
                    "ratio_to_raw_read": round(first_rate / raw_rate, 3),
                    "created": sum(s["created"] for s in first["sites"]),
                    "linked": sum(s["linked"] for s in first["sites"]),
                },
                "ght_sync_run_no_change": {
                    "unchanged": sum(s["unchanged"] for s in second["sites"]),
                    "changed": sum(
                        s["created"] + s["linked"] + s["updated"] + s["closed"] for s in second["sites"]
                    ),
                    "rejected": sum(s["errors"] for s in second["sites"]),
                    "entries_per_s": round(second_rate),
                    "seconds": round(second_seconds, 2),
                    "ratio_to_raw_read": round(second_rate / raw_rate, 3),
                },
                "peak_memory_MiB": round(peak / 2**20, 1),
                "correlation_quality": quality,
                "targets": {
                    "ratio_to_raw_read": ">= 0.8 (first slice: >= 0.5)",
                    "peak_memory_MiB": "< 1024",
                    "wrong_merges": 0,
                    "missed_links_not_in_review": 0,
                },
            },
            sort_keys=False,
            allow_unicode=True,
        )
    )


if __name__ == "__main__":
    main()
