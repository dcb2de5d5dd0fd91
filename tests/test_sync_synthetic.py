"""A generated GHT in real slapd, synchronised end to end and checked against the generator's truth.

Three hospitals storing staff three different ways (directory_sync.synthetic), one read over LDAPS,
one over StartTLS, one in clear; loaded with `slapadd -q`. The first slice links accounts only by
anchor and valid RPPS: it must never put two different people together (wrong merge), and it must
link every person whose RPPS is recorded, valid, at several sites.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from directory_sync.config import load_settings
from directory_sync.identifiers import normalize_rpps
from directory_sync.store import Account, Affiliation, Person, open_store
from directory_sync.sync import run_sync
from directory_sync.synthetic import SiteSpec, SyntheticGHT, generate
from tests.servers.slapd import SlapdServer, Suffix


@pytest.fixture
def synthetic(tmp_path: Path, slapd_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    ght = generate(seed=7, sites=3, accounts=900)
    suffixes = []
    for spec in ght.sites:
        path = tmp_path / f"{spec.code}.ldif"
        ght.write_ldif(spec.code, path)
        suffixes.append(Suffix(spec.suffix, path))
    server: SlapdServer = slapd_factory(suffixes)
    monkeypatch.setenv("GHT_SYNTH_PASSWORD", server.reader_password)
    transports = ["ldaps", "starttls", "clear"]

    def connection_for(spec: SiteSpec) -> dict[str, Any]:
        transport = transports[[s.code for s in ght.sites].index(spec.code)]
        return {
            "kind": "ldap",
            "url": server.ldaps_url if transport == "ldaps" else server.url,
            "bind_dn": server.reader_dn(spec.suffix),
            "bind_password": {"env": "GHT_SYNTH_PASSWORD"},
            "base_dn": f"ou=people,{spec.suffix}",
            "page_size": 100,
            "tls": {"ca_file": str(server.ca_file), "start_tls": transport == "starttls"},
        }

    ght.write_mappings(tmp_path / "mappings", connection_for)
    codes = tmp_path / "mappings" / "codes"
    codes.mkdir(exist_ok=True)
    (codes / "g15.yaml").write_text((Path(__file__).parents[1] / "mappings/codes/g15.yaml").read_text())
    config = tmp_path / "ght.toml"
    quoted = ", ".join(f'"{s.code}"' for s in ght.sites)
    config.write_text(f'database_url = "{database_url}"\nsites = [{quoted}]\n')
    return ght, load_settings(config), open_store(database_url)


def test_a_synthetic_ght_syncs_without_wrong_merges_and_links_every_shared_rpps(synthetic: Any) -> None:
    ght, settings, store = synthetic
    ght: SyntheticGHT
    results = run_sync(settings, store)
    assert all(r.ok for r in results), [r.error for r in results]
    assert sum(r.read for r in results) == ght.account_count == 900
    assert sum(r.errors for r in results) == 0

    truth_of = {(site, anchor): key for key, accounts in ght.truth.items() for site, anchor in accounts}
    with store.session() as session:
        accounts = session.execute(select(Account.site, Account.anchor, Account.person_id)).all()
        people = {p.id: p for p in session.execute(select(Person)).scalars()}
        affiliations = session.execute(select(Affiliation.person_id, Affiliation.site)).all()
    assert len(accounts) == 900

    humans_of_person: dict[str, set[str]] = defaultdict(set)
    for site, anchor, person_id in accounts:
        human = truth_of[(site, anchor)]
        humans_of_person[person_id].add(human)
    wrong_merges = {p: h for p, h in humans_of_person.items() if len(h) > 1}
    assert wrong_merges == {}

    # Every human whose valid RPPS is recorded at two or more sites: those accounts are one person.
    person_of = {(site, anchor): person_id for site, anchor, person_id in accounts}
    with_rpps: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for spec in ght.sites:
        for account in ght.accounts(spec.code):
            values = [
                v
                for k, vs in account.attributes.items()
                if k in ("businessCategory", "employeeType")
                for v in vs
            ]
            if any(normalize_rpps(v) for v in values):
                with_rpps[account.person].add((spec.code, account.entry_uuid))
    shared = {human: keys for human, keys in with_rpps.items() if len({site for site, _ in keys}) > 1}
    assert shared, "the generator should put some doctors with RPPS at several sites"
    for human, keys in shared.items():
        assert len({person_of[key] for key in keys}) == 1, human

    # Unicode survives the whole path: accented names from the hospitals that keep them.
    assert any(any(c in (p.given_name or "") for c in "éèëïôç") for p in people.values())
    assert len(affiliations) == len({(p, s) for p, s in affiliations})  # one per person and site


def test_rerunning_a_synthetic_ght_changes_nothing(synthetic: Any) -> None:
    _, settings, store = synthetic
    run_sync(settings, store)
    for full in (True, False):  # a complete read, then a delta from the stored watermark
        again = run_sync(settings, store, full=full)
        assert [(r.created, r.linked, r.updated, r.closed) for r in again] == [(0, 0, 0, 0)] * 3
        assert sum(r.unchanged for r in again) == (900 if full else 0)
