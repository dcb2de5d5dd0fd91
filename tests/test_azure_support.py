"""Support for the `test_azure_*` modules (no test here): a small GHT and a fake Entra tenant.

`azure_world()` builds a GHT of hospitals that hand over LDIF exports, synchronises them with the
real pipeline (connectors, mapping, reconcile) into a store, and serves a fake Entra tenant over HTTPS
(`tests.servers.graph_fake`). A `World` changes the exports, syncs, plans, pushes, and checks that the
tenant is exactly what the directory says.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from directory_sync.azure.graph import GraphClient
from directory_sync.azure.mapping import UserMapper, load_people
from directory_sync.azure.plan import ExportPlan, desired_users, plan_export, wanted_members
from directory_sync.azure.push import PushResult, open_client, push
from directory_sync.config import Settings, load_settings
from directory_sync.store import Account, Store, open_store
from directory_sync.store.models import ExportState, ExportStatus
from directory_sync.sync import run_sync
from tests.hospitals import person, rpps, suffix_ldif, write_site
from tests.servers.graph_fake import FakeApp, GraphFake
from tests.servers.logscan import SECRETS

SECRET_ENV = "GHT_TEST_AZURE_SECRET"
SECRET = "s3cr3t~Value.From-The-Portal"
SECRETS.add(SECRET)  # never to be found in a log (tests/test_zz_log_secrets.py)
CLIENT_ID = "5b1e0c2a-ght-export"
DOMAIN = "ght-test.fr"
SITES = ("ch-orange", "ch-valreas", "ch-apt")
FINESS = {"ch-orange": "840000087", "ch-valreas": "840000095", "ch-apt": "840000020"}
NAMES = {"ch-orange": "CH d'Orange", "ch-valreas": "CH de Valréas", "ch-apt": "CH du Pays d'Apt"}
TEST_AZURE: dict[str, Any] = {
    "timeout": 2.0,
    "retry_base": 0.02,
    "concurrency": 2,
    "write_rate": 5000.0,
    "max_retries": 8,
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class World:
    """A GHT (LDIF hospitals -> directory) and its Entra tenant (the fake)."""

    def __init__(self, root: Path, database_url: str, fake: GraphFake) -> None:
        self.root = root
        self.database_url = database_url
        self.fake = fake
        self.entries: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {s: {} for s in SITES}
        self.azure: dict[str, Any] = {}
        self.configure()
        self._store: Store | None = None

    # -- the hospitals ---------------------------------------------------------------------------

    def hire(self, site: str, uid: str, sn: str, given: str, **attributes: Any) -> None:
        """Put (or replace) an account in a hospital's export."""
        self.entries[site][uid] = person(f"dc={site},dc=fr", uid, sn, given, **attributes)

    def leave(self, site: str, uid: str) -> None:
        del self.entries[site][uid]

    def sync(self) -> None:
        for site in SITES:
            suffix_ldif(self.root / f"{site}.ldif", f"dc={site},dc=fr", list(self.entries[site].values()))
        results = run_sync(self.settings, self.store, allow_closures=100_000)  # departures are on purpose
        assert all(r.ok for r in results), [r.error for r in results]

    # -- configuration ---------------------------------------------------------------------------

    def configure(self, **azure: Any) -> Path:
        """(Re)write ght.toml with an [azure] table pointing at the fake; `azure` overrides keys."""
        for site in SITES:
            write_site(
                self.root,
                site,
                {"kind": "ldif", "path": str(self.root / f"{site}.ldif"), "anchor": "dn"},
                name=NAMES[site],
                finess=FINESS[site],
            )
        self.azure = {
            "tenant_id": self.fake.tenant_id,
            "client_id": CLIENT_ID,
            "client_secret": {"env": SECRET_ENV},
            "domain": DOMAIN,
            "authority": self.fake.url,
            "graph_url": self.fake.url,
            "ca_file": str(self.fake.ca_file),
            **TEST_AZURE,
            **azure,
        }
        azure_table = {k: v for k, v in self.azure.items() if v is not None}
        lines = [
            f'database_url = "{self.database_url}"',
            'mappings_dir = "mappings"',
            f"sites = {_toml(list(SITES))}",
            "",
            "[azure]",
            *(
                f"{k} = {_toml(v)}"
                for k, v in azure_table.items()
                if not isinstance(v, dict) or k.endswith("secret") or k == "certificate"
            ),
        ]
        for key, value in azure_table.items():
            if isinstance(value, dict) and key not in ("client_secret", "certificate"):
                lines += ["", f"[azure.{key}]", *(f"{k} = {_toml(v)}" for k, v in value.items())]
        path = self.root / "ght.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    @property
    def config(self) -> Path:
        return self.root / "ght.toml"

    @property
    def settings(self) -> Settings:
        return load_settings(self.config)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.database_url)
        return self._store

    # -- export ------------------------------------------------------------------------------------

    def client(self) -> GraphClient:
        return open_client(self.settings)

    def plan(self, **kwargs: Any) -> ExportPlan:
        return plan_export(self.settings, self.store, **kwargs)

    def push(self, **kwargs: Any) -> PushResult:
        return push(self.settings, self.store, **kwargs)

    def person_id(self, site: str, uid: str) -> str:
        with self.store.session() as session:
            account = session.query(Account).filter_by(site=site, login=uid).one()
            return account.person_id

    def state(self, person_id: str) -> ExportState | None:
        with self.store.session() as session:
            return session.get(ExportState, person_id)

    def cloud_user(self, site: str, uid: str) -> dict[str, Any]:
        """The one live cloud user of the person behind SITE\\uid."""
        found = self.fake.users_by_employee_id().get(self.person_id(site, uid)[:16], [])
        assert len(found) == 1, f"{len(found)} cloud users for {site}\\{uid}"
        return found[0]

    def group(self, key: str) -> dict[str, Any]:
        kind, _, value = key.partition(":")
        nickname = {"site": "ght-site-", "profession": "ght-prof-", "role": "ght-role-"}[kind] + value
        group = self.fake.group_by_nickname(nickname)
        assert group is not None, f"no group {nickname}"
        return group

    def members(self, key: str) -> set[str]:
        """UPNs of the members of a managed group, as the tenant holds them."""
        ids = self.fake.member_ids(self.group(key)["id"])
        return {u["userPrincipalName"] for u in self.fake.users.values() if u["id"] in ids}

    def assert_tenant_is_the_directory(self, *, others: int = 0) -> None:
        """The tenant holds exactly what the directory says: one user per exported person with the
        planned values, no duplicate, every managed group with exactly its members."""
        settings = self.settings
        assert settings.azure is not None
        mapper = UserMapper(settings.azure, settings.professions)
        with self.store.session() as session:
            states = {s.person_id: s for s in session.query(ExportState)}
            desired, _ = desired_users(load_people(session), states, mapper)
        by_employee_id = self.fake.users_by_employee_id()
        duplicates = {k: len(v) for k, v in by_employee_id.items() if k and len(v) > 1}
        assert not duplicates, f"duplicate cloud users: {duplicates}"
        exported = {
            p: d
            for p, d in desired.items()
            if d.active or (p in states and states[p].status == ExportStatus.EXPORTED)
        }
        for user in exported.values():
            (cloud,) = by_employee_id[user.employee_id]
            for name, value in user.fields.items():
                if name.startswith("onPremisesExtensionAttributes."):
                    actual = cloud["onPremisesExtensionAttributes"][name.split(".", 1)[1]]
                else:
                    actual = cloud[name]
                assert actual == value, f"{user.upn}: {name} is {actual!r}, the directory says {value!r}"
        assert len(self.fake.users) == len(exported) + others
        for key, people in wanted_members(desired).items():
            assert self.members(key) == {desired[p].upn for p in people}, key
        plan = self.plan()
        assert plan.empty, plan.summary()


