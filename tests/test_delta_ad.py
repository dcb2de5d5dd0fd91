"""Delta sync from Active Directory (uSNChanged watermark) against a real Samba AD DC.

The same hospital is synchronised into two territorial directories, one by delta runs (the default)
and one by full runs; after each round of changes made on the DC the way hospital IT makes them
(modify, move, disable, delete, recreate, rename, expire, group edits through nested groups), both
directories must be the same. Each test works in an OU of its own on the module's DC.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ldap3
import pytest
from sqlalchemy import select
from sqlmodel import col

import directory_sync.sync
from directory_sync.config import Settings, load_settings
from directory_sync.store import Account, Affiliation, SiteWatermark, Store, SyncRun, open_store
from directory_sync.sync import SiteResult, run_sync
from tests.ad_sites import (
    active_logins,
    ad_connection,
    assert_same_directory,
    directory_snapshot,
    write_ad_site,
)
from tests.hospitals import rpps, write_config
from tests.servers.samba import SambaDC

SITE = "ch-ales"


@pytest.fixture(scope="module")
def dc(samba_factory: Callable[[str], SambaDC]) -> SambaDC:
    return samba_factory("CHALES.TEST")


class Ward:
    """An OU of one test's own on the shared DC. sAMAccountNames are unique in a whole domain, so each
    test's logins carry a suffix of its own: `login("jmartin")` is this test's jmartin."""

    def __init__(self, dc: SambaDC) -> None:
        self.dc = dc
        self.suffix = uuid.uuid4().hex[:4]
        self.ou = dc.add_ou(f"Hopital-{self.suffix}")
        self.elsewhere = dc.add_ou(f"Ailleurs-{self.suffix}")  # out of the site's scope

    def login(self, name: str) -> str:
        return f"{name}.{self.suffix}"

    def add(self, name: str, given: str, family: str, *, parent: str | None = None, **attributes: Any) -> str:
        return self.dc.add_user(parent or self.ou, self.login(name), given, family, **attributes)


@pytest.fixture
def ward(dc: SambaDC) -> Ward:
    return Ward(dc)


def configure(
    ward: Ward, directory: Path, database_url: str, roles: dict[str, str] | None = None
) -> tuple[Settings, Store]:
    """A ght.toml with the ward's AD site alone, into `database_url`."""
    write_ad_site(
        directory,
        SITE,
        ad_connection(ward.dc, ward.ou),
        roles={"nested": True, "groups": roles} if roles else None,
    )
    return load_settings(write_config(directory, [SITE], database_url)), open_store(database_url)


def run(side: tuple[Settings, Store], *, full: bool = False) -> SiteResult:
    (result,) = run_sync(side[0], side[1], full=full, allow_closures=50)
    assert result.status == "succeeded", result.error
    return result


def roles_of(store: Store, login: str) -> str | None:
    with store.session() as session:
        person = session.execute(
            select(col(Account.person_id)).where(col(Account.login) == login)
        ).scalar_one()
        return session.execute(
            select(col(Affiliation.roles)).where(
                col(Affiliation.person_id) == person, col(Affiliation.site) == SITE
            )
        ).scalar_one()


