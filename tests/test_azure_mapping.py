"""From people to Graph users and groups, and the plan's rules for one user (no network, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from directory_sync.azure.mapping import (
    AffiliationView,
    PersonView,
    UserMapper,
    assign_logins,
    base_login,
    graph_body,
)
from directory_sync.azure.plan import UserAction, UserActionKind, user_action
from directory_sync.config import AzureSettings
from directory_sync.store.models import ExportState, ExportStatus

T0 = datetime(2025, 1, 1, tzinfo=UTC)
G15 = {"10": "Médecin", "60": "Infirmier", "35": "Aide-soignant"}


def settings(**overrides: Any) -> AzureSettings:
    values: dict[str, Any] = {
        "tenant_id": "t",
        "client_id": "c",
        "client_secret": {"env": "X"},
        "domain": "ght-vaucluse.fr",
        **overrides,
    }
    return AzureSettings.model_validate(values)


def affiliation(
    site: str, *, profession: str | None = "60", active: bool = True, days: int = 0, **extra: Any
) -> AffiliationView:
    values: dict[str, Any] = {
        "site": site,
        "site_name": f"CH {site.upper()}",
        "finess": "840000087",
        "profession": profession,
        "department": "Urgences",
        "title": G15.get(profession or "", "Secrétaire"),
        "active": active,
        "started_at": T0 + timedelta(days=days),
        "ended_at": None if active else T0 + timedelta(days=days + 100),
        **extra,
    }
    return AffiliationView(**values)


def person(
    pid: str,
    given: str | None,
    family: str,
    *affiliations: AffiliationView,
    days: int = 0,
    status: str = "active",
    **extra: Any,
) -> PersonView:
    return PersonView(
        pid.ljust(32, "0"),
        family,
        given,
        extra.pop("email", None),
        extra.pop("rpps", None),
        status,
        T0 + timedelta(days=days),
        tuple(affiliations),
        **extra,
    )


def test_logins_are_ascii_prenom_nom() -> None:
    assert base_login("Marie-Hélène", "N'Diaye") == "marie-helene.ndiaye"
    assert base_login("Cécile", "de La Fontaine") == "cecile.de-la-fontaine"
    assert base_login("Anaïs", "Œuvray") == "anais.oeuvray"
    assert base_login(None, "Lefèvre") == "lefevre"
    assert base_login("Jean  Pierre", "Lefèvre-Ærø") == "jean-pierre.lefevre-aero"
    assert len(base_login("A" * 40, "B" * 40)) <= 56


def test_homonyms_are_numbered_in_arrival_order_and_an_exported_login_stays() -> None:
    first = person("a", "Marie", "Dupont", days=1)
    second = person("b", "Marie", "Dupont", days=2)
    third = person("c", "Marie", "Dupont", days=3)
    assert assign_logins([first, second, third], {}) == {
        first.id: "marie.dupont",
        second.id: "marie.dupont2",
        third.id: "marie.dupont3",
    }
    # The first one left the directory long ago but her login is still exported: nobody takes it,
    # and a newcomer does not rename anyone.
    newcomer = person("d", "Marie", "Dupont", days=0)
    logins = assign_logins(
        [newcomer, second, third],
        {first.id: "marie.dupont", second.id: "marie.dupont2", third.id: "marie.dupont3"},
    )
    assert logins == {newcomer.id: "marie.dupont4", second.id: "marie.dupont2", third.id: "marie.dupont3"}
    # A married name no longer fits the exported login: a new one.
    married = person("b", "Marie", "Martin", days=2)
    assert assign_logins([married], {married.id: "marie.dupont2"}) == {married.id: "marie.martin"}
    # The directory's own territorial login wins, and is never given to anyone else.
    stored = person("e", "Marie", "Dupont", days=9, login="marie.dupont")
    assert assign_logins([first, stored], {}) == {stored.id: "marie.dupont", first.id: "marie.dupont2"}


def test_a_person_becomes_a_graph_user_from_the_primary_affiliation() -> None:
    mapper = UserMapper(settings(), G15)
    doctor = person(
        "d",
        "Hélène",
        "Lefèvre",
        affiliation("apt", profession="10", days=5),
        affiliation("orange", profession="10", days=1),
        affiliation("valreas", profession="10", active=False, days=0),
        rpps="10000000017",
        email="h.lefevre@ch-orange.fr",
    )
    user = mapper.desired(doctor, "helene.lefevre")
    assert user.fields == {
        "accountEnabled": True,
        "displayName": "Hélène Lefèvre",
        "givenName": "Hélène",
        "surname": "Lefèvre",
        "mailNickname": "helene.lefevre",
        "userPrincipalName": "helene.lefevre@ght-vaucluse.fr",
        "employeeId": doctor.id[:16],
        "jobTitle": "Médecin",
        "department": "Urgences",
        "companyName": "CH ORANGE",  # the oldest active affiliation
        "officeLocation": "CH APT, CH ORANGE",
        "usageLocation": "FR",
        "employeeType": "Médecin",
        "onPremisesExtensionAttributes.extensionAttribute1": "10000000017",
        "onPremisesExtensionAttributes.extensionAttribute2": "10",
        "onPremisesExtensionAttributes.extensionAttribute3": doctor.id,
    }
    assert user.groups == {"site:apt", "site:orange", "profession:10"}
    assert graph_body(user.fields, for_create=True)["onPremisesExtensionAttributes"] == {
        "extensionAttribute1": "10000000017",
        "extensionAttribute2": "10",
        "extensionAttribute3": doctor.id,
    }
    # The directory's primary flag wins over age.
    flagged = person(
        "d", "Hélène", "Lefèvre", affiliation("apt", days=5, primary=True), affiliation("orange")
    )
    assert mapper.desired(flagged, "x").fields["companyName"] == "CH APT"


def test_suspended_people_are_disabled_and_leave_every_group() -> None:
    mapper = UserMapper(settings(), G15)
    gone = person("s", "Paul", "Garcia", affiliation("orange", active=False), status="suspended")
    user = mapper.desired(gone, "paul.garcia")
    assert user.fields["accountEnabled"] is False and user.groups == frozenset()
    assert user.fields["companyName"] == "CH ORANGE"  # where they worked last
    assert user.fields["officeLocation"] == "CH ORANGE"


def test_federated_domains_get_an_immutable_id_and_roles_get_groups_when_configured() -> None:
    mapper = UserMapper(settings(federated=True, role_groups=["prescripteur"], profession_groups=False), G15)
    nurse = person("n", "Inès", "Roux", affiliation("apt", roles=("prescripteur", "cadre")))
    user = mapper.desired(nurse, "ines.roux")
    assert user.fields["onPremisesImmutableId"] == nurse.id
    assert user.groups == {"site:apt", "role:prescripteur"}
    spec = mapper.group_spec("role:prescripteur", {})
    assert (spec.display_name, spec.mail_nickname) == ("GHT - prescripteur", "ght-role-prescripteur")


def exported(
    person_id: str,
    fields: dict[str, Any],
    *,
    enabled: bool = True,
    disabled_at: datetime | None = None,
    status: str = ExportStatus.EXPORTED,
) -> ExportState:
    from directory_sync.azure.mapping import fields_hash

    return ExportState(
        person_id=person_id,
        employee_id=person_id[:16],
        object_id="oid",
        upn=fields.get("userPrincipalName"),
        status=status,
        sent=fields,
        sent_hash=fields_hash(fields),
        enabled=enabled,
        disabled_at=disabled_at,
    )


def test_the_plan_disables_then_deletes_after_the_grace_period_and_enables_on_return() -> None:
    mapper = UserMapper(settings(), G15)
    working = mapper.desired(person("p", "Paul", "Garcia", affiliation("orange")), "paul.garcia")
    gone = mapper.desired(
        person("p", "Paul", "Garcia", affiliation("orange", active=False), status="suspended"), "paul.garcia"
    )
    now = T0 + timedelta(days=400)
    assert user_action(working, exported(working.person_id, working.fields), now=now, grace_days=30) is None

    action = user_action(gone, exported(gone.person_id, working.fields), now=now, grace_days=30)
    assert isinstance(action, UserAction) and action.kind is UserActionKind.DISABLE
    assert action.changes["accountEnabled"] == (True, False)

    off = exported(gone.person_id, gone.fields, enabled=False, disabled_at=now - timedelta(days=29))
    assert user_action(gone, off, now=now, grace_days=30) is None
    off.disabled_at = now - timedelta(days=31)
    action = user_action(gone, off, now=now, grace_days=30)
    assert isinstance(action, UserAction) and action.kind is UserActionKind.DELETE
    assert user_action(gone, exported(gone.person_id, working.fields), now=now, grace_days=0).kind is (  # type: ignore[union-attr]
        UserActionKind.DELETE
    )

    back = user_action(working, off, now=now, grace_days=30)
    assert isinstance(back, UserAction) and back.kind is UserActionKind.ENABLE
    deleted = exported(gone.person_id, gone.fields, enabled=False, status=ExportStatus.DELETED)
    assert user_action(working, deleted, now=now, grace_days=30).kind is UserActionKind.RESTORE  # type: ignore[union-attr]
    assert user_action(gone, deleted, now=now, grace_days=30) is None


def test_people_who_work_nowhere_get_no_cloud_user_and_merged_people_are_disabled() -> None:
    mapper = UserMapper(settings(), G15)
    never = mapper.desired(
        person("x", "Léa", "Roux", affiliation("apt", active=False), status="suspended"), "lea.roux"
    )
    assert (
        user_action(never, None, now=T0, grace_days=30)
        == "not working anywhere in the group: no cloud user is created"
    )
    merged_person = person(
        "m", "Léa", "Roux", affiliation("apt", active=False), status="merged", merged_into="s" * 32
    )
    merged = mapper.desired(merged_person, "lea.roux")
    active_fields = {**merged.fields, "accountEnabled": True}
    action = user_action(merged, exported(merged.person_id, active_fields), now=T0, grace_days=30)
    assert isinstance(action, UserAction) and action.kind is UserActionKind.DISABLE
    assert action.reason == f"merged into person {'s' * 32}: disabled, not deleted"
    orphan = user_action(None, exported("o" * 32, active_fields), now=T0, grace_days=30)
    assert isinstance(orphan, UserAction) and orphan.kind is UserActionKind.DISABLE
    assert orphan.reason.startswith("no longer in the territorial directory")
