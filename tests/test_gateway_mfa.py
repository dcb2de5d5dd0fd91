"""Second factors and levels of assurance, against the real `ght gateway serve`.

Two gateways share one directory: one sees the tests' loopback address as a hospital network
(`internal_networks` holds 127.0.0.0/8, the default), the other does not (it declares 10.0.0.0/8 only),
so the same person signs in "from inside" at one and "from outside" at the other. TOTP codes are
computed by the test from the seed the enrolment page shows (as the person's phone would); security
keys are Chromium's virtual authenticator (DevTools protocol), driven by Playwright.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pyotp
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlmodel import SQLModel, col

import sso_gateway.models  # noqa: F401  (registers the gateway's tables)
from directory_sync.config import ACR_LOW, ACR_SUBSTANTIAL, GatewaySettings, SecretRef
from directory_sync.store import AuditEvent, Store, open_store
from sso_gateway import assurance
from sso_gateway.local_credentials import set_password
from sso_gateway.models import MfaCredential, RecoveryCode
from sso_gateway.oauth import server as oauth_server
from tests.servers.browser import chromium
from tests.servers.gateway import (
    PASSWORD,
    Browserless,
    Clinician,
    GatewayProcess,
    form_fields,
    ght,
    pkce_pair,
    seed_directory,
    write_config,
)
from tests.servers.logscan import SECRETS
from tests.servers.slapd import free_port

#: How long a serving process may keep a client registration it read (sso_gateway.oauth.server).
CLIENT_CACHE: float = getattr(oauth_server, "CLIENT_CACHE_SECONDS", 0.0)
#: The application: a page that says "DPI", on the port its server got when the stage started.
CALLBACK = "http://127.0.0.1:0/callback"


class _Application(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<h1>DPI</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the codes in its URLs stay out of logs
        pass


def people() -> dict[str, Clinician]:
    def one(key: str, family: str, given: str, login: str) -> Clinician:
        return Clinician(key, family, given, {"ch-carpentras": (login, "60")})

    return {
        "totp": one("totp", "Benali", "Amel", "abenali"),
        "recovery": one("recovery", "Petit", "Marc", "mpetit"),
        "remote": one("remote", "Haddad", "Karim", "khaddad"),
        "roaming": one("roaming", "Morel", "Nadia", "nmorel"),
        "reset": one("reset", "Roux", "Julie", "jroux"),
        "key": one("key", "Blanc", "Sophie", "sblanc"),
        "plain": one("plain", "Faure", "Léa", "lfaure"),
        "manage": one("manage", "Vidal", "Chloé", "cvidal"),
    }


@dataclass
class Stage:
    store: Store
    inside: GatewayProcess
    outside: GatewayProcess
    inside_url: str
    outside_url: str
    config: Path
    clients: dict[str, tuple[str, str]]  # name -> (client_id, secret)
    people: dict[str, Clinician]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("mfa")
    database = f"sqlite:///{tmp}/ght.db"
    store = open_store(database)
    seeded = seed_directory(store, people())
    with store.session() as session:
        for clinician in seeded.values():
            set_password(session, clinician.id, PASSWORD)
        session.commit()
    inside_port, outside_port = free_port(), free_port()
    inside_url, outside_url = f"http://localhost:{inside_port}", f"http://localhost:{outside_port}"
    config = write_config(tmp / "inside", database, inside_url)
    (tmp / "outside").mkdir()
    (tmp / "outside" / "kek").write_text((tmp / "inside" / "kek").read_text())  # one gateway, two doors
    outside_config = write_config(tmp / "outside", database, outside_url, internal_networks=["10.0.0.0/8"])
    SECRETS.add((tmp / "inside" / "kek").read_text())
    global CALLBACK
    application = ThreadingHTTPServer(("127.0.0.1", 0), _Application)  # a port of its own, kept
    CALLBACK = f"http://127.0.0.1:{application.server_address[1]}/callback"
    clients = {}
    for name, extra in (("dpi", []), ("chimio", ["--min-acr", ACR_SUBSTANTIAL])):
        done = ght("clients", "add", name, "--redirect-uri", CALLBACK, *extra, "--json", config=config)
        assert done.returncode == 0, done.stderr
        registered = json.loads(done.stdout)
        clients[name] = (registered["client_id"], SECRETS.add(registered["client_secret"]) or "")
    assert json.loads(done.stdout)["min_acr"] == ACR_SUBSTANTIAL
    threading.Thread(target=application.serve_forever, daemon=True).start()
    inside = GatewayProcess(config, port=inside_port)
    try:
        outside = GatewayProcess(outside_config, port=outside_port)
    except Exception:
        inside.stop()
        application.shutdown()
        raise
    try:
        yield Stage(store, inside, outside, inside_url, outside_url, config, clients, seeded)
    finally:
        inside.stop()
        outside.stop()
        application.shutdown()


# --------------------------------------------------------------------------- driving the pages


class Person:
    """One browser without JavaScript at one gateway (httpx, its own cookies)."""

    def __init__(self, stage: Stage, issuer: str, login: str) -> None:
        self.stage = stage
        self.issuer = issuer
        self.login = login
        self.http = httpx.Client(follow_redirects=False, timeout=20)
        self.browser = Browserless(self.http, issuer)
        self.first_code = ""  # the code that confirmed an enrolment

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        return urljoin(self.issuer + "/", path)

    def get(self, path: str) -> httpx.Response:
        return self.browser.follow(self.http.get(self.url(path)))

    def post_form(self, page: httpx.Response, **values: str) -> httpx.Response:
        fields = form_fields(page.text)
        action = fields.pop("__action__")
        return self.http.post(self.url(action), data={**fields, **values})

    def authorize(self, client: str, **extra: str) -> tuple[httpx.Response, str]:
        """Start at an application: the page the person sees after the password (and the verifier)."""
        verifier, challenge = pkce_pair()
        client_id = self.stage.clients[client][0]
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "scope": "openid profile",
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        page = self.browser.follow(self.browser.authorize(**params))
        if page.status_code == 200 and 'name="password"' in page.text:
            page = self.browser.follow(self.browser.sign_in(page, self.login, PASSWORD))
        return page, verifier

    def enrol_totp(self, query: str = "") -> tuple[pyotp.TOTP, list[str]]:
        """Add an authenticator app from the security pages, as the person would with a phone."""
        enrolment = self.get(f"/security/totp{query}")
        assert enrolment.status_code == 200, enrolment.text
        assert "<svg" in words(enrolment), "no QR code"
        secret = unescape(re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', enrolment.text).group(1))  # type: ignore[union-attr]
        uri = unescape(re.search(r'id="totp-uri">([^<]+)<', enrolment.text).group(1))  # type: ignore[union-attr]
        assert pyotp.parse_uri(uri).secret == secret
        SECRETS.add(secret)
        totp = pyotp.TOTP(secret)
        self.first_code = totp.now()
        done = self.post_form(enrolment, label="Phone", code=self.first_code)
        assert done.status_code == 200, (done.headers.get("location"), done.text)
        codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
        for code in codes:
            SECRETS.add(code)
        return totp, codes

    def sign_in_at_gateway(self) -> httpx.Response:
        page = self.get("/login")
        return self.browser.sign_in(page, self.login, PASSWORD)


def words(response: httpx.Response) -> str:
    """The page's text as the person reads it (entities decoded)."""
    return unescape(response.text)


