"""The Active Directory connector against a real Samba AD domain controller (kind `active_directory`).

One DC for the module (CHNIMES.TEST), provisioned with the staff of a hospital: doctors, a nurse, a
disabled account, an expired one, accounts that never expire (both "never" values), a computer and a
contact (which are not staff), and nested groups. Tests that need the DC are skipped, with the reason,
where Samba cannot run (not root); the configuration tests run everywhere.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.utils.asn1 import decode_message_fast
from sqlalchemy import select

from directory_sync.config import load_settings, load_site_mapping
from directory_sync.connectors import ActiveDirectoryConnector, open_connector
from directory_sync.connectors.ber import decode_search_entry
from directory_sync.connectors.ldap import _decode_entries_lean
from directory_sync.errors import ConfigError
from directory_sync.records import SourceRecord
from directory_sync.store import Account, Affiliation, open_store
from directory_sync.sync import run_sync
from tests.ad_sites import ROLES, ad_connection, password_file, write_ad_site
from tests.hospitals import record_messages, rpps, write_config
from tests.servers.samba import SambaDC

DOCTOR_RPPS = rpps(31)
PHOTO = bytes(range(200, 256)) + b"\x00\x01\xff"  # not UTF-8: must come through unmangled


@pytest.fixture(scope="module")
def nimes(samba_factory: Callable[[str], SambaDC]) -> dict[str, Any]:
    """The DC, the OU of the hospital's staff, and the DN of each account and group."""
    dc = samba_factory("CHNIMES.TEST")
    staff = dc.add_ou("Personnel")
    dn = {
        "jmartin": dc.add_user(
            staff,
            "jmartin",
            "Jérôme",
            "MARTIN",
            title="Praticien hospitalier",
            department="Cardiologie",
            employeeID=DOCTOR_RPPS,
            employeeNumber="M0042",
            mail="Jerome.Martin@chu-nimes.fr",
            otherTelephone=["0466680001", "0466680002"],
            thumbnailPhoto=PHOTO,
        ),
        "aurgent": dc.add_user(staff, "aurgent", "Alice", "Urgent", title="Médecin", department="SAU"),
        "mhdupont": dc.add_user(
            staff, "mhdupont", "Marie-Hélène", "Dupont", title="Infirmière", password_never_expires=True
        ),
        "pdurand": dc.add_user(staff, "pdurand", "Paul", "Durand", title="Infirmier", disabled=True),
        "lbernard": dc.add_user(
            staff,
            "lbernard",
            "Léa",
            "Bernard",
            title="Aide-soignante",
            expires=datetime(2020, 1, 1, tzinfo=UTC),
        ),
        "zero": dc.add_user(staff, "szero", "Sam", "Zero", title="Infirmier", expires=0),
        "never": dc.add_user(
            staff, "nnever", "Nina", "Never", title="Infirmier", expires=0x7FFF_FFFF_FFFF_FFFF
        ),
        "future": dc.add_user(
            staff, "ffutur", "Fred", "Futur", title="Infirmier", expires=datetime(2100, 1, 1, tzinfo=UTC)
        ),
    }
    with dc.admin() as conn:
        conn.add(
            f"CN=PC-URG-01,{staff}",
            ["top", "person", "organizationalPerson", "user", "computer"],
            {"sAMAccountName": "PC-URG-01$", "userAccountControl": "4096"},
        )
        conn.add(f"CN=Laboratoire Cerba,{staff}", ["top", "person", "organizationalPerson", "contact"])
    dc.add_user(f"CN=Users,{dc.base_dn}", "horsperimetre", "Hors", "Perimetre", title="Infirmier")
    groups = dc.add_ou("Groupes")
    urgentistes = dc.add_group(groups, "GG-Urgentistes", [dn["aurgent"]])
    medecins = dc.add_group(groups, "GG-Medecins", [urgentistes, dn["jmartin"]])
    cadres = dc.add_group(groups, "GG-Cadres", [dn["mhdupont"]])
    return {"dc": dc, "base": staff, "dn": dn, "groups": {"medecins": medecins, "cadres": cadres}}


