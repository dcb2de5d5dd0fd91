"""Export to Entra ID at GHT scale: 20,000 people pushed to the fake of Graph under a write quota.

What it does, in one run on this machine:
1. builds a territorial directory of N people (default 20,000) in a new SQLite file: 10 hospitals, one
   person in five at two of them, professions in hospital proportions (seeded);
2. starts the fake of Entra ID and Graph (tests/servers/graph_fake.py) as its own process, over HTTPS
   on loopback, with a write quota scaled down in time (default 300 writes per 3 s sliding window:
   Entra's documented app-and-tenant quota, 3,000 per 150 s, is 20 writes/s; 300 per 3 s is 100/s,
   so the run takes minutes instead of a quarter of an hour);
3. pushes the whole directory (`directory_sync.azure.push`, as `ght azure push` does), then pushes
   again with no change, then changes 5% of the people (new job, or gone) and pushes that;
4. prints, with the conditions: HTTP requests per changed user (every request the fake received,
   token included), the achieved write rate as a fraction of the quota (writes accepted by the fake
   over the push's whole duration), the 429s received, and the writes of the push with no change.

Targets (issue 5): requests per changed user <= 0.06, write rate >= 0.9 of the quota, no change -> 0 writes.

Usage: python benchmarks/azure_export.py [--people 20000] [--quota 300] [--window 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from directory_sync.azure import push  # noqa: E402
from directory_sync.config import load_settings  # noqa: E402
from directory_sync.store import Affiliation, Person, PersonStatus, Site, open_store, utcnow  # noqa: E402

SECRET_ENV = "GHT_BENCH_AZURE_SECRET"
CLIENT_ID = "ght-bench-export"
DOMAIN = "ght-test.fr"
SITES = [
    ("chu-nimes", "CHU de Nîmes", "300780038"),
    ("ch-ales", "CH d'Alès-Cévennes", "300780053"),
    ("ch-uzes", "CH d'Uzès", "300780152"),
    ("ch-bagnols", "CH de Bagnols-sur-Cèze", "300780046"),
    ("ch-ponteils", "CH de Ponteils", "300780160"),
    ("ch-vigan", "CH du Vigan", "300780111"),
    ("ch-sommieres", "CH de Sommières", "300780129"),
    ("ch-pont-st-esprit", "CH de Pont-Saint-Esprit", "300780137"),
    ("ch-beaucaire", "CH de Beaucaire", "300780079"),
    ("ch-aigues-mortes", "CH d'Aigues-Mortes", "300780095"),
]
PROFESSIONS = [
    ("60", "Infirmier", 35),
    ("35", "Aide-soignant", 25),
    ("10", "Médecin", 12),
    ("50", "Sage-femme", 3),
    ("21", "Pharmacien", 2),
    ("70", "Masseur-kinésithérapeute", 3),
    (None, "Adjoint administratif", 20),
]
GIVEN = [
    "Marie",
    "Jean",
    "Louise",
    "Lucas",
    "Chloé",
    "Hugo",
    "Inès",
    "Léo",
    "Emma",
    "Nathan",
    "Jade",
    "Gabriel",
    "Léa",
    "Raphaël",
    "Manon",
    "Arthur",
    "Camille",
    "Louis",
    "Anaïs",
    "Jules",
    "Zoé",
    "Adam",
    "Lina",
    "Noé",
]
FAMILY = [
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Richard",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Simon",
    "Laurent",
    "Lefèvre",
    "Michel",
    "Garcia",
    "David",
    "Bertrand",
    "Roux",
    "Vincent",
    "Fournier",
    "Morel",
    "Girard",
    "André",
    "Mercier",
    "Dupont",
    "Lambert",
    "Bonnet",
    "François",
    "Martinez",
    "N'Diaye",
]
DEPARTMENTS = [
    "Urgences",
    "Cardiologie",
    "Pédiatrie",
    "Bloc opératoire",
    "Gériatrie",
    "Maternité",
    "Pharmacie",
]


def build_directory(url: str, people: int, seed: int) -> None:
    """A directory of `people` people over the hospitals, written through the store's models."""
    rng = random.Random(seed)
    store = open_store(url)
    weights = [w for _, _, w in PROFESSIONS]
    started = utcnow() - timedelta(days=400)
    with store.session() as session:
        session.add_all(Site(code=c, name=n, finess=f) for c, n, f in SITES)
        session.flush()
        for n in range(people):
            code, label, _ = rng.choices(PROFESSIONS, weights)[0]
            person = Person(
                family_name=rng.choice(FAMILY),
                given_name=rng.choice(GIVEN),
                rpps=f"1{n:010d}" if code in ("10", "21", "50", "60", "70") else None,
                status=PersonStatus.ACTIVE,
                created_at=started + timedelta(seconds=n),
            )
            session.add(person)
            session.flush()
            sites = (
                rng.sample(SITES[:6], 2)
                if rng.random() < 0.2
                else [rng.choices(SITES, [30, 20] + [6] * 8)[0]]
            )
            for i, (site, _, _) in enumerate(sites):
                session.add(
                    Affiliation(
                        person_id=person.id,
                        site=site,
                        profession=code,
                        department=rng.choice(DEPARTMENTS),
                        title=label,
                        started_at=started + timedelta(days=i),
                    )
                )
            if n % 2000 == 1999:
                session.commit()
        session.commit()


def fake_stats(client: httpx.Client, url: str) -> dict[str, Any]:
    return dict(client.get(f"{url}/_fake/stats").json())


