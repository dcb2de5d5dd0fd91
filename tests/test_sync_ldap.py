"""End to end against real slapd: three hospitals' directories become one territorial directory.

Every test here runs against both stores (SQLite and PostgreSQL) through the `database_url` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ldap3
import pytest
from sqlalchemy import func, select

from directory_sync.config import load_settings
from directory_sync.store import Account, Affiliation, Person, Site, Store, open_store
from directory_sync.sync import run_sync
from tests.hospitals import ldap_connection, person, rpps, suffix_ldif, write_config, write_site
from tests.servers.slapd import SlapdServer, Suffix

SITES = {
    "ch-avignon": "dc=ch-avignon,dc=fr",
    "ch-cavaillon": "dc=ch-cavaillon,dc=fr",
    "ch-apt": "dc=ch-apt,dc=fr",
}
DOCTOR_RPPS = rpps(1)


def staff(code: str, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    entries = {
        "ch-avignon": [
            person(
                suffix,
                "jmartin",
                "MARTIN",
                "Jérôme",
                rpps=DOCTOR_RPPS,
                title="Praticien hospitalier",
                ou="Cardiologie",
            ),
            person(suffix, "mhdupont", "Dupont", "Marie-Hélène", title="Infirmière"),
            person(suffix, "andiaye", "N'Diaye", "Aminata", title="Aide-soignante", ou="Gériatrie"),
        ],
        "ch-cavaillon": [
            person(
                suffix,
                "jerome.martin",
                "Martin",
                "Jerome",
                rpps="8" + DOCTOR_RPPS,
                title="Médecin",
                ou="Urgences",
            ),
            person(
                suffix,
                "fdelatour",
                "de La Tour",
                "Françoise",
                rpps=rpps(2),
                title="Sage-femme",
                ou="Maternité",
            ),
        ],
        "ch-apt": [
            person(suffix, "JMARTIN1", "MARTIN", "JEROME", rpps=DOCTOR_RPPS, title="Médecin", ou="SMUR"),
            person(suffix, "cdamico", "D'Amico", "Chloé", title="Secrétaire médicale", ou="Direction"),
        ],
    }
    return entries[code]


@pytest.fixture
def ght(
    tmp_path: Path, slapd_factory: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """One slapd serving three hospitals, their mappings, and a ght.toml on the test's database."""
    suffixes = [
        Suffix(suffix, suffix_ldif(tmp_path / f"{code}.ldif", suffix, staff(code, suffix)))
        for code, suffix in SITES.items()
    ]
    server: SlapdServer = slapd_factory(suffixes, limited_size=2)
    monkeypatch.setenv("GHT_TEST_BIND_PASSWORD", server.reader_password)
    for code, suffix in SITES.items():
        write_site(tmp_path, code, ldap_connection(server, suffix, "GHT_TEST_BIND_PASSWORD"))
    config = write_config(tmp_path, list(SITES), database_url)
    return {"server": server, "settings": load_settings(config), "store": open_store(database_url)}


def count(store: Store, model: Any, *where: Any) -> int:
    with store.session() as session:
        return session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_one_person_working_at_three_hospitals_is_one_person_with_three_affiliations(
    ght: dict[str, Any],
) -> None:
    results = run_sync(ght["settings"], ght["store"])
    assert [r.status for r in results] == ["succeeded"] * 3, [r.error for r in results]
    assert [(r.read, r.created, r.linked) for r in results] == [(3, 3, 0), (2, 1, 1), (2, 1, 1)]
    store: Store = ght["store"]
    with store.session() as session:
        doctor = session.execute(select(Person).where(Person.rpps == DOCTOR_RPPS)).scalar_one()
        affiliations = (
            session.execute(
                select(Affiliation).where(Affiliation.person_id == doctor.id).order_by(Affiliation.site)
            )
            .scalars()
            .all()
        )
    # Names come from the site where the doctor was first known (Avignon, read first).
    assert (doctor.family_name, doctor.given_name, doctor.status) == ("Martin", "Jérôme", "active")
    assert [(a.site, a.profession, a.department, a.active) for a in affiliations] == [
        ("ch-apt", "10", "SMUR", True),
        ("ch-avignon", "10", "Cardiologie", True),
        ("ch-cavaillon", "10", "Urgences", True),
    ]
    assert count(store, Person) == 5
    assert count(store, Account) == 7


def test_a_second_run_with_no_source_change_changes_nothing(ght: dict[str, Any]) -> None:
    run_sync(ght["settings"], ght["store"])
    with ght["store"].session() as session:
        before = [
            (p.id, p.updated_at, p.status)
            for p in session.execute(select(Person).order_by(Person.id)).scalars()
        ]
    results = run_sync(ght["settings"], ght["store"], full=True)  # deltas: tests/test_delta_ldap.py
    assert [(r.unchanged, r.created, r.linked, r.updated, r.closed) for r in results] == [
        (3, 0, 0, 0, 0),
        (2, 0, 0, 0, 0),
        (2, 0, 0, 0, 0),
    ]
    with ght["store"].session() as session:
        after = [
            (p.id, p.updated_at, p.status)
            for p in session.execute(select(Person).order_by(Person.id)).scalars()
        ]
    assert after == before


