"""Pass-through sign-in against real OpenLDAP directories (two hospitals, two slapd instances).

The directory is filled by a real sync of both sites; the gateway then checks passwords by binding to
the person's own entry, fails over to the other hospital when one directory is down, finds an entry
that moved by its entryUUID, and never lets typed text near a filter.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ldap3
import pytest
from fastapi.testclient import TestClient

from directory_sync.config import load_settings
from directory_sync.store import Person, open_store
from directory_sync.sync import run_sync
from sso_gateway import Gateway
from sso_gateway.web.app import create_app
from tests.hospitals import ldap_connection, person, rpps, suffix_ldif, write_config, write_site
from tests.servers.gateway import Browserless, gateway_toml
from tests.servers.slapd import SlapdServer, Suffix, ssha, start_slapd

ISSUER = "https://sso.ght.test"
DOCTOR_RPPS = rpps(42)
DOCTOR_PASSWORD = "Urgences-2026!"
NURSE_PASSWORD = 'p*)(uid=*\\00"'  # LDAP's special characters, as a real password
SITES = {"ch-avignon": "dc=ch-avignon,dc=fr", "ch-cavaillon": "dc=ch-cavaillon,dc=fr"}


@dataclass
class Directories:
    servers: dict[str, SlapdServer]
    gateway: Gateway
    http: TestClient
    doctor_id: str

    def signin(self, login: str, password: str) -> Any:
        return self.gateway.signin(login, password, f"192.0.2.{secrets.randbelow(250)}")


def _entry(
    suffix: str, uid: str, sn: str, given: str, password: str, **kw: Any
) -> tuple[str, dict[str, Any]]:
    dn, attributes = person(suffix, uid, sn, given, **kw)
    return dn, {**attributes, "userPassword": ssha(password)}


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directories]:
    tmp = tmp_path_factory.mktemp("ldap")
    avignon, cavaillon = SITES["ch-avignon"], SITES["ch-cavaillon"]
    doctor: dict[str, Any] = {"rpps": DOCTOR_RPPS, "title": "Médecin"}
    entries = {
        "ch-avignon": [
            _entry(avignon, "hlefevre", "Lefèvre", "Hélène", DOCTOR_PASSWORD, **doctor),
            _entry(avignon, "pgarcia", "Garcia", "Paul", NURSE_PASSWORD, title="Infirmier"),
        ],
        "ch-cavaillon": [_entry(cavaillon, "helene.lefevre", "Lefevre", "Helene", DOCTOR_PASSWORD, **doctor)],
    }  # fmt: skip
    servers = {
        code: start_slapd(
            tmp / code, [Suffix(suffix, suffix_ldif(tmp / f"{code}.ldif", suffix, entries[code]))]
        )
        for code, suffix in SITES.items()
    }
    import os

    os.environ["GHT_TEST_GATEWAY_BIND"] = servers["ch-avignon"].reader_password
    os.environ["GHT_TEST_GATEWAY_BIND2"] = servers["ch-cavaillon"].reader_password
    write_site(
        tmp,
        "ch-avignon",
        ldap_connection(servers["ch-avignon"], SITES["ch-avignon"], "GHT_TEST_GATEWAY_BIND"),
    )
    write_site(
        tmp, "ch-cavaillon", ldap_connection(servers["ch-cavaillon"], cavaillon, "GHT_TEST_GATEWAY_BIND2"),
        finess="840000186",
    )  # fmt: skip
    config = write_config(tmp, list(SITES), f"sqlite:///{tmp}/ght.db")
    kek = tmp / "kek"
    kek.write_text(secrets.token_urlsafe(32))
    config.write_text(config.read_text() + "\n" + gateway_toml(ISSUER, kek, login_ip_lockout_after=10_000))
    settings = load_settings(config)
    store = open_store(settings.database_url)
    results = run_sync(settings, store)
    assert all(r.ok for r in results), [r.error for r in results]
    with store.session() as session:
        doctor = session.query(Person).filter(Person.rpps == DOCTOR_RPPS).one()
    gateway = Gateway(settings, store)
    try:
        # From the loopback: an internal network (`internal_networks`), where a password alone may do.
        loopback = ("127.0.0.1", 50000)
        with TestClient(
            create_app(gateway), base_url=ISSUER, follow_redirects=False, client=loopback
        ) as http:
            yield Directories(servers, gateway, http, doctor.id)
    finally:
        for server in servers.values():
            server.stop()


def test_a_clinician_signs_in_with_the_hospital_password_whatever_login_they_type(
    directories: Directories,
) -> None:
    with directories.gateway.store.session() as session:
        doctor = session.get(Person, directories.doctor_id)
        assert doctor is not None
        logins = ["ch-avignon\\hlefevre", "CH-CAVAILLON\\Helene.Lefevre", "hlefevre", str(doctor.email)]
        if getattr(doctor, "login", None):
            logins.append(str(doctor.login))  # the territorial login
    for login in logins:
        result = directories.signin(login, DOCTOR_PASSWORD)
        assert result.ok and result.person.id == directories.doctor_id, login
    assert directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD).ok


def test_the_whole_flow_signs_in_through_the_directory(directories: Directories) -> None:
    new = directories.gateway.clients.add("DPI", redirect_uris=["https://dpi.ght.test/cb"])
    browser = Browserless(directories.http, ISSUER)  # type: ignore[arg-type]
    info = browser.code_flow(
        new.record.client_id, new.secret or "", "https://dpi.ght.test/cb",
        "ch-cavaillon\\helene.lefevre", DOCTOR_PASSWORD, site="ch-cavaillon",
    )  # fmt: skip
    assert info["sub"] == directories.doctor_id and info["current_site"] == "ch-cavaillon"


def test_wrong_or_empty_passwords_are_refused_by_the_directory(directories: Directories) -> None:
    assert directories.signin("ch-avignon\\hlefevre", "not-the-password").failure == "wrong_password"
    # An empty password would be an anonymous bind, which slapd accepts: it must never reach it.
    assert directories.signin("ch-avignon\\hlefevre", "").failure == "wrong_password"


@pytest.mark.parametrize(
    "login", ["*", "*)(uid=*", "hlefevre)(|(uid=*", "ch-avignon\\*", "uid=hlefevre,ou=people"]
)
def test_ldap_injection_in_the_login_finds_nobody(directories: Directories, login: str) -> None:
    assert directories.signin(login, DOCTOR_PASSWORD).failure == "unknown_login"


def test_when_the_home_directory_is_down_another_site_checks_the_password(directories: Directories) -> None:
    avignon = directories.servers["ch-avignon"]
    avignon.stop()
    try:
        assert directories.signin("ch-avignon\\hlefevre", DOCTOR_PASSWORD).ok  # checked at Cavaillon
        down = directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD)  # only Avignon knows him
        assert down.failure == "directory_unavailable"
    finally:
        avignon.start()
    assert directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD).ok


def _avignon_pool(directories: Directories) -> Any:
    passthrough = directories.gateway.passthrough
    connection = passthrough.connections["ch-avignon"]
    return passthrough.pool(connection, connection.urls[0])


def test_binds_reuse_an_open_connection_and_a_refused_bind_is_never_kept(directories: Directories) -> None:
    pool = _avignon_pool(directories)
    pool.clear()
    assert directories.signin("ch-avignon\\hlefevre", DOCTOR_PASSWORD).ok
    assert len(pool) == 1
    ((_, kept),) = pool._idle
    assert kept.bound and kept.password is None  # the pool keeps no password
    assert kept.extend.standard.who_am_i() == f"dn:uid=hlefevre,ou=people,{SITES['ch-avignon']}"
    # The next person binds on the same connection, as themselves.
    nurse = directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD)
    assert nurse.ok and nurse.site == "ch-avignon"
    assert len(pool) == 1 and pool._idle[0][1] is kept
    assert kept.extend.standard.who_am_i() == f"dn:uid=pgarcia,ou=people,{SITES['ch-avignon']}"
    # A wrong password after a right one, on that connection: refused, and the connection (bound as
    # the nurse until then) is closed, not kept.
    wrong = directories.signin("ch-avignon\\hlefevre", NURSE_PASSWORD)
    assert wrong.failure == "wrong_password"
    assert len(pool) == 0 and kept.closed
    # Nor does a refused bind let the next attempt through on someone else's binding.
    assert directories.signin("ch-avignon\\pgarcia", DOCTOR_PASSWORD).failure == "wrong_password"
    assert len(pool) == 0
    assert directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD).ok and len(pool) == 1


def test_a_pooled_connection_the_directory_dropped_is_replaced_not_an_outage(
    directories: Directories,
) -> None:
    pool = _avignon_pool(directories)
    assert directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD).ok
    assert len(pool) >= 1
    avignon = directories.servers["ch-avignon"]
    avignon.stop()  # every pooled connection to Avignon is cut
    avignon.start()
    again = directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD)
    assert again.ok and again.site == "ch-avignon"  # a new connection, not Cavaillon, not "down"
    assert directories.signin("ch-avignon\\pgarcia", "wrong").failure == "wrong_password"


def test_an_entry_that_moved_since_the_last_sync_is_found_by_its_entryuuid(directories: Directories) -> None:
    server = directories.servers["ch-avignon"]
    suffix = SITES["ch-avignon"]
    conn = ldap3.Connection(
        ldap3.Server(server.url), server.root_dn(suffix), server.root_password, auto_bind=True
    )
    try:
        conn.add(f"ou=urgences,ou=people,{suffix}", "organizationalUnit", {"ou": "urgences"})
        moved = conn.modify_dn(
            f"uid=pgarcia,ou=people,{suffix}", "uid=pgarcia", new_superior=f"ou=urgences,ou=people,{suffix}"
        )
        assert moved, conn.result
    finally:
        conn.unbind()
    assert directories.signin("ch-avignon\\pgarcia", NURSE_PASSWORD).ok
    assert directories.signin("ch-avignon\\pgarcia", "wrong").failure == "wrong_password"