def redeem(stage: Stage, issuer: str, client: str, callback: httpx.Response, verifier: str) -> dict[str, Any]:
    """The application's side: exchange the code, verify the ID token, return its claims."""
    assert callback.status_code in (302, 303), (callback.status_code, callback.text[:300])
    location = callback.headers["location"]
    assert location.startswith(CALLBACK), location
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert "code" in params, params
    client_id, secret = stage.clients[client]
    token = httpx.post(
        f"{issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
        auth=(client_id, secret),
        timeout=20,
    )
    assert token.status_code == 200, token.text
    keys = KeySet.import_key_set(httpx.get(f"{issuer}/jwks", timeout=20).json())
    claims = dict(jwt.decode(token.json()["id_token"], keys).claims)
    assert claims["iss"] == issuer and claims["aud"] == client_id
    return claims


def fresh_code(totp: pyotp.TOTP, used: set[str]) -> str:
    """A code the person's phone shows now or in the next step, not used yet (a step is used once)."""
    for offset in (0, 30):
        code = totp.at(time.time() + offset)
        if code not in used:
            used.add(code)
            return code
    raise AssertionError("no unused code in the window")


def events(stage: Stage, person_id: str, action: str) -> list[AuditEvent]:
    with stage.store.session() as session:
        return list(
            session.execute(
                select(AuditEvent).where(
                    col(AuditEvent.person_id) == person_id, col(AuditEvent.action) == action
                )
            ).scalars()
        )