def test_delta_and_full_runs_give_the_same_directory(ward: Ward, tmp_path: Path, database_url: str) -> None:
    dc, add, login = ward.dc, ward.add, ward.login
    emergency = dc.add_ou("Urgences", ward.ou)
    groups_ou = dc.add_ou("Groupes", ward.ou)
    u = {
        "doctor": add("jmartin", "Jérôme", "Martin", title="Praticien hospitalier", employeeID=rpps(41)),
        "modify": add("mhdupont", "Marie-Hélène", "Dupont", title="Infirmière", department="Urgences"),
        "move_in": add("bmoreau", "Bruno", "Moreau", title="Infirmier"),
        "move_out": add("cpetit", "Claire", "Petit", title="Infirmière"),
        "disable": add("dleroy", "David", "Leroy", title="Aide-soignante"),
        "enable": add("eroux", "Emma", "Roux", title="Infirmière", disabled=True),
        "delete": add("fgarnier", "Félix", "Garnier", title="Infirmier"),
        "recreate": add("gfaure", "Gaëlle", "Faure", title="Sage-femme"),
        "rename": add("hblanc", "Hugo", "Blanc", title="Infirmier"),
        "expire": add("igirard", "Inès", "Girard", title="Infirmière"),
        "gain": add("jbonnet", "Jules", "Bonnet", title="Médecin"),
        "cadre": add("kmercier", "Karine", "Mercier", title="Infirmière"),
        "smur": add("lfontaine", "Louis", "Fontaine", title="Médecin"),
        "urgentiste": add("mchevalier", "Manon", "Chevalier", title="Médecin"),
        "same": add("nlambert", "Noé", "Lambert", title="Infirmier"),
    }
    smur = dc.add_group(groups_ou, login("GG-SMUR"), [u["smur"]])
    urgentistes = dc.add_group(groups_ou, login("GG-Urgentistes"), [u["urgentiste"]])
    medecins = dc.add_group(groups_ou, login("GG-Medecins"), [urgentistes, u["doctor"]])
    cadres = dc.add_group(groups_ou, login("GG-Cadres"), [u["cadre"]])
    roles = {medecins: "medecin", urgentistes: "urgentiste", cadres: "cadre"}  # role groups named by DN
    delta = configure(ward, tmp_path / "delta", database_url, roles)
    full = configure(ward, tmp_path / "full", f"sqlite:///{tmp_path}/full.db", roles)

    first = run(delta)
    run(full, full=True)
    assert (first.mode, first.mode_reason, first.created) == ("full", "no watermark yet: full read", 15)
    assert_same_directory(delta[1], full[1])

    # What hospital IT does between two runs.
    dc.replace(u["modify"], title="Cadre de santé", department="Réanimation")
    dc.move(u["move_in"], emergency)  # still under the base DN
    dc.move(u["move_out"], ward.elsewhere)  # out of the site's scope
    dc.set_disabled(u["disable"], True)
    dc.set_disabled(u["enable"], False)
    dc.delete(u["delete"])
    dc.delete(u["recreate"])
    add("gfaure", "Gaëlle", "Faure", title="Sage-femme")  # same login, new objectGUID
    dc.rename(u["rename"], "Hugo Blanc-Martin")
    dc.set_expires(u["expire"], datetime(2021, 1, 1, tzinfo=UTC))
    dc.add_member(urgentistes, u["gain"])  # a group edit: jbonnet's own entry does not change
    dc.remove_member(cadres, u["cadre"])
    dc.add_member(urgentistes, smur)  # lfontaine: GG-SMUR < GG-Urgentistes < GG-Medecins
    add("onouvel", "Olivia", "Nouvel", title="Sage-femme")

    second = run(delta)
    second_full = run(full, full=True)
    assert second.mode == "delta", second.mode_reason
    # The delta read what changed, not the three accounts nobody touched.
    assert (second.unchanged, second_full.unchanged) == (0, 3)
    assert_same_directory(delta[1], full[1])
    # ...and the directory says what IT did.
    store = delta[1]
    assert active_logins(store, SITE) == {
        login("jmartin"): "enabled",
        login("mhdupont"): "enabled",
        login("bmoreau"): "enabled",
        login("dleroy"): "disabled",
        login("eroux"): "enabled",
        login("gfaure"): "enabled",
        login("hblanc"): "enabled",
        login("igirard"): "disabled",
        login("jbonnet"): "enabled",
        login("kmercier"): "enabled",
        login("lfontaine"): "enabled",
        login("mchevalier"): "enabled",
        login("nlambert"): "enabled",
        login("onouvel"): "enabled",
    }
    assert (second.closed, second.created) == (3, 2)  # cpetit (moved out), fgarnier, the first gfaure
    assert roles_of(store, login("jbonnet")) == roles_of(store, login("lfontaine")) == "medecin,urgentiste"
    assert roles_of(store, login("kmercier")) is None
    assert roles_of(store, login("jmartin")) == "medecin"

    third = run(delta)  # nothing changed on the DC since
    assert (third.mode, third.read, third.created, third.updated, third.closed) == ("delta", 0, 0, 0, 0)


def test_an_account_that_expires_between_runs_is_inactive_after_a_delta(ward: Ward, tmp_path: Path) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=3)
    ward.add("pcdd", "Pauline", "Contrat", title="Infirmière", expires=soon)
    ward.add("qstable", "Quentin", "Stable", title="Infirmier")
    side = configure(ward, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    run(side)
    assert active_logins(side[1], SITE)[ward.login("pcdd")] == "enabled"
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.5)
    usn = _highest_usn(ward.dc)

    result = run(side)
    # Nothing was written on the DC (no USN moved), yet the delta saw the expiry.
    assert _highest_usn(ward.dc) == usn
    assert (result.mode, result.read, result.updated) == ("delta", 1, 1)
    assert active_logins(side[1], SITE) == {ward.login("pcdd"): "disabled", ward.login("qstable"): "enabled"}