@pytest.fixture
def site(tmp_path: Path, nimes: dict[str, Any]) -> Callable[..., Path]:
    """Write mappings/chu-nimes.yaml for the DC; keyword arguments go into `connection:`."""
    dc: SambaDC = nimes["dc"]

    def write(*, roles: dict[str, Any] | None = None, ldaps: bool = False, **connection: Any) -> Path:
        return write_ad_site(
            tmp_path,
            "chu-nimes",
            ad_connection(dc, nimes["base"], ldaps=ldaps, **connection),
            roles=roles,
        )

    return write


def read(path: Path) -> dict[str, SourceRecord]:
    """Every record of the site, by sAMAccountName."""
    connector = open_connector(load_site_mapping(path))
    assert isinstance(connector, ActiveDirectoryConnector)
    return {r.first("sAMAccountName") or "": r for r in connector.read_all()}


def test_accounts_are_anchored_on_the_objectguid_and_keep_the_objectsid(
    site: Callable[..., Path], nimes: dict[str, Any]
) -> None:
    dc: SambaDC = nimes["dc"]
    record = read(site())["jmartin"]
    with dc.admin() as conn:
        # AD itself finds the entry by this text form of its GUID (the <GUID=...> extended DN).
        conn.search(f"<GUID={record.anchor}>", "(objectClass=*)", ldap3.BASE, attributes=["objectGUID"])
        assert conn.response[0]["dn"].lower() == nimes["dn"]["jmartin"].lower()
        raw_guid = conn.response[0]["raw_attributes"]["objectGUID"][0]
        # ...and by this string form of its SID (<SID=S-1-5-21-...>).
        conn.search(f"<SID={record.facts['object_sid']}>", "(objectClass=*)", ldap3.BASE, attributes=["1.1"])
        assert conn.response[0]["dn"].lower() == nimes["dn"]["jmartin"].lower()
    assert record.anchor == str(uuid.UUID(bytes_le=raw_guid))
    assert record.facts["immutable_id"] == base64.b64encode(raw_guid).decode()
    assert record.facts["object_sid"].startswith("S-1-5-21-")
    assert record.first("objectSid") == record.facts["object_sid"]
    assert record.dn.lower() == nimes["dn"]["jmartin"].lower()


def test_entries_from_active_directory_decode_as_ldap3_decodes_them(
    site: Callable[..., Path], nimes: dict[str, Any]
) -> None:
    # Search entries are decoded by hand (connectors/ber.py): AD's, with binary GUIDs, SIDs and photos
    # and a ranged attribute, must come out as ldap3's decoder and the connector's decoding made them.
    dc: SambaDC = nimes["dc"]
    # A group of four, in an OU of its own: the site's accounts keep their memberOf for the other tests.
    elsewhere = dc.add_ou("Plages")
    staff = [dc.add_user(elsewhere, f"plage{n}", "Agent", f"Plage{n}") for n in range(4)]
    group = dc.add_group(elsewhere, "GG-Plages-Horaires", staff)
    connector = open_connector(load_site_mapping(site()))
    assert isinstance(connector, ActiveDirectoryConnector)
    decoders = connector.value_decoders
    conn = connector._open()
    messages = record_messages(conn)
    try:
        for _ in connector._pages(conn, [*connector.attributes, "thumbnailPhoto", "objectSid"]):
            pass
        # Ranged retrieval: AD answers member;range=0-1, ldap3 asks for the rest and merges the values.
        conn.search(group, "(objectClass=*)", ldap3.BASE, attributes=["member;range=0-1"])
        members = conn.response[0]["attributes"]
    finally:
        conn.unbind()
    assert sorted(members) == ["member"]
    assert sorted(dn.lower() for dn in members["member"]) == sorted(dn.lower() for dn in staff)
    entries = []
    for message in messages:
        reference = ldap3.Connection(ldap3.Server("ldap://127.0.0.1:1", get_info=ldap3.NONE))
        _decode_entries_lean(reference, decoders)  # what the connector did before: ldap3 decodes
        by_ldap3 = decode_message_fast(message)
        expected = (by_ldap3["messageID"], reference.strategy.decode_response_fast(by_ldap3))
        decoded = decode_search_entry(message, decoders)
        if expected[1]["type"] == "searchResEntry":
            assert decoded == expected
            entries.append(expected[1])
        else:
            assert decoded is None
    by_dn = {entry["dn"].lower(): entry["attributes"] for entry in entries}
    jmartin = by_dn[nimes["dn"]["jmartin"].lower()]
    assert jmartin["thumbnailphoto"] == [PHOTO.hex()]
    assert jmartin["objectsid"][0].startswith("S-1-5-21-")
    assert len(jmartin["objectguid"][0]) == 36
    ranged = [sorted(entry["attributes"]) for entry in entries if entry["dn"].lower() == group.lower()]
    assert ranged == [["member;range=0-1"], ["member;range=2-*"]]  # the first answer, then the rest