# --------------------------------------------------------------------------- the schema and the rules


def test_models_and_migrations_agree(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/schema.db")
    with store.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata
        )
    assert differences == []


def test_levels_from_methods_networks_and_requests() -> None:
    settings = GatewaySettings.model_validate(
        {
            "issuer": "https://sso.ght.test",
            "key_encryption_key": SecretRef(env="UNUSED"),
            "internal_networks": ["10.0.0.0/8"],
        }
    )
    assert assurance.acr_for(["pwd"], settings=settings) == ACR_LOW
    assert assurance.acr_for(["pwd", "otp"], settings=settings) == ACR_SUBSTANTIAL
    assert assurance.acr_for(["pwd", "hwk"], settings=settings) == ACR_SUBSTANTIAL
    assert assurance.acr_for(["otp"], settings=settings) == ACR_LOW  # a code alone is one factor
    # Pro Sante Connect's eidas1 (CPS / e-CPS) counts as substantial, whatever amr it reports.
    assert assurance.acr_for([], "eidas1", settings=settings) == ACR_SUBSTANTIAL
    assert assurance.acr_for(["mfa"], settings=settings) == ACR_SUBSTANTIAL
    assert assurance.with_mfa(["pwd", "otp"]) == ["pwd", "otp", "mfa"]
    assert assurance.with_mfa(["pwd", "pwd"]) == ["pwd"]
    # Inside a password may do; outside the RIE wants two factors; a client or a request may ask more.
    assert assurance.required_acr(settings, address="10.1.2.3") == ACR_LOW
    assert assurance.required_acr(settings, address="192.0.2.1") == ACR_SUBSTANTIAL
    assert assurance.required_acr(settings, address="not-an-address") == ACR_SUBSTANTIAL
    assert assurance.required_acr(settings, address="10.1.2.3", acr_values=ACR_SUBSTANTIAL) == ACR_SUBSTANTIAL
    assert assurance.required_acr(settings, address="10.1.2.3", acr_values="urn:other") == ACR_LOW
    assert (
        assurance.required_acr(settings, address="10.1.2.3", client_minimum=ACR_SUBSTANTIAL)
        == ACR_SUBSTANTIAL
    )
    # A client minimum no longer configured fails closed (the highest level).
    assert assurance.required_acr(settings, address="10.1.2.3", client_minimum="urn:gone") == ACR_SUBSTANTIAL
    assert not assurance.satisfies(None, ACR_LOW, settings)
    with pytest.raises(ValueError, match="external_acr 'urn:nowhere' is not one of the assurance_levels"):
        GatewaySettings.model_validate(
            {
                "issuer": "https://sso.ght.test",
                "key_encryption_key": {"env": "X"},
                "external_acr": "urn:nowhere",
            }
        )


def test_discovery_lists_the_levels(stage: Stage) -> None:
    metadata = httpx.get(f"{stage.inside_url}/.well-known/openid-configuration", timeout=20).json()
    assert metadata["acr_values_supported"] == [ACR_LOW, ACR_SUBSTANTIAL]
    assert "acr" in metadata["claims_supported"]


# --------------------------------------------------------------------------- password alone, inside