def test_a_site_renamed_in_its_mapping_is_renamed_in_the_directory_at_its_next_run(
    ght: dict[str, Any], tmp_path: Path
) -> None:
    run_sync(ght["settings"], ght["store"])
    server: SlapdServer = ght["server"]
    write_site(
        tmp_path,
        "ch-apt",
        ldap_connection(server, SITES["ch-apt"], "GHT_TEST_BIND_PASSWORD"),
        name="Centre hospitalier du pays d'Apt",
        finess="840000111",
    )
    settings = load_settings(tmp_path / "ght.toml")
    results = run_sync(settings, ght["store"])  # a full read: the mapping changed
    assert [r.status for r in results] == ["succeeded"] * 3
    with ght["store"].session() as session:
        sites = {s.code: (s.name, s.finess) for s in session.execute(select(Site)).scalars()}
    assert sites == {
        "ch-apt": ("Centre hospitalier du pays d'Apt", "840000111"),
        "ch-avignon": ("Centre hospitalier ch-avignon", "840000087"),
        "ch-cavaillon": ("Centre hospitalier ch-cavaillon", "840000087"),
    }


def _modify(
    server: SlapdServer, suffix: str, action: str, dn: str, changes: dict[str, Any] | None = None
) -> None:
    with ldap3.Connection(server.url, server.root_dn(suffix), server.root_password, auto_bind=True) as conn:
        if action == "delete":
            assert conn.delete(dn), conn.result
        else:
            assert conn.modify(dn, {k: [(ldap3.MODIFY_REPLACE, [v])] for k, v in (changes or {}).items()}), (
                conn.result
            )


def test_changes_in_a_source_update_the_account_and_the_affiliation(ght: dict[str, Any]) -> None:
    run_sync(ght["settings"], ght["store"])
    suffix = SITES["ch-avignon"]
    _modify(ght["server"], suffix, "modify", f"uid=mhdupont,ou=people,{suffix}", {"ou": "Réanimation"})
    (result,) = run_sync(ght["settings"], ght["store"], sites=["ch-avignon"], full=True)
    assert (result.updated, result.unchanged) == (1, 2)
    with ght["store"].session() as session:
        account = session.execute(select(Account).where(Account.login == "mhdupont")).scalar_one()
        affiliation = session.execute(
            select(Affiliation).where(Affiliation.person_id == account.person_id)
        ).scalar_one()
    assert affiliation.department == "Réanimation"


def test_an_account_gone_from_a_complete_read_closes_its_affiliation_and_suspends_the_person(
    ght: dict[str, Any],
) -> None:
    run_sync(ght["settings"], ght["store"])
    avignon, apt = SITES["ch-avignon"], SITES["ch-apt"]
    _modify(ght["server"], avignon, "delete", f"uid=mhdupont,ou=people,{avignon}")
    _modify(ght["server"], apt, "delete", f"uid=JMARTIN1,ou=people,{apt}")
    results = run_sync(ght["settings"], ght["store"])
    assert [(r.site, r.closed, r.suspended) for r in results] == [
        ("ch-avignon", 1, 1),
        ("ch-cavaillon", 0, 0),
        ("ch-apt", 1, 0),
    ]
    with ght["store"].session() as session:
        nurse = session.execute(select(Person).where(Person.given_name == "Marie-Hélène")).scalar_one()
        doctor = session.execute(select(Person).where(Person.rpps == DOCTOR_RPPS)).scalar_one()
        doctor_sites = session.execute(
            select(Affiliation.site, Affiliation.active).where(Affiliation.person_id == doctor.id)
        ).all()
    # Suspended, not deleted: the person and the history stay.
    assert (nurse.status, nurse.suspended_at is not None) == ("suspended", True)
    assert doctor.status == "active"
    assert sorted(doctor_sites) == [("ch-apt", False), ("ch-avignon", True), ("ch-cavaillon", True)]

    # The nurse comes back: the same entry (same entryUUID is impossible after a delete, so a new one)
    # would create a new account; restoring the old one is the reappearing case tested in reconcile.


@pytest.mark.parametrize("failure", ["server down", "wrong password", "search cut short", "time-out"])
def test_a_source_that_fails_changes_nobody(
    ght: dict[str, Any], failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store, server = ght["settings"], ght["store"], ght["server"]
    run_sync(settings, store)
    with store.session() as session:
        before = sorted((a.anchor, a.state) for a in session.execute(select(Account)).scalars())
    suffix = SITES["ch-avignon"]
    if failure == "server down":
        server.stop()
    elif failure == "wrong password":
        monkeypatch.setenv("GHT_TEST_BIND_PASSWORD", "not-the-password")
    elif failure == "search cut short":
        write_site(
            settings.mappings_dir.parent,
            "ch-avignon",
            ldap_connection(
                server, suffix, "GHT_TEST_BIND_PASSWORD", bind_dn=server.limited_dn(suffix), page_size=2
            ),
        )
    else:
        server.pause()
    try:
        (result,) = run_sync(settings, store, sites=["ch-avignon"], full=True)
    finally:
        if failure == "time-out":
            server.resume()
    assert result.status == "failed"
    expected = {
        "server down": "cannot connect",
        "wrong password": "invalid credentials",
        "search cut short": "size limit",
        "time-out": "time-out",
    }[failure]
    assert expected in result.error
    assert result.url == server.url
    with store.session() as session:
        after = sorted((a.anchor, a.state) for a in session.execute(select(Account)).scalars())
    assert after == before


def test_dry_run_plans_without_writing(ght: dict[str, Any]) -> None:
    results = run_sync(ght["settings"], ght["store"], dry_run=True)
    # Each site is planned as if the sites before it had been applied: the same as a real run.
    assert [(r.created, r.linked) for r in results] == [(3, 0), (1, 1), (1, 1)]
    assert count(ght["store"], Person) == 0