@contextlib.contextmanager
def azure_world(root: Path, database_url: str | None = None, **fake_options: Any) -> Iterator[World]:
    """A `World` with a fake tenant whose app is ours (secret in $GHT_TEST_AZURE_SECRET)."""
    os.environ[SECRET_ENV] = SECRET
    options: dict[str, Any] = {"apps": [FakeApp(CLIENT_ID, secret=SECRET)], "domains": {DOMAIN: False}}
    options.update(fake_options)
    fake = GraphFake(**options).start(root)
    try:
        yield World(root, database_url or f"sqlite:///{root}/ght.db", fake)
    finally:
        fake.stop()


def small_ght(world: World) -> None:
    """Eight people in three hospitals: a doctor at all three, a nurse at two, homonyms, accents."""
    doctor, nurse = rpps(1), rpps(2)
    world.hire("ch-orange", "hlefevre", "LEFÈVRE", "Hélène", rpps=doctor, title="Médecin", ou="Cardiologie")
    world.hire("ch-valreas", "helene.lefevre", "Lefevre", "Helene", rpps=doctor, title="Médecin")
    world.hire("ch-apt", "hlefevre2", "Lefèvre", "Hélène", rpps=doctor, title="Praticien hospitalier")
    world.hire("ch-orange", "pgarcia", "Garcia", "Paul", rpps=nurse, title="Infirmier", ou="Urgences")
    world.hire("ch-apt", "paul.garcia", "Garcia", "Paul", rpps=nurse, title="Infirmier", ou="Urgences")
    world.hire("ch-orange", "mdupont", "Dupont", "Marie", title="Aide-soignante", ou="Gériatrie")
    world.hire("ch-valreas", "mdupont", "Dupont", "Marie", title="Sage-femme", ou="Maternité")
    world.hire("ch-valreas", "jndiaye", "N'Diaye", "Jean-Baptiste", title="Infirmière", ou="Bloc")
    world.hire(
        "ch-apt", "cdelafontaine", "de La Fontaine", "Cécile", title="Secrétaire médicale", ou="Accueil"
    )
    world.hire("ch-apt", "aoeuvre", "Œuvray", "Anaïs", title="Infirmière", ou="Pédiatrie")
    world.sync()