def test_inside_a_password_alone_gives_the_low_level(stage: Stage) -> None:
    person = Person(stage, stage.inside_url, "lfaure")
    try:
        login = person.get("/login?lang=en")
        assert "From the hospital's network the password is enough" in words(login)
        callback, verifier = person.authorize("dpi")
        claims = redeem(stage, stage.inside_url, "dpi", callback, verifier)
        assert claims["acr"] == ACR_LOW and claims["amr"] == ["pwd"]
        # The same session at an application that wants more: no silent answer with prompt=none...
        silent, _ = person.authorize("chimio", prompt="none")
        assert silent.status_code in (302, 303)
        error = parse_qs(urlsplit(silent.headers["location"]).query)
        assert error["error"] == ["interaction_required"] and error["iss"] == [stage.inside_url]
        # ...and with interaction, the person is asked for a second factor they do not have.
        page, _ = person.authorize("chimio", lang="en")
        assert page.status_code == 200 and "No second factor set up" in words(page)
        assert "You are on the hospital's network: set one up now." in words(page)
    finally:
        person.close()


# --------------------------------------------------------------------------- TOTP


def test_totp_enrolment_during_step_up_then_replayed_expired_and_wrong_codes(stage: Stage) -> None:
    person = Person(stage, stage.inside_url, "abenali")
    try:
        page, verifier = person.authorize("dpi", acr_values=ACR_SUBSTANTIAL, ui_locales="en")
        assert "No second factor set up" in words(page)
        setup = re.search(r'<a href="(/security\?request=[^"]+)"', page.text)
        assert setup, page.text
        security = person.get(unescape(setup.group(1)))
        assert security.status_code == 200 and "No second factor set up." in words(security)
        query = "?" + urlsplit(unescape(setup.group(1))).query
        totp, codes = person.enrol_totp(query=query)
        first_code = person.first_code
        assert len(codes) == 10 and len(set(codes)) == 10
        # The recovery codes page goes on with the application's request: now at the right level.
        callback = person.get(f"/mfa{query}")
        claims = redeem(stage, stage.inside_url, "dpi", callback, verifier)
        assert claims["acr"] == ACR_SUBSTANTIAL
        assert set(claims["amr"]) == {"pwd", "otp", "mfa"}
    finally:
        person.close()
    person_id = stage.people["totp"].id
    with stage.store.session() as session:
        stored = session.execute(
            select(MfaCredential).where(col(MfaCredential.person_id) == person_id)
        ).scalar_one()
        assert stored.secret and totp.secret not in stored.secret, "the TOTP seed is stored in clear"
        hashes = list(session.execute(select(col(RecoveryCode.code_hash))).scalars())
        assert not any(code.replace("-", "") in hashes for code in codes)
    used = {first_code}

    # Another browser: password, then a code. A wrong code, a replayed one and an expired one are refused
    # with the same words; then the phone's current code goes through.
    person = Person(stage, stage.inside_url, "abenali")
    try:
        page, verifier = person.authorize("dpi", acr_values=ACR_SUBSTANTIAL, ui_locales="en")
        assert page.status_code == 200 and "Confirm it is you" in words(page), page.text
        assert "Use my security key" not in page.text  # no key enrolled: no key button
        window = {totp.at(time.time() + k * 30) for k in (-1, 0, 1)}
        wrong = next(c for c in ("123456", "654321", "111111") if c not in window)
        refused = person.post_form(page, code=wrong)
        assert refused.status_code == 401 and "Wrong or expired code." in words(refused)
        replayed = person.post_form(refused, code=first_code)  # the code that confirmed the enrolment
        assert totp.verify(first_code, valid_window=1), "too slow: the code expired before its replay"
        assert replayed.status_code == 401 and "Wrong or expired code." in words(replayed)
        expired = person.post_form(replayed, code=totp.at(time.time() - 120))
        assert expired.status_code == 401 and "Wrong or expired code." in words(expired)
        callback = person.post_form(expired, code=fresh_code(totp, used))
        claims = redeem(stage, stage.inside_url, "dpi", callback, verifier)
        assert claims["acr"] == ACR_SUBSTANTIAL and "otp" in claims["amr"]
    finally:
        person.close()
    failures = events(stage, person_id, "gateway.mfa_failed")
    assert len(failures) == 3
    assert not any(code in json.dumps(e.changes) for e in failures for code in used | {wrong})