def run_push(
    label: str,
    settings: Any,
    store: Any,
    client: httpx.Client,
    fake: dict[str, Any],
    quota_rate: float,
    changed: int,
) -> dict[str, Any]:
    before = fake_stats(client, fake["url"])
    shown = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        if time.monotonic() - shown[0] > 10 or done == total:
            shown[0] = time.monotonic()
            print(f"    {phase}: {done}/{total}", flush=True)

    started = time.monotonic()
    result = push(settings, store, progress=progress)
    seconds = time.monotonic() - started
    after = fake_stats(client, fake["url"])
    requests = after["http_requests"] - before["http_requests"] - 1  # not the stats request itself
    writes = after["writes"] - before["writes"]
    figures = {
        "push": label,
        "changed users": changed,
        "seconds": round(seconds, 1),
        "HTTP requests": requests,
        "requests per changed user": round(requests / changed, 4) if changed else None,
        "writes accepted": writes,
        "write rate (writes/s)": round(writes / seconds, 1),
        "write rate / quota": round(writes / seconds / quota_rate, 3) if writes else 0.0,
        "429s received": after["throttled"] - before["throttled"],
        "created": result.created,
        "updated": result.updated,
        "disabled": result.disabled,
        "members added": result.members_added,
        "members removed": result.members_removed,
        "rejected": len(result.rejected),
    }
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--quota", type=int, default=300, help="writes per window")
    parser.add_argument("--window", type=float, default=3.0, help="seconds")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    quota_rate = args.quota / args.window
    work = Path(tempfile.mkdtemp(prefix="ght-azure-bench-"))
    os.environ[SECRET_ENV] = "bench-" + os.urandom(12).hex()
    url = f"sqlite:///{work}/ght.db"

    print(f"building a directory of {args.people} people in {work}/ght.db ...", flush=True)
    started = time.monotonic()
    build_directory(url, args.people, args.seed)
    print(f"  built in {time.monotonic() - started:.1f} s", flush=True)

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.servers.graph_fake",
            "--workdir",
            str(work),
            "--client-id",
            CLIENT_ID,
            "--secret-env",
            SECRET_ENV,
            "--domain",
            DOMAIN,
            "--quota",
            str(args.quota),
            "--window",
            str(args.window),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        fake = json.loads(server.stdout.readline())
        config = work / "ght.toml"
        config.write_text(
            f'database_url = "{url}"\nmappings_dir = "{ROOT / "mappings"}"\nsites = []\n\n[azure]\n'
            f'tenant_id = "{fake["tenant_id"]}"\nclient_id = "{CLIENT_ID}"\n'
            f'client_secret = {{env = "{SECRET_ENV}"}}\n'
            f'domain = "{DOMAIN}"\nauthority = "{fake["url"]}"\ngraph_url = "{fake["url"]}"\n'
            f'ca_file = "{fake["ca_file"]}"\nconcurrency = {args.concurrency}\n'
        )
        settings = load_settings(config)
        store = open_store(url)
        results = []
        with httpx.Client(verify=__import__("ssl").create_default_context(cafile=fake["ca_file"])) as client:
            print(f"push 1: the whole directory ({args.people} people) ...", flush=True)
            results.append(
                run_push("first (creates)", settings, store, client, fake, quota_rate, args.people)
            )
            print("push 2: no change ...", flush=True)
            results.append(run_push("second (no change)", settings, store, client, fake, quota_rate, 0))
            rng = random.Random(args.seed + 1)
            with sqlite3.connect(f"{work}/ght.db") as db:
                ids = [row[0] for row in db.execute("SELECT id FROM person ORDER BY id")]
                chosen = rng.sample(ids, args.people // 20)
                movers, leavers = chosen[: len(chosen) * 4 // 5], chosen[len(chosen) * 4 // 5 :]
                db.executemany(
                    "UPDATE affiliation SET title = 'Cadre de santé', department = 'Direction des "
                    "soins' WHERE person_id = ?",
                    [(p,) for p in movers],
                )
                db.executemany(
                    "UPDATE affiliation SET active = 0 WHERE person_id = ?", [(p,) for p in leavers]
                )
                db.executemany("UPDATE person SET status = 'suspended' WHERE id = ?", [(p,) for p in leavers])
            print(f"push 3: {len(movers)} new jobs, {len(leavers)} departures ...", flush=True)
            results.append(
                run_push("third (5% changed)", settings, store, client, fake, quota_rate, len(chosen))
            )
            summary = client.get(f"{fake['url']}/_fake/summary").json()
    finally:
        server.terminate()
        server.wait(timeout=10)

    print()
    print(
        "Conditions: fake of Graph in its own process over HTTPS (loopback, test CA), write quota "
        f"{args.quota} per {args.window:g} s sliding window ({quota_rate:g} writes/s), "
        f"x-ms-throttle-limit-percentage past 80%; client concurrency {args.concurrency}, $batch of 20, "
        "initial write rate 20/s; SQLite store; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}."
    )
    print(f"Tenant at the end: {json.dumps(summary)}")
    for figures in results:
        print(" | ".join(f"{k}: {v}" for k, v in figures.items()))
    first, second, third = results
    print(
        f"\nrequests per changed user: {first['requests per changed user']} (first), "
        f"{third['requests per changed user']} (5% changed); target <= 0.06"
    )
    print(f"write rate / quota: {first['write rate / quota']} (first push); target >= 0.9")
    print(f"429s: {first['429s received']} (first push), {third['429s received']} (third)")
    print(
        f"no-change push: {second['writes accepted']} writes, {second['HTTP requests']} requests "
        "(target: 0 writes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
