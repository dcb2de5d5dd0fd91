"""Correlation and safe reconciliation: one person per human, never two humans merged by guess.

Each test builds a small GHT from LDIF exports (attributes as HR systems hand them over, birth dates
included), syncs it, and checks who ended up with whom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from sqlalchemy import inspect, select, text

from directory_sync.config import CorrelationConfig, load_settings
from directory_sync.correlate import PersonIndex, Probe, Verdict, normalise_family, normalise_given
from directory_sync.mapping import MappedAccount
from directory_sync.reconcile import LoginAllocator, RunContext, read_lookups
from directory_sync.store import Account, AuditEvent, Person, ReviewCase, Store, open_store
from directory_sync.store.database import _alembic_config
from directory_sync.sync import run_sync
from tests.hospitals import rpps
from tests.servers.slapd import ldif_entry

ATTRIBUTES = {
    "login": "uid",
    "family_name": {"from": "sn", "transforms": ["trim", "name_case"]},
    "given_name": {"from": "givenName", "transforms": ["trim", "name_case"]},
    "birth_name": {"from": "birthName", "transforms": ["trim", "name_case"]},
    "birth_date": "birthDate",
    "email": {"from": "mail", "transforms": ["trim", "lower"]},
    "rpps": {"from": "rpps", "transforms": ["digits"]},
    "profession": {"from": "title", "transforms": ["trim", "lower", {"map": "jobs"}]},
    "department": "ou",
}
JOBS = {"infirmière": "60", "infirmier": "60", "médecin": "10", "secrétaire": ""}


class Ght:
    """A GHT of LDIF exports that tests edit between runs."""

    def __init__(
        self, root: Path, database_url: str, sites: list[str], *, site_by_site: bool = False
    ) -> None:
        self.root, self.sites = root, sites
        self.site_by_site = site_by_site  # each site in a run of its own: earlier sites come from the store
        self.entries: dict[str, dict[str, dict[str, Any]]] = {site: {} for site in sites}
        (root / "mappings").mkdir(parents=True, exist_ok=True)
        for site in sites:
            document = {
                "site": {"name": f"CH {site}", "finess": "840000087"},
                "connection": {"kind": "ldif", "path": f"../{site}.ldif", "anchor": "uid"},
                "attributes": ATTRIBUTES,
                "value_maps": {"jobs": JOBS},
            }
            (root / "mappings" / f"{site}.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
        quoted = ", ".join(f'"{s}"' for s in sites)
        (root / "ght.toml").write_text(f'database_url = "{database_url}"\nsites = [{quoted}]\n')
        self.store: Store = open_store(database_url)

    def put(self, site: str, uid: str, sn: str, given: str, **attributes: str) -> None:
        self.entries[site][uid] = {
            "objectClass": "inetOrgPerson",
            "uid": uid,
            "sn": sn,
            "givenName": given,
            "cn": f"{given} {sn}",
            "title": attributes.pop("title", "Infirmière"),
            **attributes,
        }

    def remove(self, site: str, uid: str) -> None:
        del self.entries[site][uid]

    def sync(self, **options: Any) -> list[Any]:
        for site, entries in self.entries.items():
            text = "".join(
                ldif_entry(f"uid={uid},ou=people,dc={site},dc=fr", attrs) for uid, attrs in entries.items()
            )
            (self.root / f"{site}.ldif").write_text(text, encoding="utf-8")
        settings = load_settings(self.root / "ght.toml")
        if self.site_by_site and not options.get("dry_run"):
            return [r for site in self.sites for r in run_sync(settings, self.store, sites=[site], **options)]
        return run_sync(settings, self.store, **options)

    def person_of(self, site: str, uid: str) -> Person:
        with self.store.session() as session:
            account = session.execute(
                select(Account).where(Account.site == site, Account.login == uid)
            ).scalar_one()
            person = session.get(Person, account.person_id)
            assert person is not None
            return person

    def cases(self) -> list[ReviewCase]:
        with self.store.session() as session:
            return list(session.execute(select(ReviewCase)).scalars())


@pytest.fixture(params=["look-up", "read-all"])
def ght(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Ght:
    """Each case twice: the directory read whole when a run first needs it (as a first run does), and
    each site synced in a run of its own that looks its candidates and taken logins up by key in the
    directory (as a delta does): the decisions must not differ."""
    look_up = request.param == "look-up"
    monkeypatch.setattr(PersonIndex, "BULK_FRACTION", 1e9 if look_up else 0.0)
    monkeypatch.setattr(LoginAllocator, "BULK_AFTER", 10**9 if look_up else 0)
    return Ght(tmp_path, f"sqlite:///{tmp_path}/ght.db", ["ch-a", "ch-b", "ch-c"], site_by_site=look_up)


def test_name_normalisation() -> None:
    assert (
        normalise_given("Marie-Hélène") == normalise_given("MARIE HELENE") == normalise_given("marie-helene")
    )
    assert normalise_family("de La Tour") == normalise_family("DE LA TOUR") == normalise_family("Tour")
    assert normalise_family("N'Diaye") == normalise_family("NDIAYE")
    assert normalise_family("Martin-Roux") == normalise_family("MARTIN ROUX")


def test_territorial_logins_are_ascii_unique_and_never_reused() -> None:
    logins = LoginAllocator({"marie-helene.dupont"})
    assert logins.allocate("Marie-Hélène", "Dupont") == "marie-helene.dupont2"
    assert logins.allocate("Marie-Hélène", "Dupont") == "marie-helene.dupont3"
    assert logins.allocate("Aminata", "N'Diaye") == "aminata.ndiaye"
    assert logins.allocate("Françoise", "de La Tour") == "francoise.de-la-tour"
    assert logins.allocate(None, "Ørsted") == "orsted"
    assert len(logins.allocate("A" * 80, "B" * 80)) <= 64


def test_the_same_person_spelt_three_ways_with_a_birth_date_is_one_person(ght: Ght) -> None:
    ght.put("ch-a", "mhdupont", "Dupont", "Marie-Hélène", birthDate="1980-02-03")
    ght.put("ch-b", "marie.dupont", "DUPONT", "Marie Helene", birthDate="1980-02-03")
    ght.put("ch-c", "DUPOMA1", "DUPONT", "MARIE-HELENE", birthDate="1980-02-03")
    results = ght.sync()
    assert [(r.created, r.linked, r.reviews) for r in results] == [(1, 0, 0), (0, 1, 0), (0, 1, 0)]
    person = ght.person_of("ch-a", "mhdupont")
    assert ght.person_of("ch-b", "marie.dupont").id == ght.person_of("ch-c", "DUPOMA1").id == person.id
    assert (person.login, person.given_name) == ("marie-helene.dupont", "Marie-Hélène")


def test_homonyms_with_different_birth_dates_are_never_merged_nor_reviewed(ght: Ght) -> None:
    ght.put("ch-a", "jmartin", "Martin", "Julie", birthDate="1975-05-01")
    ght.put("ch-b", "julie.martin", "Martin", "Julie", birthDate="1991-11-30")
    results = ght.sync()
    assert [(r.created, r.linked, r.reviews) for r in results[:2]] == [(1, 0, 0), (1, 0, 0)]
    a, b = ght.person_of("ch-a", "jmartin"), ght.person_of("ch-b", "julie.martin")
    assert a.id != b.id and {a.login, b.login} == {"julie.martin", "julie.martin2"}


def test_same_names_without_birth_dates_go_to_review_not_to_a_merge(ght: Ght) -> None:
    ght.put("ch-a", "jmartin", "Martin", "Julie")
    ght.put("ch-b", "julie.martin", "MARTIN", "JULIE")
    results = ght.sync()
    assert [(r.created, r.linked, r.reviews) for r in results[:2]] == [(1, 0, 0), (1, 0, 1)]
    (case,) = ght.cases()
    assert case.candidates[0]["person"] == ght.person_of("ch-a", "jmartin").id
    assert case.candidates[0]["rule"] == "fuzzy_name"
    assert "same names" in case.candidates[0]["evidence"]
    assert ght.person_of("ch-b", "julie.martin").id != ght.person_of("ch-a", "jmartin").id


def test_a_marriage_name_is_matched_through_the_birth_name(ght: Ght) -> None:
    ght.put("ch-a", "cmoreau", "Moreau", "Claire", birthName="Lefebvre", birthDate="1985-07-14")
    ght.put("ch-b", "claire.lefebvre", "Lefebvre", "Claire", birthDate="1985-07-14")
    ght.sync()
    assert ght.person_of("ch-a", "cmoreau").id == ght.person_of("ch-b", "claire.lefebvre").id


def test_an_account_renamed_at_its_site_is_found_under_its_new_name(ght: Ght) -> None:
    ght.put("ch-a", "cmoreau", "Moreau", "Claire", birthDate="1985-07-14", ou="Urgences")
    ght.sync()
    ght.put("ch-a", "cmoreau", "Lefebvre", "Claire", birthDate="1985-07-14", ou="Urgences")
    ght.sync()
    ght.put("ch-a", "cmoreau", "Lefebvre", "Claire", birthDate="1985-07-14", ou="Réanimation")  # not a name
    ght.sync()
    ght.put("ch-b", "claire.lefebvre", "Lefebvre", "Claire", birthDate="1985-07-14")
    results = ght.sync()
    assert (results[1].created, results[1].linked) == (0, 1)
    person = ght.person_of("ch-b", "claire.lefebvre")
    assert person.id == ght.person_of("ch-a", "cmoreau").id and person.family_name == "Lefebvre"


def test_an_rpps_present_at_one_site_only_still_links_by_names_and_birth_date(ght: Ght) -> None:
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=rpps(11), title="Médecin", birthDate="1970-01-20")
    ght.put("ch-b", "paul.garcia", "Garcia", "Paul", title="Médecin", birthDate="1970-01-20")
    ght.sync()
    person = ght.person_of("ch-b", "paul.garcia")
    assert person.id == ght.person_of("ch-a", "pgarcia").id and person.rpps == rpps(11)


def test_an_rpps_with_a_typo_is_not_used_to_match(ght: Ght) -> None:
    valid = rpps(12)
    typo = valid[:-1] + str((int(valid[-1]) + 1) % 10)
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=valid, title="Médecin")
    ght.put("ch-b", "lbernard", "Bernard", "Luc", rpps=typo, title="Médecin")
    results = ght.sync()
    assert results[1].warnings == 1 and results[1].created == 1
    assert ght.person_of("ch-b", "lbernard").rpps is None


def test_two_people_claiming_one_rpps_are_a_review_case_not_a_merge(ght: Ght) -> None:
    shared = rpps(13)
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=shared, title="Médecin")
    ght.put("ch-b", "amoreau", "Moreau", "Anne", rpps=shared, title="Médecin")
    results = ght.sync()
    assert (results[1].linked, results[1].reviews) == (0, 1)
    (case,) = ght.cases()
    assert case.candidates[0]["evidence"] == [f"RPPS {shared}", "but the names differ"]


def test_a_conflicting_rpps_vetoes_even_identical_names_and_birth_dates(ght: Ght) -> None:
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=rpps(14), title="Médecin", birthDate="1970-01-20")
    ght.put("ch-b", "paul.garcia", "Garcia", "Paul", rpps=rpps(15), title="Médecin", birthDate="1970-01-20")
    results = ght.sync()
    assert (results[1].created, results[1].linked, results[1].reviews) == (1, 0, 0)


def test_a_person_leaving_one_site_and_joining_another_stays_one_person(ght: Ght) -> None:
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=rpps(16), title="Médecin")
    ght.sync()
    person = ght.person_of("ch-a", "pgarcia")
    ght.remove("ch-a", "pgarcia")
    ght.put("ch-a", "other", "Other", "Someone")  # the site is not empty
    ght.sync()
    assert ght.person_of("ch-a", "pgarcia").status == "suspended"
    ght.put("ch-c", "PGARCIA", "GARCIA", "PAUL", rpps=rpps(16), title="Médecin")
    ght.sync()
    back = ght.person_of("ch-c", "PGARCIA")
    assert (back.id, back.status, back.suspended_at) == (person.id, "active", None)


def test_review_link_and_split_are_remembered(ght: Ght, monkeypatch: pytest.MonkeyPatch) -> None:
    from directory_sync import review

    ght.put("ch-a", "jmartin", "Martin", "Julie")
    ght.put("ch-b", "julie.martin", "Martin", "Julie")
    ght.sync()
    (case,) = ght.cases()
    settings = load_settings(ght.root / "ght.toml")
    target = ght.person_of("ch-a", "jmartin").id
    with ght.store.session() as session:
        review.link(session, case.id or 0, target, "jdupont", settings.correlation, "checked with HR")
    assert ght.person_of("ch-b", "julie.martin").id == target
    with ght.store.session() as session:
        provisional = session.get(Person, case.person_id)
        assert provisional is not None and (provisional.status, provisional.merged_into) == ("merged", target)
    assert [r.reviews for r in ght.sync()] == [0, 0, 0]  # not reopened

    with ght.store.session() as session:
        from directory_sync.reconcile import RunContext

        logins = RunContext.load(session, settings.correlation).logins
        new_id = review.split(
            session, target, "ch-b", "julie.martin", "jdupont", settings.correlation, logins
        )
    assert ght.person_of("ch-b", "julie.martin").id == new_id
    results = ght.sync()
    assert [(r.linked, r.reviews) for r in results] == [(0, 0)] * 3
    assert ght.person_of("ch-b", "julie.martin").id == new_id  # never relinked to the person it left
    with ght.store.session() as session:
        actions = [
            e.action
            for e in session.execute(select(AuditEvent).where(AuditEvent.actor == "admin:jdupont")).scalars()
        ]
    assert {"review.linked", "account.split", "person.created"} <= set(actions)


def test_a_site_returning_nothing_trips_the_threshold_and_changes_nothing(ght: Ght) -> None:
    for i in range(5):
        ght.put("ch-a", f"user{i}", f"Nom{i}", "Jean")
    ght.sync()
    ght.entries["ch-a"] = {}
    (result, *_) = ght.sync()
    assert result.status == "failed" and result.closed == 5
    assert "stopped before applying: the source returned no account at all" in (result.error or "")
    assert "--allow-deletes 5" in (result.error or "")
    assert ght.person_of("ch-a", "user0").status == "active"
    (result, *_) = ght.sync(allow_closures=5)
    assert result.ok and ght.person_of("ch-a", "user0").status == "suspended"


def test_the_percentage_threshold_counts_against_the_site(ght: Ght) -> None:
    for i in range(30):
        ght.put("ch-a", f"user{i}", f"Nom{i}", "Jean")
    ght.sync()
    for i in range(4):  # 4 of 30 = 13% > 10%
        ght.remove("ch-a", f"user{i}")
    (result, *_) = ght.sync()
    assert result.status == "failed"
    assert "would close 4 of 30 accounts (13%), more than max_closure_percent = 10%" in (result.error or "")


def test_every_change_is_audited_with_its_cause(ght: Ght) -> None:
    ght.put("ch-a", "pgarcia", "Garcia", "Paul", rpps=rpps(17), title="Médecin", ou="SMUR")
    ght.put("ch-b", "paul.garcia", "Garcia", "Paul", rpps=rpps(17), title="Médecin")
    ght.sync()
    ght.entries["ch-a"]["pgarcia"]["ou"] = "Urgences"
    ght.sync()
    person = ght.person_of("ch-a", "pgarcia")
    with ght.store.session() as session:
        events = (
            session.execute(
                select(AuditEvent).where(AuditEvent.person_id == person.id).order_by(AuditEvent.id)
            )
            .scalars()
            .all()
        )
    described = [(e.action, e.site) for e in events]
    assert described[:2] == [("person.created", "ch-a"), ("account.linked", "ch-b")]
    linked = events[1]
    assert linked.changes["rule"]["to"] == "national_id" and linked.reason.startswith("national_id")
    updated = next(e for e in events if e.action == "affiliation.updated")
    assert updated.changes == {"department": {"from": "SMUR", "to": "Urgences"}}
    assert all(e.actor.startswith("sync run ") and e.run_id for e in events)


def test_after_the_grace_period_a_suspended_person_is_deprovisioned_and_can_be_restored(ght: Ght) -> None:
    from datetime import timedelta

    from directory_sync.people import restore_person
    from directory_sync.store import utcnow

    for i in range(3):
        ght.put("ch-a", f"user{i}", f"Nom{i}", "Jean")
    ght.sync()
    ght.remove("ch-a", "user0")
    ght.sync(allow_closures=1)
    leaver = ght.person_of("ch-a", "user0")
    assert leaver.status == "suspended"
    with ght.store.session() as session:  # 31 days later
        person = session.get(Person, leaver.id)
        assert person is not None
        person.suspended_at = utcnow() - timedelta(days=31)
        session.commit()
    ght.sync()
    gone = ght.person_of("ch-a", "user0")
    assert (gone.status, gone.deprovisioned_at is not None, gone.login) == (
        "deprovisioned",
        True,
        leaver.login,
    )
    with ght.store.session() as session:
        restored = restore_person(
            session, gone.id, "jdupont", load_settings(ght.root / "ght.toml").correlation
        )
        actions = [
            e.action
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.person_id == gone.id).order_by(AuditEvent.id)
            ).scalars()
        ]
    assert (restored.person.status, restored.person.deprovisioned_at) == ("active", None)  # account reopened
    assert actions.index("person.deprovisioned") < actions.index("person.restored")


def test_upgrading_a_directory_files_its_accounts_under_their_correlation_keys(ght: Ght) -> None:
    """A directory from before the correlation keys gets them on `ght db upgrade`: the same keys a
    sync files, so the first run after the upgrade finds its candidates by key."""
    ght.put("ch-a", "mdupont", "Dupont", "Marie", rpps=rpps(1), mail="m.dupont@ch-a.fr")
    ght.put("ch-b", "jmartin", "Martin", "Jean", birthDate="1980-02-03")
    ght.sync()

    def keys() -> list[tuple[int, int]]:
        with ght.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT key_hash, account_id FROM correlation_key"))
            return sorted((h, a) for h, a in rows)

    filed = keys()
    assert len(filed) >= 2 * 4  # ids, email and names of each account
    command.downgrade(_alembic_config(ght.store.engine), "0008_correlation_keys-1")
    with ght.store.engine.connect() as conn:
        assert "correlation_key" not in inspect(conn).get_table_names()
    ght.store.upgrade()
    assert keys() == filed
    ght.put("ch-c", "mdupont2", "DUPONT", "Marie", rpps=rpps(1))
    ght.sync()
    assert ght.person_of("ch-c", "mdupont2").id == ght.person_of("ch-a", "mdupont").id


def test_provenance_dates_a_value_from_when_it_came_from_its_account(ght: Ght) -> None:
    ght.put("ch-a", "pgarcia", "Garcia", "Paula", title="Infirmière", ou="Réanimation")
    ght.sync()
    first = ght.person_of("ch-a", "pgarcia").provenance
    ght.entries["ch-a"]["pgarcia"]["ou"] = "Urgences"  # another attribute of the same account
    ght.sync()
    after = ght.person_of("ch-a", "pgarcia").provenance
    assert after["family_name"] == first["family_name"]  # same value, same account: same date
    ght.entries["ch-a"]["pgarcia"]["sn"] = "Garcia-Lopez"
    ght.sync()
    renamed = ght.person_of("ch-a", "pgarcia")
    assert renamed.family_name == "Garcia-Lopez"
    assert renamed.provenance["family_name"]["since"] > first["family_name"]["since"]
    assert renamed.provenance["given_name"] == first["given_name"]


def _newcomer(site: str, uid: str, family: str, given: str, birth_date: str) -> MappedAccount:
    values = {"login": uid, "family_name": family, "given_name": given, "birth_date": birth_date}
    return MappedAccount(site, uid, f"uid={uid},ou=people,dc={site},dc=fr", True, values)


def test_lookups_read_ahead_give_the_decisions_the_run_would_have_made(tmp_path: Path) -> None:
    """A scheduler's reading process looks a delta's new accounts up in the directory while the sites
    before are applied (`read_lookups`); the run then decides on what that read found, for people no
    site of the run has changed."""
    ght = Ght(tmp_path, f"sqlite:///{tmp_path}/ght.db", ["ch-a", "ch-b"])
    ght.put("ch-a", "cmoreau", "Moreau", "Claire", birthDate="1985-07-14", title="Médecin")
    ght.put("ch-a", "pdurand", "Durand", "Paul", birthDate="1979-02-03")
    ght.sync()
    newcomers = [
        _newcomer("ch-b", "claire.moreau", "Moreau", "Claire", "1985-07-14"),
        _newcomer("ch-b", "paul.durand", "Durand", "Paul", "1980-01-01"),  # a namesake, born elsewhen
    ]
    with ght.store.session() as session:
        looked_up = RunContext.load(session, CorrelationConfig())
        read_here = RunContext.load(session, CorrelationConfig())
    lookups = read_lookups(ght.store.engine, "ch-b", newcomers)
    assert lookups.new == 2 and lookups.known == []
    looked_up.index.absorb(lookups.found)
    probes = [Probe.of(a.values, "ch-b") for a in newcomers]
    read_here.index.prepare(probes)
    decided = [looked_up.correlator.decide(p) for p in probes]
    assert [(d.verdict, d.person_id) for d in decided] == [
        (d.verdict, d.person_id) for d in (read_here.correlator.decide(p) for p in probes)
    ]
    assert decided[0].verdict == Verdict.LINK and decided[0].person_id == ght.person_of("ch-a", "cmoreau").id


def test_lookups_read_ahead_do_not_override_what_the_run_changed(tmp_path: Path) -> None:
    """The read ahead may predate the sites the run applied before: a person one of them changed is
    scored on what the run knows now, not on what that read found (here the birth date was corrected
    at ch-a; a newcomer at ch-b with the old one is another human, as a run without the read ahead
    decides)."""
    ght = Ght(tmp_path, f"sqlite:///{tmp_path}/ght.db", ["ch-a", "ch-b"])
    ght.put("ch-a", "cmoreau", "Moreau", "Claire", birthDate="1985-07-14", title="Médecin")
    ght.sync()
    person = ght.person_of("ch-a", "cmoreau").id
    newcomer = _newcomer("ch-b", "claire.moreau", "Moreau", "Claire", "1985-07-14")
    lookups = read_lookups(ght.store.engine, "ch-b", [newcomer])  # before ch-a's correction
    ght.put("ch-a", "cmoreau", "Moreau", "Claire", birthDate="1985-07-15", title="Médecin")
    ght.sync(sites=["ch-a"])
    with ght.store.session() as session:
        context = RunContext.load(session, CorrelationConfig())
        corrected = session.execute(
            select(Account.attributes).where(Account.site == "ch-a", Account.login == "cmoreau")
        ).scalar_one()
    context.index.add(person, corrected, "ch-a")  # as the run planned ch-a's update
    context.index.absorb(lookups.found)
    decision = context.correlator.decide(Probe.of(newcomer.values, "ch-b"))
    assert context.index.profiles[person].birth_dates == {"1985-07-15"}
    assert decision.verdict == Verdict.NEW