def test_a_recovery_code_works_once(stage: Stage) -> None:
    person = Person(stage, stage.inside_url, "mpetit")
    try:
        assert person.sign_in_at_gateway().headers["location"] == "/"  # inside: the password does
        _, codes = person.enrol_totp()
        listed = person.get("/security?lang=en")
        assert "Phone" in words(listed) and "Recovery codes left: 10" in words(listed)
    finally:
        person.close()
    code = codes[3]
    for attempt in ("first", "second"):
        person = Person(stage, stage.inside_url, "mpetit")
        try:
            page, verifier = person.authorize("chimio", ui_locales="en")  # its minimum asks a second factor
            assert "Confirm it is you" in words(page)
            answer = person.post_form(page, code=f"  {code.upper()} ")  # as typed, more or less
            if attempt == "first":
                claims = redeem(stage, stage.inside_url, "chimio", answer, verifier)
                assert claims["acr"] == ACR_SUBSTANTIAL
            else:
                assert answer.status_code == 401 and "Wrong or expired code." in words(answer)
                forged = {"method": "webauthn", "challenge": "nope", "credential": '{"rawId": "AAAA"}'}
                key = person.http.post(person.url(form_fields(answer.text)["__action__"]), data={
                    "csrf_token": form_fields(answer.text)["csrf_token"], **forged})  # fmt: skip
                assert key.status_code == 401 and "The security key was not recognised." in words(key)
        finally:
            person.close()


def test_a_person_lists_and_removes_their_factors(stage: Stage) -> None:
    person = Person(stage, stage.inside_url, "cvidal")
    try:
        person.sign_in_at_gateway()
        abandoned = person.get("/security/totp")  # an enrolment left unfinished counts for nothing
        assert abandoned.status_code == 200
        _, codes = person.enrol_totp()
        listed = person.get("/security?lang=en")
        assert words(listed).count("Authenticator app") == 1 and "Recovery codes left: 10" in words(listed)
    finally:
        person.close()
    # A new sign-in with the password alone: managing the factors first asks for one of them.
    person = Person(stage, stage.inside_url, "cvidal")
    try:
        person.sign_in_at_gateway()
        step_up = person.http.get(person.url("/security"))
        assert step_up.headers["location"] == "/mfa?return=security"
        page = person.get("/mfa?return=security&lang=en")
        assert "Confirm it is you" in words(page)
        back = person.post_form(page, code=codes[0])
        assert back.headers["location"] == "/security"
        listed = person.get("/security?lang=en")
        assert "Recovery codes left: 9" in words(listed)
        # New recovery codes replace the old ones.
        regenerate = re.search(
            r'<form method="post" action="/security/recovery-codes">.*?</form>', listed.text, re.S
        )
        assert regenerate
        renewed = person.http.post(
            person.url("/security/recovery-codes"), data=form_fields(regenerate.group(0))
        )
        new_codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", renewed.text)
        assert len(new_codes) == 10 and not set(new_codes) & set(codes)
        for code in new_codes:
            SECRETS.add(code)
        # Remove the app: nothing left, recovery codes gone with it.
        listed = person.get("/security?lang=en")
        removed = person.post_form(listed)
        assert removed.headers["location"] == "/security?removed=1"
        after = person.get("/security?removed=1&lang=en")
        assert "The second factor was removed." in words(after) and "No second factor set up." in words(after)
        forged = person.http.post(
            person.url("/security/remove"), data={"factor": "x", "csrf_token": "forged"}
        )
        assert forged.status_code == 403
    finally:
        person.close()
    with stage.store.session() as session:
        person_id = stage.people["manage"].id
        assert not session.execute(
            select(RecoveryCode).where(col(RecoveryCode.person_id) == person_id)
        ).first()
    assert events(stage, person_id, "gateway.mfa_removed")


# --------------------------------------------------------------------------- outside the hospitals


