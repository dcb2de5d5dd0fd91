"""Two versions of the code against each other, on the same delta runs: for trying a change to the sync.

`sync_delta.py` measures one version against its own full run; a change worth a few percent is lost in
that run's noise (this machine's other tenants move single figures by 10-20%). Here one private slapd
holds the synthetic GHT (`directory_sync.synthetic`), one full sync creates the directory, and each
checkout given gets its own copy of it (upgraded to its schema) and its own scheduler process running
its own code, as `ght sync run --every` runs it (`KeptRuns`). Then, `--rounds` times, 1% of the
accounts change at the source and every scheduler runs its next delta, in alternating order. Printed:
per checkout, the median wall-clock time of a run, the median CPU time of its main thread, and the CPU
each of its processes and threads used per run (the reading process, the checkpoints); then the ratio
of each checkout's median to the first's, and whether the directories are the same afterwards.

Usage: python benchmarks/compare_delta.py CHECKOUT [CHECKOUT...] [--rounds 10] [--accounts 100000]

A checkout is a directory holding this repository at some commit (`git worktree add /tmp/a <commit>`);
the first one's code creates the directory. Run it from the checkout whose benchmarks you trust.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sync_delta import Scheduler, _config, environment, ldap_changes  # noqa: E402
from directory_sync.synthetic import generate  # noqa: E402
from tests.ad_sites import differences  # noqa: E402
from tests.servers.slapd import Suffix, start_slapd  # noqa: E402


class Checkout:
    """A scheduler (`sync_delta.Scheduler`) running one checkout's code on its own copy of the
    directory, upgraded to that code's schema."""

    def __init__(self, path: Path, config: Path, database: Path) -> None:
        self.path, self.database = path, database
        self.seconds: list[float] = []
        _ght(path, config, database, "db", "upgrade")
        self.scheduler = Scheduler(config, database, "delta", checkout=path)
        self.process = self.scheduler.process
        self.cpu = self.scheduler.cpu

    def run(self) -> None:
        self.seconds.append(self.scheduler.run()[0])

    def threads(self) -> dict[str, int]:
        """CPU ticks used so far by the scheduler's threads and its children's ("pid/tid name")."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids += [int(pid) for pid in children.read_text().split()]
        ticks = {}
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
                role = "scheduler" if pid == self.process.pid else "reading process"
                ticks[f"{role} {name} ({pid}/{task.name})"] = int(fields[11]) + int(fields[12])
        return ticks

    def close(self) -> None:
        self.scheduler.close()


def _ght(path: Path, config: Path, database: Path, *arguments: str) -> None:
    subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "--config", str(config), *arguments],
        cwd=path,
        check=True,
        capture_output=True,
        env=environment(path, database),
    )


def compare(checkouts: list[Path], accounts: int, rounds: int, work: Path) -> dict[str, Any]:
    ght = generate(seed=1, sites=10, accounts=accounts)
    suffixes = []
    for spec in ght.sites:
        ght.write_ldif(spec.code, work / f"{spec.code}.ldif")
        suffixes.append(Suffix(spec.suffix, work / f"{spec.code}.ldif"))
    server = start_slapd(work / "slapd", suffixes)
    try:
        secret = work / "bind.password"
        secret.write_text(server.reader_password)
        ght.write_mappings(
            work / "mappings",
            lambda spec: {
                "kind": "ldap",
                "url": server.url,
                "bind_dn": server.reader_dn(spec.suffix),
                "bind_password": {"file": str(secret)},
                "base_dn": f"ou=people,{spec.suffix}",
                "page_size": 500,
            },
        )
        config = _config(work, [s.code for s in ght.sites])
        _ght(checkouts[0], config, work / "first.db", "sync", "run")
        staff = {spec.code: ght.accounts(spec.code) for spec in ght.sites}
        gone: set[str] = set()
        ldap_changes(server, ght.sites, staff, 0.01, 1, gone)
        schedulers = []
        for index, path in enumerate(checkouts):
            for suffix in ("", "-wal", "-shm"):
                if (work / f"first.db{suffix}").exists():
                    shutil.copy(work / f"first.db{suffix}", work / f"copy{index}.db{suffix}")
            schedulers.append(Checkout(path, config, work / f"copy{index}.db"))
        for scheduler in schedulers:  # their first runs: what the next runs are measured after
            scheduler.run()
            scheduler.seconds.clear()
            scheduler.cpu.clear()
        before = [s.threads() for s in schedulers]
        for round_ in range(rounds):
            ldap_changes(server, ght.sites, staff, 0.01, round_ + 2, gone)
            for scheduler in schedulers if round_ % 2 == 0 else reversed(schedulers):
                scheduler.run()
        after = [s.threads() for s in schedulers]
        for scheduler in schedulers:
            scheduler.close()
    finally:
        server.stop()
    first = statistics.median(schedulers[0].seconds)
    reference = snapshot(schedulers[0])
    report = {}
    for scheduler, ticks_before, ticks_after in zip(schedulers, before, after, strict=True):
        median = statistics.median(scheduler.seconds)
        report[str(scheduler.path)] = {
            "delta_seconds": round(median, 4),
            "share_of_the_first": round(median / first, 3),
            "runs": [round(s, 3) for s in scheduler.seconds],
            "main_thread_cpu_seconds": round(statistics.median(scheduler.cpu), 4),
            "cpu_ms_per_run": {
                name: round((ticks - ticks_before.get(name, 0)) * 1000 / os.sysconf("SC_CLK_TCK") / rounds, 1)
                for name, ticks in ticks_after.items()
                if ticks > ticks_before.get(name, 0)
            },
            "same_directory_as_the_first": not differences(reference, snapshot(scheduler)),
        }
    return report


_SNAPSHOT = """
import json, sys
from directory_sync.store import open_store
from tests.ad_sites import directory_snapshot
print(json.dumps(directory_snapshot(open_store(sys.argv[1], create=False)), default=str))
"""


def snapshot(scheduler: Checkout) -> dict[str, Any]:
    """The directory as `tests.ad_sites.directory_snapshot` sees it, read by the checkout's own code
    (its schema may not be this one's)."""
    done = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, f"sqlite:///{scheduler.database}"],
        cwd=scheduler.path,
        check=True,
        capture_output=True,
        text=True,
        env=environment(scheduler.path, scheduler.database),
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ght-compare-") as tmp:
        report = compare([p.resolve() for p in args.checkouts], args.accounts, args.rounds, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
