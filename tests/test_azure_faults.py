"""A push through a failing network: about 10% of Graph calls answer 429 or 503, time out after Graph
has done the work, or lose their connection after it; a few requests inside batches are refused too.

Whatever happens, each push must end with the tenant exactly what the directory says, and no person
may ever have two cloud users. Run on SQLite and on PostgreSQL (the export state is committed after
every envelope: both stores must resume the same way).
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

from directory_sync.store import utcnow
from tests.hospitals import rpps
from tests.servers.graph_fake import Faults
from tests.test_azure_support import SITES, World, azure_world

TITLES = ("Infirmière", "Médecin", "Aide-soignante", "Sage-femme", "Secrétaire médicale")
GIVEN = ("Marie", "Jean", "Louise", "Lucas", "Chloé", "Hugo", "Inès", "Léo", "Emma", "Nathan")
FAMILY = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau")


def populate(world: World, count: int, seed: int) -> list[tuple[str, str, dict[str, str]]]:
    """`count` people; one in five works at two hospitals (same RPPS). Returns (site, uid, entry)."""
    rng = random.Random(seed)
    hired = []
    for n in range(count):
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)  # homonyms, on purpose
        sites = rng.sample(SITES, 2 if rng.random() < 0.2 else 1)
        for site in sites:
            uid = f"{given[0].lower()}{family.lower()}{n}"
            attributes = {
                "rpps": rpps(100 + n),
                "title": rng.choice(TITLES),
                "ou": rng.choice(("Bloc", "Urgences")),
            }
            world.hire(site, uid, family, given, **attributes)
            hired.append((site, uid, attributes))
    world.sync()
    return hired


def test_a_push_through_a_failing_network_ends_exactly_as_planned_without_duplicates(
    tmp_path: Path, database_url: str
) -> None:
    faults = Faults(rate=0.10, inner_rate=0.03, retry_after=1, timeout_delay=1.5)
    with azure_world(tmp_path, database_url, faults=faults, seed=11) as world:
        world.configure(timeout=1.0, deletion_grace_days=1)
        hired = populate(world, 400, seed=5)
        first = world.push()
        assert (first.rejected, first.unfinished) == ([], 0)
        world.assert_tenant_is_the_directory()

        # A day of changes: new jobs, departures, newcomers, moves.
        rng = random.Random(6)
        for site, uid, attributes in rng.sample(hired, 40):
            world.hire(site, uid, "Changé", "Prénom", **{**attributes, "title": "Infirmière"})
        for site, uid, _ in rng.sample(hired, 25):
            world.entries[site].pop(uid, None)
        for n in range(20):
            world.hire(rng.choice(SITES), f"nouveau{n}", f"Nouveau{n}", "Camille", title="Infirmière")
        world.sync()
        second = world.push()
        assert (second.rejected, second.unfinished) == ([], 0)
        assert second.disabled > 0 and second.created >= 20 and second.updated > 0
        world.assert_tenant_is_the_directory()

        later = utcnow() + timedelta(days=2)  # past the grace period: the departed are deleted
        third = world.push(now=later)
        assert third.deleted == second.disabled and third.unfinished == 0
        world.assert_tenant_is_the_directory()

        injected = world.fake.stats.faults
        for kind in ("429", "503", "timeout", "drop", "inner-429", "inner-503"):
            assert injected.get(kind, 0) > 0, injected
        calls = world.fake.stats.graph_requests
        assert 0.05 < sum(v for k, v in injected.items() if not k.startswith("inner")) / calls < 0.2
        world.fake.faults = Faults()
        assert world.push(now=later).stats.writes == 0