def test_outside_a_person_without_second_factor_is_refused_clearly(stage: Stage) -> None:
    person = Person(stage, stage.outside_url, "khaddad")
    try:
        login = person.get("/login?lang=en")
        assert "From outside the hospital's network you will be asked for a second factor" in words(login)
        page, _ = person.authorize("dpi", ui_locales="en")  # the client allows a password: not here
        assert page.status_code == 403
        assert "can only be set up from the network of one of the group's hospitals" in words(page)
        refused = person.get("/security/totp?lang=en")  # no enrolment from outside on a password
        assert refused.status_code == 403
        with stage.store.session() as session:
            assert not session.execute(
                select(MfaCredential).where(col(MfaCredential.person_id) == stage.people["remote"].id)
            ).first()
        # At the gateway itself too: the password is not enough from here.
        other = Person(stage, stage.outside_url, "khaddad")
        try:
            assert other.sign_in_at_gateway().headers["location"].startswith("/mfa?request=")
        finally:
            other.close()
    finally:
        person.close()
    assert events(stage, stage.people["remote"].id, "gateway.mfa_missing")


def test_outside_a_second_factor_enrolled_inside_is_asked_for(stage: Stage) -> None:
    inside = Person(stage, stage.inside_url, "nmorel")
    try:
        inside.sign_in_at_gateway()
        totp, _ = inside.enrol_totp()
        used = {inside.first_code}
    finally:
        inside.close()
    person = Person(stage, stage.outside_url, "nmorel")
    try:
        page, verifier = person.authorize("dpi", ui_locales="en")
        assert page.status_code == 200 and "Confirm it is you" in words(page)
        callback = person.post_form(page, code=fresh_code(totp, used))
        claims = redeem(stage, stage.outside_url, "dpi", callback, verifier)
        assert claims["acr"] == ACR_SUBSTANTIAL and set(claims["amr"]) == {"pwd", "otp", "mfa"}
        # Managing factors from outside: this session did prove a second factor, so it may.
        assert person.get("/security").status_code == 200
    finally:
        person.close()
    # Outside, a session with only the password may not manage the factors: it is asked to step up.
    bare = Person(stage, stage.outside_url, "nmorel")
    try:
        bare.sign_in_at_gateway()
        assert bare.http.get(bare.url("/security")).headers["location"] == "/mfa?return=security"
    finally:
        bare.close()


# --------------------------------------------------------------------------- IT staff


def test_it_staff_list_and_reset_a_persons_factors(stage: Stage) -> None:
    person = Person(stage, stage.inside_url, "jroux")
    person.sign_in_at_gateway()
    person.enrol_totp()
    assert person.http.get(person.url("/security")).status_code == 200  # signed in, with the factor
    listed = ght("people", "mfa", "list", "jroux", "--json", config=stage.config)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [f["kind"] for f in data["factors"]] == ["totp"] and data["recovery_codes"] == 10
    assert "secret" not in listed.stdout.lower()
    table = ght("people", "mfa", "list", "jroux", config=stage.config)
    assert "totp" in table.stdout and "Recovery codes left: 10" in table.stdout
    done = ght(
        "people", "mfa", "reset", "jroux", "--by", "it.support", "--note", "lost phone", config=stage.config
    )
    assert done.returncode == 0, done.stderr
    assert "Removed 1 second factor(s)" in done.stdout and "Ended 1 session(s)" in done.stdout
    # The session that passed the removed factor is over: its cookie leads back to the sign-in.
    after = person.http.get(person.url("/security"))
    person.close()
    assert after.status_code == 303 and after.headers["location"] == "/login"
    audit = events(stage, stage.people["reset"].id, "gateway.mfa_reset")
    assert audit and audit[0].changes["by"] == "it.support" and audit[0].changes["reason"] == "lost phone"
    assert (
        json.loads(ght("people", "mfa", "list", "jroux", "--json", config=stage.config).stdout)["factors"]
        == []
    )
    # The person must enrol again: inside it is offered, outside it is refused.
    inside = Person(stage, stage.inside_url, "jroux")
    outside = Person(stage, stage.outside_url, "jroux")
    try:
        page, _ = inside.authorize("chimio", ui_locales="en")
        assert "No second factor set up" in words(page) and "set one up now" in words(page)
        page, _ = outside.authorize("chimio", ui_locales="en")
        assert page.status_code == 403
    finally:
        inside.close()
        outside.close()
    unknown = ght("people", "mfa", "reset", "nobody-here", config=stage.config)
    assert unknown.returncode != 0