def test_only_the_user_accounts_under_the_base_dn_are_read(site: Callable[..., Path]) -> None:
    logins = set(read(site()))
    # Not the computer (also of class user), not the contact, not the user outside the base DN.
    assert logins == {"jmartin", "aurgent", "mhdupont", "pdurand", "lbernard", "szero", "nnever", "ffutur"}


def test_account_state_comes_from_user_account_control_and_account_expires(site: Callable[..., Path]) -> None:
    records = read(site())
    state = {
        login: (r.enabled, r.facts["disabled"], r.facts["expired"], r.facts["expires"])
        for login, r in records.items()
    }
    assert state["jmartin"] == (True, "false", "false", "never")
    assert state["pdurand"] == (False, "true", "false", "never")  # ACCOUNTDISABLE
    assert state["lbernard"] == (False, "false", "true", "2020-01-01T00:00:00+00:00")  # expired
    assert state["szero"][:3] == state["nnever"][:3] == (True, "false", "false")  # both "never" values
    assert state["szero"][3] == state["nnever"][3] == "never"
    assert state["ffutur"] == (True, "false", "false", "2100-01-01T00:00:00+00:00")
    assert records["mhdupont"].facts["password_never_expires"] == "true"
    assert records["jmartin"].facts["password_never_expires"] == "false"
    assert {r.facts["locked_out"] for r in records.values()} == {"false"}


def test_binary_and_multi_valued_attributes_come_through_whole(site: Callable[..., Path]) -> None:
    path = site()
    mapping = load_site_mapping(path)
    connector = ActiveDirectoryConnector(
        "chu-nimes",
        mapping.connection,  # type: ignore[arg-type]
        ["sAMAccountName", "otherTelephone", "thumbnailPhoto", "memberOf"],
    )
    record = next(r for r in connector.read_all() if r.first("sAMAccountName") == "jmartin")
    assert record.attributes["thumbnailphoto"] == [PHOTO.hex()]
    assert sorted(record.attributes["othertelephone"]) == ["0466680001", "0466680002"]
    assert [dn.split(",")[0] for dn in record.attributes["memberof"]] == ["CN=GG-Medecins"]


def test_a_paged_read_in_small_pages_reads_the_same_accounts(site: Callable[..., Path]) -> None:
    whole = read(site(page_size=1000))
    paged = read(site(page_size=2))
    assert {k: (r.anchor, r.enabled) for k, r in paged.items()} == {
        k: (r.anchor, r.enabled) for k, r in whole.items()
    }


def sync(tmp_path: Path, database_url: str) -> Any:
    settings = load_settings(write_config(tmp_path, ["chu-nimes"], database_url))
    store = open_store(database_url)
    (result,) = run_sync(settings, store)
    assert result.status == "succeeded", result.error
    return store


def test_nested_group_membership_gives_territorial_roles(
    site: Callable[..., Path], tmp_path: Path, database_url: str
) -> None:
    site(roles={"nested": True, "groups": ROLES}, ldaps=True)  # over LDAPS, the DC's certificate verified
    store = sync(tmp_path, database_url)
    with store.session() as session:
        roles = dict(
            session.execute(
                select(Account.login, Affiliation.roles).join(
                    Affiliation,
                    Affiliation.person_id == Account.person_id,  # type: ignore[arg-type]
                )
            ).all()
        )
    # aurgent is in GG-Urgentistes, itself a member of GG-Medecins.
    assert roles["aurgent"] == "medecin,urgentiste"
    assert roles["jmartin"] == "medecin"
    assert roles["mhdupont"] == "cadre"
    assert roles["pdurand"] is None


def test_direct_membership_only_unless_the_mapping_asks_for_nesting(
    site: Callable[..., Path], tmp_path: Path
) -> None:
    site(roles={"groups": ROLES})
    store = sync(tmp_path, f"sqlite:///{tmp_path}/ght.db")
    with store.session() as session:
        account = session.execute(select(Account).where(Account.login == "aurgent")).scalar_one()
        affiliation = session.execute(
            select(Affiliation).where(Affiliation.person_id == account.person_id)
        ).scalar_one()
    assert affiliation.roles == "urgentiste"


