"""Exporting a GHT to Entra ID: first export, updates and group moves, suspensions, deletions after the
grace period, the deletion threshold, Graph's rejections, resuming a killed push, adoption.

Each test syncs hospitals' LDIF exports into the directory with the real pipeline, then pushes to the
fake tenant (tests/servers/graph_fake.py) over HTTPS and looks at what the tenant holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from directory_sync.azure import (
    DeletionThresholdExceeded,
    GraphUnavailable,
    UserActionKind,
    adopt,
    export_status,
)
from directory_sync.store import utcnow
from directory_sync.store.models import ExportStatus
from tests.hospitals import rpps
from tests.servers.graph_fake import Faults
from tests.test_azure_support import DOMAIN, World, azure_world, small_ght


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with azure_world(tmp_path) as w:
        yield w


def test_first_export_creates_one_user_per_person_with_groups_then_a_second_push_writes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    with azure_world(tmp_path, database_url) as world:
        small_ght(world)
        plan = world.plan()
        assert plan.summary()["create"] == 7
        assert {g.spec.key for g in plan.groups} == {
            "site:ch-orange",
            "site:ch-valreas",
            "site:ch-apt",
            "profession:10",
            "profession:35",
            "profession:50",
            "profession:60",
        }

        result = world.push()
        assert (result.created, result.groups_created, result.rejected) == (7, 7, [])
        world.assert_tenant_is_the_directory()

        doctor_id = world.person_id("ch-orange", "hlefevre")
        doctor = world.cloud_user("ch-valreas", "helene.lefevre")
        assert doctor["userPrincipalName"] == "helene.lefevre@ght-test.fr"
        assert doctor["employeeId"] == doctor_id[:16]
        assert doctor["displayName"] == "Hélène Lefèvre"
        assert doctor["companyName"] == "CH d'Orange"  # the oldest active affiliation
        assert doctor["officeLocation"] == "CH d'Orange, CH de Valréas, CH du Pays d'Apt"
        assert doctor["employeeType"] == "Médecin"
        assert doctor["usageLocation"] == "FR"
        assert doctor["onPremisesExtensionAttributes"]["extensionAttribute1"] == rpps(1)
        assert doctor["onPremisesExtensionAttributes"]["extensionAttribute2"] == "10"
        assert doctor["onPremisesExtensionAttributes"]["extensionAttribute3"] == doctor_id
        assert doctor["accountEnabled"] is True
        assert doctor["passwordProfile"] == {"forceChangePasswordNextSignIn": True}
        # Homonyms are numbered in the order they entered the directory; ASCII logins.
        assert world.cloud_user("ch-orange", "mdupont")["userPrincipalName"] == "marie.dupont@ght-test.fr"
        assert world.cloud_user("ch-valreas", "mdupont")["userPrincipalName"] == "marie.dupont2@ght-test.fr"
        assert world.cloud_user("ch-apt", "aoeuvre")["mailNickname"] == "anais.oeuvray"
        assert world.cloud_user("ch-valreas", "jndiaye")["mailNickname"] == "jean-baptiste.ndiaye"
        assert world.members("site:ch-orange") == {
            "helene.lefevre@ght-test.fr",
            "paul.garcia@ght-test.fr",
            "marie.dupont@ght-test.fr",
        }
        assert world.members("profession:60") == {
            "paul.garcia@ght-test.fr",
            "jean-baptiste.ndiaye@ght-test.fr",
            "anais.oeuvray@ght-test.fr",
        }
        assert world.group("site:ch-valreas")["displayName"] == "GHT - CH de Valréas"
        assert world.group("site:ch-valreas")["securityEnabled"] is True
        # Every new user got its own strong password, once.
        assert len(set(world.fake.passwords)) == 7

        writes = world.fake.stats.writes
        again = world.push()
        assert (again.stats.requests, again.stats.writes) == (0, 0)
        assert world.fake.stats.writes == writes
        assert world.plan().empty


def test_changes_are_pushed_as_updates_and_group_moves_of_the_same_cloud_users(world: World) -> None:
    small_ght(world)
    world.push()
    ids = {u["userPrincipalName"]: u["id"] for u in world.fake.users.values()}

    world.hire("ch-orange", "mdupont", "Dupont", "Marie", title="Infirmière", ou="Gériatrie")  # new job
    world.leave("ch-valreas", "jndiaye")  # moves to another hospital
    world.hire("ch-apt", "jb.ndiaye", "N'Diaye", "Jean-Baptiste", rpps=rpps(3), title="Infirmière", ou="Bloc")
    world.hire(
        "ch-valreas", "jndiaye", "N'Diaye", "Jean-Baptiste", rpps=rpps(3), title="Infirmière", ou="Bloc"
    )
    world.sync()
    world.leave("ch-valreas", "jndiaye")
    world.hire("ch-apt", "aoeuvre", "Martin", "Anaïs", title="Infirmière", ou="Pédiatrie")  # married
    world.sync()

    plan = world.plan()
    changes = {a.upn: a.changes for a in plan.of(UserActionKind.UPDATE)}
    assert changes["marie.dupont@ght-test.fr"]["jobTitle"] == ("Aide-soignante", "Infirmière")
    assert changes["marie.dupont@ght-test.fr"]["employeeType"] == ("Aide-soignant", "Infirmier")
    assert changes["anais.oeuvray@ght-test.fr"]["surname"] == ("Œuvray", "Martin")
    assert changes["anais.oeuvray@ght-test.fr"]["displayName"] == ("Anaïs Œuvray", "Anaïs Martin")
    assert "userPrincipalName" not in changes["anais.oeuvray@ght-test.fr"]  # the territorial login stays
    moves = {m["group"]: m for m in plan.as_dict()["memberships"]}
    assert moves["profession:35"]["remove"] == ["marie.dupont@ght-test.fr"]
    assert "marie.dupont@ght-test.fr" in moves["profession:60"]["add"]
    assert plan.count(UserActionKind.CREATE) == 0

    result = world.push()
    assert result.created == 0 and result.rejected == []
    world.assert_tenant_is_the_directory()
    jb = world.cloud_user("ch-apt", "jb.ndiaye")
    assert jb["id"] == ids["jean-baptiste.ndiaye@ght-test.fr"]  # the same cloud user, moved
    assert jb["companyName"] == "CH du Pays d'Apt"
    assert "jean-baptiste.ndiaye@ght-test.fr" in world.members("site:ch-apt")
    assert "jean-baptiste.ndiaye@ght-test.fr" not in world.members("site:ch-valreas")
    anais = world.cloud_user("ch-apt", "aoeuvre")
    assert (anais["id"], anais["surname"]) == (ids["anais.oeuvray@ght-test.fr"], "Martin")
    assert world.members("profession:35") == set()


def test_suspended_people_are_disabled_deleted_after_the_grace_period_and_restored_when_back(
    world: World,
) -> None:
    small_ght(world)
    world.push()
    paul = world.cloud_user("ch-orange", "pgarcia")
    world.leave("ch-orange", "pgarcia")
    world.leave("ch-apt", "paul.garcia")
    world.sync()

    (action,) = world.plan().users
    assert (action.kind, action.upn) == (UserActionKind.DISABLE, "paul.garcia@ght-test.fr")
    assert "no active affiliation" in action.reason
    result = world.push()
    assert (result.disabled, result.deleted) == (1, 0)
    assert world.fake.users[paul["id"]]["accountEnabled"] is False  # disabled, not deleted
    for group in ("site:ch-orange", "site:ch-apt", "profession:60"):
        assert "paul.garcia@ght-test.fr" not in world.members(group)
    world.assert_tenant_is_the_directory()
    assert world.push().stats.writes == 0  # inside the grace period: nothing more

    later = utcnow() + timedelta(days=31)
    (action,) = world.plan(now=later).users
    assert action.kind is UserActionKind.DELETE and "grace period of 30 days over" in action.reason
    assert world.push(now=later).deleted == 1
    assert paul["id"] in world.fake.deleted and paul["id"] not in world.fake.users
    state = world.state(world.person_id("ch-orange", "pgarcia"))
    assert state is not None and state.status == ExportStatus.DELETED

    world.hire("ch-orange", "pgarcia", "Garcia", "Paul", rpps=rpps(2), title="Infirmier", ou="Urgences")
    world.sync()
    (action,) = world.plan().users
    assert action.kind is UserActionKind.RESTORE
    result = world.push()
    assert (result.restored, result.created) == (1, 0)
    assert world.fake.users[paul["id"]]["accountEnabled"] is True  # the same user, back from deleted items
    assert "paul.garcia@ght-test.fr" in world.members("site:ch-orange")
    world.assert_tenant_is_the_directory()


def test_the_deletion_threshold_stops_the_push_before_any_change(world: World) -> None:
    world.configure(deletion_threshold=1, deletion_grace_days=0)
    small_ght(world)
    world.push()
    world.leave("ch-orange", "pgarcia")
    world.leave("ch-apt", "paul.garcia")
    world.leave("ch-apt", "cdelafontaine")
    world.hire("ch-apt", "lmartin", "Martin", "Louise", title="Infirmière")
    world.sync()
    writes = world.fake.stats.writes

    with pytest.raises(DeletionThresholdExceeded) as stopped:
        world.push()
    assert str(stopped.value) == (
        "the push would delete 2 users, more than the deletion threshold (1): nothing was changed. "
        "Review them with `ght azure plan`, then run `ght azure push --allow-deletes 2`"
    )
    assert world.fake.stats.writes == writes
    assert world.fake.user_by_upn("louise.martin@ght-test.fr") is None
    with world.store.session() as session:
        assert export_status(session)["last_push"]["status"] == "stopped"

    result = world.push(allow_deletes=2)
    assert (result.deleted, result.created) == (2, 1)
    world.assert_tenant_is_the_directory()


def test_a_user_graph_rejects_is_reported_with_graphs_message_and_the_push_goes_on(world: World) -> None:
    someone = world.fake.add_user(
        accountEnabled=True,
        displayName="Marie Dupont (comptabilité)",
        mailNickname="marie.dupont",
        userPrincipalName="marie.dupont@ght-test.fr",
        employeeId="HR-0042",
    )
    small_ght(world)
    result = world.push()
    (rejection,) = result.rejected
    assert rejection.upn == "marie.dupont@ght-test.fr" and rejection.action == "create"
    assert rejection.message.startswith(
        "Another object with the same value for property userPrincipalName already exists."
    )
    assert "employeeId HR-0042" in rejection.message and "ght azure adopt --match upn" in rejection.message
    assert result.created == 6
    assert world.fake.users[someone["id"]]["displayName"] == "Marie Dupont (comptabilité)"  # untouched
    with world.store.session() as session:
        (listed,) = export_status(session)["rejected"]
    assert listed["upn"] == "marie.dupont@ght-test.fr"
    retry = [a for a in world.plan().users if a.kind is UserActionKind.CREATE]
    assert [a.upn for a in retry] == ["marie.dupont@ght-test.fr"]
    assert retry[0].reason.startswith("rejected by Graph last time: Another object")


def test_a_domain_the_tenant_has_not_verified_is_rejected_user_by_user(world: World) -> None:
    world.configure(domain="ght-unverified.fr")
    small_ght(world)
    result = world.push()
    assert result.created == 0 and len(result.rejected) == 7
    assert {r.message for r in result.rejected} == {
        "The domain portion of the userPrincipalName property is invalid. You must use one of the verified "
        "domain names in your organization."
    }
    assert world.fake.users == {}


def test_a_push_killed_midway_resumes_without_creating_anyone_twice(world: World) -> None:
    for n in range(90):
        world.hire("ch-orange", f"agent{n}", f"Agent{n:03d}", "Claude", title="Infirmière")
    world.sync()

    def kill(phase: str, done: int, total: int) -> None:
        if phase == "creating users" and done >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        world.push(progress=kill)
    assert 40 <= len(world.fake.users) < 90
    with world.store.session() as session:
        assert export_status(session)["last_push"]["status"] == "failed"

    result = world.push()
    assert result.created + result.found == 90 - 40  # what was in flight when killed is found, not remade
    world.assert_tenant_is_the_directory()


def test_creates_whose_answers_were_lost_are_found_by_employee_id_not_made_twice(world: World) -> None:
    """The connection drops after Graph has created the users: the next push looks them up."""
    world.configure(max_retries=1)
    small_ght(world)

    def cut_the_line(phase: str, done: int, total: int) -> None:
        if phase == "groups" and done == total:
            world.fake.faults = Faults(rate=1.0, kinds=("drop",))

    with pytest.raises(GraphUnavailable, match="Microsoft Graph is not answering"):
        world.push(progress=cut_the_line)
    assert len(world.fake.users) == 7  # created by Graph, answers lost
    with world.store.session() as session:
        assert export_status(session)["users"]["pending"] == 7

    world.fake.faults = Faults()
    result = world.push()
    assert (result.found, result.created) == (7, 0)
    world.assert_tenant_is_the_directory()


def test_adoption_links_existing_cloud_users_instead_of_duplicating_them(world: World) -> None:
    small_ght(world)
    by_hand = world.fake.add_user(
        accountEnabled=True,
        displayName="LEFEVRE Helene",
        mailNickname="h.lefevre",
        userPrincipalName="h.lefevre@ght-test.fr",
        mail="hlefevre@ch-orange.fr",
        jobTitle="PH",
    )
    paul = world.fake.add_user(
        accountEnabled=False,
        displayName="Paul Garcia",
        mailNickname="paul.garcia",
        userPrincipalName="paul.garcia@ght-test.fr",
    )
    admin = world.fake.add_user(
        accountEnabled=True, displayName="Admin", mailNickname="admin", userPrincipalName="admin@ght-test.fr"
    )

    preview = adopt(world.settings, world.store, match="mail", dry_run=True)
    assert [a["upn"] for a in preview.adopted] == ["h.lefevre@ght-test.fr"]
    assert world.plan().count(UserActionKind.CREATE) == 7  # a dry run links nothing

    by_mail = adopt(world.settings, world.store, match="mail")
    assert [(a["upn"], a["object_id"]) for a in by_mail.adopted] == [("h.lefevre@ght-test.fr", by_hand["id"])]
    assert {u["upn"] for u in by_mail.unmatched} == {"paul.garcia@ght-test.fr", "admin@ght-test.fr"}
    by_upn = adopt(world.settings, world.store, match="upn")
    assert [a["upn"] for a in by_upn.adopted] == ["paul.garcia@ght-test.fr"]
    assert by_upn.already_linked == 1 and [u["upn"] for u in by_upn.unmatched] == ["admin@ght-test.fr"]

    plan = world.plan()
    changes = {a.upn: (a.kind, a.changes) for a in plan.users if a.kind is not UserActionKind.CREATE}
    assert changes["h.lefevre@ght-test.fr"][1]["jobTitle"] == ("PH", "Médecin")
    assert "userPrincipalName" not in changes["h.lefevre@ght-test.fr"][1]  # an adopted user keeps its UPN
    assert changes["paul.garcia@ght-test.fr"][0] is UserActionKind.ENABLE

    result = world.push()
    assert (result.created, result.updated, result.enabled) == (5, 1, 1)
    world.assert_tenant_is_the_directory(others=1)
    assert world.fake.users[by_hand["id"]]["employeeId"] == world.person_id("ch-orange", "hlefevre")[:16]
    assert world.fake.users[paul["id"]]["accountEnabled"] is True
    assert world.fake.users[admin["id"]]["displayName"] == "Admin"


def test_adoption_leaves_ambiguous_matches_alone(world: World) -> None:
    small_ght(world)
    for n in (1, 2):
        world.fake.add_user(
            accountEnabled=True,
            displayName=f"Paul Garcia {n}",
            mailNickname=f"pgarcia{n}",
            userPrincipalName=f"pgarcia{n}@{DOMAIN}",
            mail="pgarcia@ch-orange.fr",
        )
    result = adopt(world.settings, world.store, match="mail")
    assert result.adopted == []
    (case,) = result.ambiguous
    assert case["key"] == "pgarcia@ch-orange.fr" and len(case["cloud_users"]) == 2
    assert world.plan().count(UserActionKind.CREATE) == 7


def test_a_federated_domain_gets_no_password_but_an_immutable_id(tmp_path: Path) -> None:
    with azure_world(tmp_path, domains={DOMAIN: True}) as world:
        world.configure(federated=True)
        small_ght(world)
        assert world.push().created == 7
        doctor = world.cloud_user("ch-orange", "hlefevre")
        assert doctor["onPremisesImmutableId"] == world.person_id("ch-orange", "hlefevre")
        assert world.fake.passwords == []
        world.assert_tenant_is_the_directory()


def test_adoption_on_employee_id(world: World) -> None:
    small_ght(world)
    nurse_id = world.person_id("ch-orange", "pgarcia")
    hr = world.fake.add_user(
        accountEnabled=True,
        displayName="GARCIA Paul",
        mailNickname="pgarcia",
        userPrincipalName="pgarcia@ght-test.fr",
        employeeId=nurse_id[:16],
    )
    result = adopt(world.settings, world.store, match="employeeId")
    assert [(a["person"], a["object_id"]) for a in result.adopted] == [(nurse_id, hr["id"])]
    world.push()
    assert world.fake.users[hr["id"]]["displayName"] == "Paul Garcia"
    assert world.fake.users[hr["id"]]["userPrincipalName"] == "pgarcia@ght-test.fr"
    world.assert_tenant_is_the_directory()
