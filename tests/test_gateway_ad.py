"""Pass-through sign-in against a real Active Directory domain controller (Samba AD).

A hospital's AD is synced into the territorial directory (accounts anchored by objectGUID); the gateway
then checks each password by binding as the person's own account on the DC: whatever login the person
types, a wrong password and a disabled AD account are refused by AD itself, and an account moved to
another OU since the last sync is found again by its objectGUID. (The filter carries the GUID's 16
bytes, which Windows DCs require; Samba also accepts the text form, so this test cannot tell them
apart: sso_gateway/passthrough.py uses the form both accept.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from directory_sync.config import load_settings
from directory_sync.store import Account, open_store
from directory_sync.sync import run_sync
from sso_gateway import Gateway
from sso_gateway.web.app import create_app
from tests.ad_sites import ad_connection, write_ad_site
from tests.hospitals import rpps, write_config
from tests.servers.gateway import Browserless, gateway_toml
from tests.servers.samba import SambaDC

ISSUER = "https://sso.ght.test"
SITE = "ch-nimes"
DOCTOR_PASSWORD = "Urgences-2026!Nimes"
NURSE_PASSWORD = 'Soins*)(cn=*\\00"-26'  # LDAP's special characters, as a real password


@dataclass
class Hospital:
    dc: SambaDC
    staff: str
    gateway: Gateway
    http: TestClient
    doctor_dn: str
    nurse_dn: str

    def signin(self, login: str, password: str) -> Any:
        return self.gateway.signin(login, password, f"192.0.2.{secrets.randbelow(250)}")

    def person_id(self, login: str) -> str:
        with self.gateway.store.session() as session:
            account = session.query(Account).filter(Account.site == SITE, Account.login == login).one()
            return account.person_id


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory, samba_factory: Any) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp("ad-signin")
    dc: SambaDC = samba_factory("CHNIMES.TEST")
    staff = dc.add_ou("Personnel")
    doctor = dc.add_user(staff, "hlefevre", "Hélène", "Lefèvre", title="Médecin", employeeID=rpps(42))
    nurse = dc.add_user(staff, "pgarcia", "Paul", "Garcia", title="Infirmier")
    dc.set_password(doctor, DOCTOR_PASSWORD)
    dc.set_password(nurse, NURSE_PASSWORD)
    write_ad_site(tmp, SITE, ad_connection(dc, staff), finess="300780038")
    config = write_config(tmp, [SITE], f"sqlite:///{tmp}/ght.db")
    kek = tmp / "kek"
    kek.write_text(secrets.token_urlsafe(32))
    config.write_text(config.read_text() + "\n" + gateway_toml(ISSUER, kek, login_ip_lockout_after=10_000))
    settings = load_settings(config)
    store = open_store(settings.database_url)
    results = run_sync(settings, store)
    assert all(r.ok for r in results), [r.error for r in results]
    gateway = Gateway(settings, store)
    loopback = ("127.0.0.1", 50000)  # an internal network, where a password alone may do
    with TestClient(create_app(gateway), base_url=ISSUER, follow_redirects=False, client=loopback) as http:
        yield Hospital(dc, staff, gateway, http, doctor, nurse)


def test_the_ad_password_signs_in_whatever_login_is_typed(hospital: Hospital) -> None:
    doctor = hospital.person_id("hlefevre")
    for login in ("hlefevre", f"{SITE}\\hlefevre", "CH-NIMES\\HLEFEVRE", "hlefevre@chnimes.test"):
        result = hospital.signin(login, DOCTOR_PASSWORD)
        assert result.ok and result.person.id == doctor, login
    assert hospital.signin(f"{SITE}\\pgarcia", NURSE_PASSWORD).ok


def test_a_wrong_or_empty_password_is_refused_by_ad(hospital: Hospital) -> None:
    assert hospital.signin("hlefevre", "Urgences-2025!Nimes").failure == "wrong_password"
    assert hospital.signin("hlefevre", "").failure == "wrong_password"
    assert hospital.signin("pgarcia", DOCTOR_PASSWORD).failure == "wrong_password"


def test_the_whole_flow_signs_in_through_ad(hospital: Hospital) -> None:
    new = hospital.gateway.clients.add("DPI", redirect_uris=["https://dpi.ght.test/cb"])
    browser = Browserless(hospital.http, ISSUER)  # type: ignore[arg-type]
    info = browser.code_flow(
        new.record.client_id,
        new.secret or "",
        "https://dpi.ght.test/cb",
        "hlefevre@chnimes.test",
        DOCTOR_PASSWORD,
    )
    assert info["sub"] == hospital.person_id("hlefevre") and info["current_site"] == SITE


def test_an_account_moved_since_the_last_sync_is_found_by_its_object_guid(hospital: Hospital) -> None:
    emergency = hospital.dc.add_ou("Urgences", hospital.staff)
    hospital.nurse_dn = hospital.dc.move(hospital.nurse_dn, emergency)  # the stored DN is now wrong
    assert hospital.signin(f"{SITE}\\pgarcia", NURSE_PASSWORD).ok
    assert hospital.signin(f"{SITE}\\pgarcia", "not-the-password").failure == "wrong_password"


def test_an_account_disabled_in_ad_cannot_sign_in(hospital: Hospital) -> None:
    hospital.dc.set_disabled(hospital.doctor_dn, True)
    try:
        refused = hospital.signin("hlefevre", DOCTOR_PASSWORD)
        assert not refused.ok and refused.failure == "wrong_password"  # the same answer as any failure
    finally:
        hospital.dc.set_disabled(hospital.doctor_dn, False)
    assert hospital.signin("hlefevre", DOCTOR_PASSWORD).ok