def test_a_disabled_or_expired_account_is_an_inactive_affiliation_not_a_deletion(
    site: Callable[..., Path], tmp_path: Path, database_url: str
) -> None:
    site()
    store = sync(tmp_path, database_url)
    with store.session() as session:
        rows = {
            a.login: (
                a.state,
                a.facts.get("disabled"),
                a.facts.get("expired"),
                f.active,
                f.ended_at is not None,
            )
            for a, f in session.execute(
                select(Account, Affiliation).join(
                    Affiliation,
                    Affiliation.person_id == Account.person_id,  # type: ignore[arg-type]
                )
            ).all()
        }
    # Kept, with why it is inactive: a disabled or expired account is not a deleted one.
    assert rows["pdurand"] == ("disabled", "true", "false", False, True)
    assert rows["lbernard"] == ("disabled", "false", "true", False, True)
    assert rows["jmartin"] == ("enabled", "false", "false", True, False)


def test_a_role_group_missing_from_the_directory_fails_the_site_and_changes_nothing(
    site: Callable[..., Path], tmp_path: Path
) -> None:
    site(roles={"groups": {**ROLES, "GG-Pharmaciens": "pharmacien"}})
    database_url = f"sqlite:///{tmp_path}/ght.db"
    settings = load_settings(write_config(tmp_path, ["chu-nimes"], database_url))
    store = open_store(database_url)
    (result,) = run_sync(settings, store)
    assert result.status == "failed"
    assert "role group 'GG-Pharmaciens'" in (result.error or "")
    with store.session() as session:
        assert session.execute(select(Account)).first() is None


def test_a_directory_that_is_not_active_directory_is_refused_clearly(
    tmp_path: Path, slapd_factory: Any
) -> None:
    server = slapd_factory(["dc=ch-apt,dc=fr"])
    path = write_ad_site(
        tmp_path,
        "ch-apt",
        {
            "kind": "active_directory",
            "url": server.url,
            "bind_dn": server.reader_dn("dc=ch-apt,dc=fr"),
            "bind_password": password_file(tmp_path, server.reader_password),
            "base_dn": "ou=people,dc=ch-apt,dc=fr",
        },
    )
    with pytest.raises(Exception, match=r"not an Active Directory domain controller.*use kind ldap"):
        list(open_connector(load_site_mapping(path)).read_all())


# -- configuration (no DC needed) -----------------------------------------------------------------------


def ad_mapping(tmp_path: Path, **changes: Any) -> Path:
    connection = {
        "kind": "active_directory",
        "url": "ldaps://dc1.chu-nimes.fr ldaps://dc2.chu-nimes.fr",
        "bind_dn": "ght-sync@chu-nimes.fr",
        "bind_password": {"file": "/run/credentials/ght/chu-nimes"},
        "base_dn": "OU=Personnel,DC=chu-nimes,DC=fr",
    }
    roles = changes.pop("roles", None)
    connection.update(changes)
    return write_ad_site(tmp_path, "chu-nimes", connection, roles=roles)


def test_an_active_directory_site_defaults_to_users_anchored_on_objectguid(tmp_path: Path) -> None:
    mapping = load_site_mapping(ad_mapping(tmp_path))
    assert mapping.connection.kind == "active_directory"
    assert mapping.connection.filter == "(&(objectCategory=person)(objectClass=user))"
    assert mapping.connection.anchor == "objectGUID"
    assert "objectGUID" in mapping.source_attributes


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"page_size": 5000}, "connection.page_size", "at most 1000 entries per page"),
        ({"anchor": "sAMAccountName"}, "connection.anchor", "objectGUID"),
        (
            {"kind": "ldap", "roles": {"nested": True, "groups": ROLES}},
            "roles",
            "nested: true needs kind active_directory",
        ),
        ({"roles": {"groups": {"GG-Medecins": "Médecin!"}}}, "roles.groups", "expected a code"),
        ({"roles": {"groups": {}}}, "roles.groups", "at least 1"),
    ],
)
def test_mistakes_in_an_active_directory_site_name_the_file_line_and_key(
    tmp_path: Path, changes: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_site_mapping(ad_mapping(tmp_path, **changes))
    assert caught.value.key == key
    assert caught.value.line is not None
    assert message in str(caught.value)