def test_a_dc_restored_from_backup_is_read_completely_and_nothing_changes(
    ward: Ward, tmp_path: Path, database_url: str
) -> None:
    ward.add("rrestau", "Rose", "Restau", title="Infirmière")
    ward.add("ssauve", "Simon", "Sauve", title="Infirmier")
    side = configure(ward, tmp_path, database_url)
    run(side)
    assert run(side).mode == "delta"
    before = ward.dc.invocation_id()

    after = ward.dc.restore_from_backup()  # USNs on this DC no longer follow the watermark's
    result = run(side)
    assert result.mode == "full"
    assert f"invocationId {before}" in (result.mode_reason or "")
    assert f"invocationId {after}" in (result.mode_reason or "")
    assert (result.read, result.unchanged, result.created, result.updated, result.closed) == (2, 2, 0, 0, 0)
    assert run(side).mode == "delta"  # the new watermark is on the DC's new identity


def test_without_access_to_tombstones_a_site_is_read_completely_and_says_why(
    ward: Ward, tmp_path: Path
) -> None:
    ward.add("wtomb", "Wanda", "Tomb", title="Infirmière")
    side = configure(ward, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    ward.dc.allow_reading_tombstones(False)  # AD's default: only administrators see deleted objects
    try:
        for _ in range(2):
            result = run(side)
            assert result.mode == "full"
            assert "cannot read CN=Deleted Objects" in (result.mode_reason or "")
            assert "/G" in (result.mode_reason or "") and "LCRP" in (result.mode_reason or "")
    finally:
        ward.dc.allow_reading_tombstones(True)
    assert run(side).mode == "full"  # takes the watermark
    assert run(side).mode == "delta"


class PowerCut(BaseException):
    """The process dies: not an error anything in the sync would catch."""


def test_an_interrupted_delta_is_read_again_and_converges(
    ward: Ward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stay = ward.add("tdurable", "Tom", "Durable", title="Infirmier")
    leave = ward.add("uparti", "Ugo", "Parti", title="Infirmier")
    delta = configure(ward, tmp_path / "delta", f"sqlite:///{tmp_path}/delta.db")
    full = configure(ward, tmp_path / "full", f"sqlite:///{tmp_path}/full.db")
    run(delta)
    run(full, full=True)
    before = directory_snapshot(delta[1])
    with delta[1].session() as session:
        watermark = session.get(SiteWatermark, SITE)
        assert watermark is not None
        usn = watermark.value

    ward.dc.replace(stay, title="Cadre de santé")
    ward.dc.delete(leave)
    apply_plan = directory_sync.sync.apply_plan

    def apply_then_die(*args: Any, **kwargs: Any) -> Any:
        apply_plan(*args, **kwargs)
        raise PowerCut  # after the changes were written, before the commit

    monkeypatch.setattr(directory_sync.sync, "apply_plan", apply_then_die)
    with pytest.raises(PowerCut):
        run_sync(*delta)
    monkeypatch.undo()

    # Nothing of the interrupted run is kept, and the watermark did not move past its changes.
    assert directory_snapshot(delta[1]) == before
    with delta[1].session() as session:
        watermark = session.get(SiteWatermark, SITE)
        assert watermark is not None and watermark.value == usn
    result = run(delta)
    assert (result.mode, result.updated, result.closed) == ("delta", 1, 1)
    run(full, full=True)
    assert_same_directory(delta[1], full[1])
    with delta[1].session() as session:
        runs = list(session.execute(select(SyncRun).order_by(col(SyncRun.id))).scalars())
    assert [r.status for r in runs] == ["succeeded", "failed", "succeeded"]
    assert runs[1].error == "interrupted before it finished"


def test_a_changed_mapping_means_a_full_read(ward: Ward, tmp_path: Path) -> None:
    ward.add("vmap", "Victor", "Map", title="Infirmier")
    side = configure(ward, tmp_path, f"sqlite:///{tmp_path}/ght.db")
    run(side)
    path = side[0].site_file(SITE)
    path.write_text(path.read_text().replace("employee_id: employeeNumber", "employee_id: employeeID"))
    result = run(side)
    assert (result.mode, result.mode_reason) == (
        "full",
        "the site's mapping changed since the watermark was taken: full read",
    )
    assert run(side).mode == "delta"
    assert run(side, full=True).mode_reason == "full read requested (--full)"


def _highest_usn(dc: SambaDC) -> int:
    with dc.admin() as conn:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["highestCommittedUSN"])
        return int(conn.response[0]["attributes"]["highestCommittedUSN"][0])