def test_a_client_minimum_level_is_set_and_checked(stage: Stage) -> None:
    bad = ght("clients", "set-min-acr", stage.clients["dpi"][0], "urn:nonsense", config=stage.config)
    assert bad.returncode != 0 and "unknown level" in bad.stderr + bad.stdout
    shown = json.loads(
        ght("clients", "show", stage.clients["chimio"][0], "--json", config=stage.config).stdout
    )
    assert shown["min_acr"] == ACR_SUBSTANTIAL
    # IT raises the DPI's minimum: a password alone no longer does, even inside; then lowers it again.
    dpi = stage.clients["dpi"][0]
    for level, needs_factor in ((ACR_SUBSTANTIAL, True), ("none", False)):
        done = ght("clients", "set-min-acr", dpi, level, config=stage.config)
        assert done.returncode == 0, done.stderr
        time.sleep(CLIENT_CACHE + 0.5)  # each serving process re-reads a registration after this
        person = Person(stage, stage.inside_url, "lfaure")
        try:
            page, verifier = person.authorize("dpi", ui_locales="en")
            if needs_factor:
                assert "No second factor set up" in words(page)
            else:
                assert redeem(stage, stage.inside_url, "dpi", page, verifier)["acr"] == ACR_LOW
        finally:
            person.close()


# --------------------------------------------------------------------------- WebAuthn in Chromium


def test_security_key_in_a_real_browser(stage: Stage) -> None:
    issuer = stage.inside_url
    with chromium() as browser:
        context = browser.new_context(locale="en-GB")
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        authenticator = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "usb",
                    "hasResidentKey": False,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )["authenticatorId"]
        # Password inside, then the person adds a security key on their page.
        page.goto(f"{issuer}/login")
        page.get_by_label("Login").fill("sblanc")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{issuer}/")
        page.goto(f"{issuer}/security/totp")  # the authenticator app's page, for a look (not used)
        page.screenshot(path=str(stage.config.parent / "totp-enrolment.png"), full_page=True)
        page.goto(f"{issuer}/security")
        page.get_by_role("link", name="Add a security key").click()
        page.wait_for_url(f"{issuer}/security/webauthn")
        page.get_by_label("Name of this device").fill("YubiKey bleue")
        page.get_by_role("button", name="Register my security key").click()
        page.wait_for_selector("#recovery-codes")
        assert "Your second factor is set up." in page.content()
        credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
        assert len(credentials) == 1
        page.goto(f"{issuer}/security")
        assert "YubiKey bleue" in page.content()

        # Sign out of the gateway.
        page.goto(f"{issuer}/logout")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_selector("text=You are signed out")

        # An application that requires two factors: password, then the key.
        verifier, challenge = pkce_pair()
        client_id = stage.clients["chimio"][0]
        page.goto(
            f"{issuer}/authorize?response_type=code&client_id={client_id}&scope=openid"
            f"&redirect_uri={CALLBACK}&state=s1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256"
        )
        page.get_by_label("Login").fill("sblanc")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{issuer}/mfa*")
        assert "Confirm it is you" in page.content()
        page.screenshot(path=str(stage.config.parent / "step-up.png"), full_page=True)
        page.get_by_role("button", name="Use my security key").click()
        page.wait_for_url(f"{CALLBACK}*")
        landed = page.url
        context.close()
    callback = httpx.Response(303, headers={"location": landed})
    claims = redeem(stage, issuer, "chimio", callback, verifier)
    assert claims["acr"] == ACR_SUBSTANTIAL
    assert set(claims["amr"]) == {"pwd", "hwk", "mfa"}
    with stage.store.session() as session:
        key = session.execute(
            select(MfaCredential).where(
                col(MfaCredential.person_id) == stage.people["key"].id, col(MfaCredential.kind) == "webauthn"
            )
        ).scalar_one()
        assert key.kind == "webauthn" and key.label == "YubiKey bleue" and key.last_used_at is not None
    assert events(stage, stage.people["key"].id, "gateway.mfa_verified")[0].changes["method"] == "webauthn"
