"""The OIDC provider, in process: the flows a relying party and a browser go through, and the attacks.

One gateway (FastAPI app on SQLite, local passwords) serves the whole module through Starlette's test
client; each test registers its own clients and starts with a browser without cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select

from directory_sync.config import GatewaySettings, SecretRef, Settings
from directory_sync.store import AuditEvent, open_store
from sso_gateway import Gateway
from sso_gateway.local_credentials import set_password
from sso_gateway.models import BackchannelDelivery, BrowserSession, IssuedToken, LoginThrottle
from sso_gateway.sessions import digest
from sso_gateway.web.app import create_app
from tests.servers.gateway import (
    PASSWORD,
    REPO,
    Browserless,
    Clinician,
    form_fields,
    pkce_pair,
    redirect_params,
    register_tokens,
    seed_directory,
)

ISSUER = "https://sso.ght.test"
DPI_CALLBACK = "https://dpi.ght.test/callback"
DPI_LOGGED_OUT = "https://dpi.ght.test/logged-out"


@dataclass
class Env:
    gateway: Gateway
    http: TestClient
    people: dict[str, Clinician]

    @property
    def browser(self) -> Browserless:
        return Browserless(self.http, ISSUER)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gateway")
    kek = tmp / "kek"
    kek.write_text(secrets.token_urlsafe(32))
    settings = Settings(
        database_url=f"sqlite:///{tmp}/ght.db",
        mappings_dir=REPO / "mappings",
        gateway=GatewaySettings.model_validate(
            {
                "issuer": ISSUER,
                "key_encryption_key": SecretRef(file=kek),
                "login_lockout_after": 5,
                "login_ip_lockout_after": 10_000,
            }
        ),
    )
    store = open_store(settings.database_url)
    people = seed_directory(store)
    with store.session() as session:
        for clinician in people.values():
            set_password(session, clinician.id, PASSWORD)
        session.commit()
    gateway = Gateway(settings, store)
    # From the loopback: an internal network (`internal_networks`), where a password alone may do.
    loopback = ("127.0.0.1", 50000)
    with TestClient(create_app(gateway), base_url=ISSUER, follow_redirects=False, client=loopback) as http:
        yield Env(gateway, http, people)


@pytest.fixture
def env(module_env: Env) -> Env:
    module_env.http.cookies.clear()
    return module_env


def add_client(env: Env, **options: Any) -> tuple[str, str | None]:
    options.setdefault("redirect_uris", [DPI_CALLBACK])
    options.setdefault("post_logout_redirect_uris", [DPI_LOGGED_OUT])
    new = env.gateway.clients.add(options.pop("name", "DPI"), **options)
    return new.record.client_id, new.secret


def authorize_params(client_id: str, challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": DPI_CALLBACK,
        "scope": "openid profile email health",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
    }
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return params | extra


def sign_in_for_code(
    env: Env, client_id: str, *, login: str = "pgarcia", site: str | None = None, **extra: str
) -> tuple[dict[str, str], str, dict[str, str]]:
    """Authorize, sign in (and pick a site), return (callback params, verifier, request params)."""
    verifier, challenge = pkce_pair()
    params = authorize_params(client_id, challenge, **extra)
    page = env.browser.follow(env.browser.authorize(**params))
    assert page.status_code == 200, page.text
    response = env.browser.sign_in(page, login, PASSWORD)
    if site is not None:
        response = env.browser.pick_site(env.browser.follow(response), site)
    return redirect_params(response), verifier, params


def redeem(env: Env, client_id: str, secret: str | None, code: str, verifier: str | None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": DPI_CALLBACK}
    if verifier:
        data["code_verifier"] = verifier
    auth = (client_id, secret) if secret else None
    if secret is None:
        data["client_id"] = client_id
    return register_tokens(env.http.post("/token", data=data, auth=auth))  # type: ignore[arg-type]


def jwks(env: Env) -> KeySet:
    return KeySet.import_key_set(env.http.get("/jwks").json())


def introspect(env: Env, client_id: str, secret: str | None, token: str) -> dict[str, Any]:
    response = env.http.post("/introspect", data={"token": token}, auth=(client_id, secret or ""))
    assert response.status_code == 200, response.text
    return dict(response.json())


# --------------------------------------------------------------------------- discovery and keys


def test_discovery_describes_the_provider(env: Env) -> None:
    oidc = env.http.get("/.well-known/openid-configuration").json()
    rfc8414 = env.http.get("/.well-known/oauth-authorization-server").json()
    assert oidc == rfc8414
    assert oidc["issuer"] == ISSUER and oidc["token_endpoint"] == f"{ISSUER}/token"
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert oidc["response_types_supported"] == ["code"]
    assert "implicit" not in oidc["grant_types_supported"] and "password" not in oidc["grant_types_supported"]
    assert oidc["authorization_response_iss_parameter_supported"] is True
    assert oidc["backchannel_logout_supported"] and oidc["backchannel_logout_session_supported"]
    keys = env.http.get("/jwks").json()["keys"]
    assert keys and all("d" not in k and "p" not in k for k in keys), "a private key part was published"
    assert {k["alg"] for k in keys} == {"RS256"}


# --------------------------------------------------------------------------- the code flow


def test_code_flow_with_site_choice_gives_verifiable_territorial_tokens(env: Env) -> None:
    client_id, secret = add_client(env)
    doctor = env.people["doctor"]
    callback, verifier, params = sign_in_for_code(
        env, client_id, login="ch-avignon\\hlefevre", site="ch-cavaillon"
    )
    assert callback["iss"] == ISSUER and callback["state"] == params["state"]  # RFC 9207

    response = redeem(env, client_id, secret, callback["code"], verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    id_token = jwt.decode(tokens["id_token"], jwks(env), algorithms=["RS256"])
    claims = id_token.claims
    assert claims["iss"] == ISSUER and claims["aud"] == client_id and claims["nonce"] == params["nonce"]
    assert claims["sub"] == doctor.id and claims["sid"] and claims["at_hash"]
    assert claims["current_site"] == "ch-cavaillon"
    assert claims["rpps"] == doctor.rpps and claims["idnat_ps"] == "8" + str(doctor.rpps)
    assert claims["profession"] == {"code": "10", "label": "Médecin"}
    assert {a["site"] for a in claims["affiliations"]} == {"ch-avignon", "ch-cavaillon"}
    assert [a["site"] for a in claims["affiliations"] if a["primary"]] == ["ch-avignon"]
    assert claims["preferred_username"] == "hlefevre" and claims["family_name"] == "Lefèvre"

    access = jwt.decode(tokens["access_token"], jwks(env), algorithms=["RS256"])
    assert access.header["typ"] == "at+jwt"  # RFC 9068
    assert access.claims["aud"] == client_id and access.claims["client_id"] == client_id
    assert access.claims["exp"] - access.claims["iat"] == env.gateway.config.access_token_lifetime

    info = env.http.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert info["sub"] == doctor.id and info["current_site"] == "ch-cavaillon"

    assert introspect(env, client_id, secret, tokens["access_token"])["active"] is True
    refreshed = env.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] != tokens["refresh_token"]  # rotated

    revoked = env.http.post(
        "/revoke", data={"token": refreshed.json()["refresh_token"]}, auth=(client_id, secret)
    )
    assert revoked.status_code == 200
    assert introspect(env, client_id, secret, refreshed.json()["access_token"])["active"] is False


def test_sign_in_page_is_french_accessible_and_works_without_javascript(env: Env) -> None:
    client_id, _ = add_client(env)
    page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
    html = page.text
    assert '<html lang="fr">' in html and "Connectez-vous" in html
    assert "<script" not in html
    assert '<label for="login">' in html and '<label for="password">' in html
    assert 'autocomplete="current-password"' in html
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    english = env.browser.follow(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], ui_locales="en"))
    )
    assert '<html lang="en">' in english.text and "Sign in" in english.text


def test_authorize_shows_the_sign_in_form_itself_and_login_links_keep_working(env: Env) -> None:
    client_id, _ = add_client(env)
    page = env.browser.authorize(**authorize_params(client_id, pkce_pair()[1]))  # no redirect to follow
    assert page.status_code == 200 and 'name="csrf_token"' in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    assert "ght_browser" in page.cookies  # the binding cookie comes with the form
    fields = form_fields(page.text)
    action = fields.pop("__action__")
    assert action.startswith("/login?request=")
    # The language link reloads this same sign-in form (not a new authorization request).
    switch = unescape(page.text.split('" lang="en"', 1)[0].rsplit('href="', 1)[1])
    assert switch.startswith(action + "&lang=en") or switch == f"{action}&lang=en"
    english = env.http.get(switch)
    assert (
        '<html lang="en">' in english.text and form_fields(english.text)["csrf_token"] == fields["csrf_token"]
    )
    # /login?request=... (the former redirect's target: bookmarks, existing links) shows it too.
    again = env.http.get(action)
    assert again.status_code == 200 and form_fields(again.text)["csrf_token"] == fields["csrf_token"]
    signed_in = env.browser.sign_in(page, "pgarcia", PASSWORD)
    assert "code" in redirect_params(signed_in) and "ght_session" in signed_in.cookies
    # The pending request went with the sign-in's transaction: the form cannot be posted again.
    replay = env.http.post(action, data={**fields, "login": "pgarcia", "password": PASSWORD})
    assert replay.status_code in (400, 403) and "ght_session" not in replay.cookies


def test_a_password_with_accents_and_symbols_signs_in_through_the_form(env: Env) -> None:
    client_id, _ = add_client(env)
    nurse = env.people["nurse"].id
    accented = "Été-2026 ñ&=+%;çà€"  # what urlencoding must carry intact: &, =, +, %, UTF-8
    with env.gateway.store.session() as session:
        set_password(session, nurse, accented)
        session.commit()
    try:
        page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
        assert env.browser.sign_in(page, "pgarcia", accented[:-1]).status_code == 401
        page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
        assert "code" in redirect_params(env.browser.sign_in(page, "pgarcia", accented))
    finally:
        with env.gateway.store.session() as session:
            set_password(session, nurse, PASSWORD)
            session.commit()


def test_wrong_password_unknown_login_and_suspended_person_get_the_same_answer(env: Env) -> None:
    client_id, _ = add_client(env)
    answers = []
    for login, password in (("pgarcia", "wrong password!"), ("nobody-here", PASSWORD), ("lmartin", PASSWORD)):
        page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
        response = env.browser.sign_in(page, login, password)
        message = response.text.split('role="alert"', 1)[1].split("</p>", 1)[0]
        answers.append((response.status_code, message))
        assert "ght_session" not in response.cookies
    assert len(set(answers)) == 1 and answers[0][0] == 401
    with env.gateway.store.session() as session:
        events = session.execute(
            select(AuditEvent).where(AuditEvent.action == "gateway.signin_failed")
        ).scalars()
        reasons = [e.reason for e in events]
    assert {"wrong_password", "unknown_login", "person_not_active"} <= set(reasons)  # the audit knows which


def test_ldap_injection_in_the_login_field_matches_nobody(env: Env) -> None:
    client_id, _ = add_client(env)
    for login in ("*", "pgarcia)(uid=*", "*)(|(uid=*", "ch-carpentras\\*", "%"):
        page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
        assert env.browser.sign_in(page, login, PASSWORD).status_code == 401, login


# --------------------------------------------------------------------------- RFC 9700 and known attacks


def test_code_reuse_is_refused_and_revokes_what_the_first_use_issued(env: Env) -> None:
    client_id, secret = add_client(env)
    callback, verifier, _ = sign_in_for_code(env, client_id)
    first = redeem(env, client_id, secret, callback["code"], verifier)
    assert first.status_code == 200
    second = redeem(env, client_id, secret, callback["code"], verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    tokens = first.json()
    assert introspect(env, client_id, secret, tokens["access_token"])["active"] is False
    refresh = env.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refresh.status_code == 400


def test_a_nonce_given_with_a_code_is_refused_again_even_to_a_sign_in_form_already_open(env: Env) -> None:
    """The nonce is looked up when the request arrives and again, in the sign-in's own transaction,
    before its code is written: a second request with the same nonce, whose form was opened before
    the first one's code existed, gets an error redirect instead of a code."""
    client_id, _ = add_client(env)
    params = authorize_params(client_id, pkce_pair()[1])
    first = env.browser.follow(env.browser.authorize(**params))
    second = env.browser.follow(env.browser.authorize(**(params | {"state": "second"})))
    assert first.status_code == second.status_code == 200
    assert "code" in redirect_params(env.browser.sign_in(first, "pgarcia", PASSWORD))
    refused = redirect_params(env.browser.sign_in(second, "pgarcia", PASSWORD))
    assert refused["error"] == "invalid_request" and "code" not in refused
    assert refused["state"] == "second" and refused["iss"] == ISSUER
    env.http.cookies.clear()
    again = redirect_params(env.browser.authorize(**params))
    assert again["error"] == "invalid_request" and again["state"] == params["state"]


def test_pkce_is_required_s256_only_and_checked(env: Env) -> None:
    client_id, secret = add_client(env)
    # missing: the error goes back to the (validated) redirect URI, with iss
    params = redirect_params(env.browser.authorize(**authorize_params(client_id, None)))
    assert params["error"] == "invalid_request" and params["iss"] == ISSUER
    # downgrade to plain, or no method at all
    verifier, challenge = pkce_pair()
    plain = authorize_params(client_id, None, code_challenge=verifier, code_challenge_method="plain")
    assert redirect_params(env.browser.authorize(**plain))["error"] == "invalid_request"
    no_method = authorize_params(client_id, None, code_challenge=challenge)
    assert redirect_params(env.browser.authorize(**no_method))["error"] == "invalid_request"
    # wrong verifier, then no verifier
    callback, _, _ = sign_in_for_code(env, client_id)
    wrong = redeem(env, client_id, secret, callback["code"], pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    env.http.cookies.clear()
    callback, _, _ = sign_in_for_code(env, client_id)
    assert redeem(env, client_id, secret, callback["code"], None).status_code == 400


def test_a_verifier_without_a_challenge_is_refused(env: Env) -> None:
    client_id, secret = add_client(env, require_pkce=False)
    params = authorize_params(client_id, None)
    page = env.browser.follow(env.browser.authorize(**params))
    callback = redirect_params(env.browser.sign_in(page, "pgarcia", PASSWORD))
    response = redeem(env, client_id, secret, callback["code"], pkce_pair()[0])
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        DPI_CALLBACK + ".evil.example",  # prefix trick
        DPI_CALLBACK + "/../../evil",
        DPI_CALLBACK + "?next=https://evil.example",
        "https://dpi.ght.test/CALLBACK",
    ],
)
def test_an_unregistered_redirect_uri_gets_an_error_page_never_a_redirect(
    env: Env, redirect_uri: str
) -> None:
    client_id, _ = add_client(env)
    response = env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], redirect_uri=redirect_uri))
    assert response.status_code == 400 and "location" not in response.headers
    unknown = env.browser.authorize(**authorize_params("no-such-client", pkce_pair()[1]))
    assert unknown.status_code == 400 and "location" not in unknown.headers


def test_refresh_token_reuse_revokes_the_whole_grant(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    client_id, secret = add_client(env)
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    # The rotations below are answered by the refresh fast path (oauth/fastpath.py, SQLite variant).
    fast_path = env.gateway.server.refresh_fast_path
    answered: list[bool] = []
    refresh_fast = fast_path.refresh

    async def spy(*args: Any) -> Any:
        issued = await refresh_fast(*args)
        answered.append(issued is not None)
        return issued

    monkeypatch.setattr(fast_path, "refresh", spy)

    def refresh(token: str) -> httpx.Response:
        return env.http.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": token}, auth=(client_id, secret)
        )

    first = refresh(tokens["refresh_token"])
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    assert first.headers["pragma"] == "no-cache" and first.headers["content-type"] == "application/json"
    rotated = refresh(first.json()["refresh_token"]).json()  # rotated twice
    assert answered == [True, True]
    # The fast path writes through the DB-API: its rows read back as the ORM's do, in the same format.
    with env.gateway.store.session() as db:
        by_orm = db.get(IssuedToken, digest(tokens["refresh_token"]))  # written by the code's redemption
        by_fast_path = db.get(IssuedToken, digest(first.json()["refresh_token"]))
        assert by_orm is not None and by_fast_path is not None
        assert by_orm.rotated_at is not None and by_fast_path.rotated_at is not None
        assert by_fast_path.expires_at - by_fast_path.issued_at == by_orm.expires_at - by_orm.issued_at
        assert (by_fast_path.grant_id, by_fast_path.person_id) == (by_orm.grant_id, by_orm.person_id)
        texts = db.connection().exec_driver_sql(
            "SELECT issued_at, expires_at, rotated_at FROM gateway_token WHERE token_hash IN (?, ?)",
            (by_orm.token_hash, by_fast_path.token_hash),
        )
        assert len({tuple(len(value) for value in row) for row in texts}) == 1
    assert answered == [True, True]
    assert introspect(env, client_id, secret, rotated["access_token"])["active"] is True
    stolen = refresh(tokens["refresh_token"])  # the first one, presented again
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert answered == [True, True, False]  # handed back to Authlib's path, which revokes the grant
    assert refresh(rotated["refresh_token"]).status_code == 400  # the legitimate one is dead too
    assert introspect(env, client_id, secret, rotated["access_token"])["active"] is False
    assert introspect(env, client_id, secret, first.json()["access_token"])["active"] is False


def test_login_form_cannot_be_submitted_from_another_site(env: Env) -> None:
    client_id, _ = add_client(env)
    page = env.browser.follow(env.browser.authorize(**authorize_params(client_id, pkce_pair()[1])))
    fields = form_fields(page.text)
    action = fields.pop("__action__")
    forged = {"login": "pgarcia", "password": PASSWORD}
    assert env.http.post(action, data=forged).status_code == 403  # no CSRF token
    env.http.cookies.clear()  # the attacker's own browser: right token, but not bound to this browser
    response = env.http.post(action, data={**fields, **forged})
    assert response.status_code in (400, 403) and "ght_session" not in response.cookies


def test_ui_and_token_endpoints_refuse_unknown_or_wrongly_authenticated_clients(env: Env) -> None:
    client_id, secret = add_client(env, redirect_uris=[], grant_types=["client_credentials"])
    ok = env.http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or ""))
    assert ok.status_code == 200 and "refresh_token" not in ok.json()
    claims = jwt.decode(ok.json()["access_token"], jwks(env), algorithms=["RS256"]).claims
    assert claims["sub"] == client_id and claims["aud"] == client_id
    wrong = env.http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, "guess"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    implicit = env.http.post(
        "/token", data={"grant_type": "password", "username": "pgarcia", "password": PASSWORD}
    )
    assert implicit.json()["error"] == "unsupported_grant_type"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(header: dict[str, str], claims: dict[str, Any], public_pem: bytes) -> str:
    """Algorithm confusion: an HMAC "signature" keyed with the server's or client's *public* key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _client_assertion(key: Any, client_id: str, aud: str, alg: str = "RS256", jti: str | None = None) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": jti or secrets.token_hex(8),
    }
    return jwt.encode({"alg": alg}, claims, key, algorithms=[alg])


def test_private_key_jwt_and_its_attacks(env: Env) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "app-key"}, private=True)
    client_id, _ = add_client(
        env, redirect_uris=[], grant_types=["client_credentials"], jwks={"keys": [key.as_dict(private=False)]}
    )

    def token(assertion: str) -> httpx.Response:
        return env.http.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )

    def refused(assertion: str) -> bool:
        response = token(assertion)
        return response.status_code in (400, 401) and response.json()["error"] == "invalid_client"

    good = _client_assertion(key, client_id, f"{ISSUER}/token", jti="once")
    assert token(good).status_code == 200
    assert refused(good)  # replayed jti
    assert refused(
        _client_assertion(key, client_id, "https://another-server.example/token")
    )  # wrong audience
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "exp": now + 60, "jti": secrets.token_hex(8)}
    assert refused(hs256_with_public_key({"alg": "HS256"}, claims, key.as_pem(private=False)))
    assert refused(f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(claims).encode())}.")


def test_userinfo_accepts_only_live_access_tokens(env: Env) -> None:
    client_id, secret = add_client(env)
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()

    def userinfo(token: str) -> httpx.Response:
        return env.http.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert userinfo(tokens["access_token"]).status_code == 200
    assert userinfo(tokens["id_token"]).status_code == 401  # an ID token is not an access token
    payload = tokens["access_token"].split(".")[1]
    none_header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    assert userinfo(f"{none_header}.{payload}.").status_code == 401  # alg none
    public_pem = RSAKey.import_key(env.http.get("/jwks").json()["keys"][0]).as_pem(private=False)
    claims = jwt.decode(tokens["access_token"], jwks(env), algorithms=["RS256"]).claims
    confused = hs256_with_public_key({"alg": "HS256", "typ": "at+jwt"}, claims, public_pem)
    assert userinfo(confused).status_code == 401  # algorithm confusion
    env.http.post("/revoke", data={"token": tokens["access_token"]}, auth=(client_id, secret))
    revoked = userinfo(tokens["access_token"])
    assert revoked.status_code == 401 and "invalid_token" in revoked.headers["www-authenticate"]


def test_client_credentials_tokens_are_not_written_yet_introspected_and_revoked(env: Env) -> None:
    service, secret = add_client(env, name="Labo", redirect_uris=[], grant_types=["client_credentials"])
    other, other_secret = add_client(
        env, name="Facturation", redirect_uris=[], grant_types=["client_credentials"]
    )
    answer = env.http.post("/token", data={"grant_type": "client_credentials"}, auth=(service, secret or ""))
    token = answer.json()["access_token"]
    with env.gateway.store.session() as session:
        assert session.get(IssuedToken, digest(token)) is None  # no write per client-credentials grant
    active = introspect(env, service, secret, token)
    assert active["active"] is True and active["sub"] == active["client_id"] == service
    assert introspect(env, other, other_secret, token) == {"active": False}
    # Signed with a key that is not ours, under our kid: not a token of ours, written or not.
    kid = jwt.decode(token, jwks(env), algorithms=["RS256"]).header["kid"]
    forged = jwt.encode(
        {"alg": "RS256", "typ": "at+jwt", "kid": kid},
        jwt.decode(token, jwks(env), algorithms=["RS256"]).claims,
        RSAKey.generate_key(2048, private=True),
    )
    assert introspect(env, service, secret, forged) == {"active": False}
    for _ in range(2):  # revoking twice is harmless
        revoked = env.http.post("/revoke", data={"token": token}, auth=(service, secret or ""))
        assert revoked.status_code == 200
    assert introspect(env, service, secret, token) == {"active": False}
    with env.gateway.store.session() as session:
        row = session.get(IssuedToken, digest(token))
        assert row is not None and row.revoked_at is not None  # the revocation list, read by every process
    # A secret rotated by this process stops working at once (other processes: CLIENT_CACHE_SECONDS).
    rotated = env.gateway.clients.rotate_secret(service).secret
    old = env.http.post("/token", data={"grant_type": "client_credentials"}, auth=(service, secret or ""))
    assert old.status_code == 401
    new = env.http.post("/token", data={"grant_type": "client_credentials"}, auth=(service, rotated or ""))
    assert new.status_code == 200


def test_a_client_cannot_introspect_another_clients_token(env: Env) -> None:
    dpi, dpi_secret = add_client(env)
    other, other_secret = add_client(env, name="Pharmacie")
    callback, verifier, _ = sign_in_for_code(env, dpi)
    tokens = redeem(env, dpi, dpi_secret, callback["code"], verifier).json()
    assert introspect(env, other, other_secret, tokens["access_token"]) == {"active": False}
    assert introspect(env, dpi, dpi_secret, tokens["access_token"])["sub"] == env.people["nurse"].id


# --------------------------------------------------------------------------- sessions, prompt, site switch


def test_prompt_none_login_and_max_age(env: Env) -> None:
    client_id, _ = add_client(env)
    no_session = redirect_params(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="none"))
    )
    assert no_session["error"] == "login_required" and no_session["iss"] == ISSUER
    sign_in_for_code(env, client_id)
    silent = redirect_params(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="none"))
    )
    assert "code" in silent  # the session signs the person in without a page
    again = env.browser.follow(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="login"))
    )
    assert again.status_code == 200 and 'name="password"' in again.text
    time.sleep(1.1)
    old = env.browser.follow(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], max_age="0"))
    )
    assert 'name="password"' in old.text


def test_switching_site_asks_no_password(env: Env) -> None:
    client_id, secret = add_client(env)
    callback, verifier, _ = sign_in_for_code(env, client_id, login="hlefevre", site="ch-avignon")
    first = jwt.decode(
        redeem(env, client_id, secret, callback["code"], verifier).json()["id_token"], jwks(env)
    ).claims
    assert first["current_site"] == "ch-avignon"
    verifier, challenge = pkce_pair()
    picker = env.browser.follow(
        env.browser.authorize(**authorize_params(client_id, challenge, prompt="select_account"))
    )
    assert 'name="password"' not in picker.text
    assert picker.text.index("ch-avignon") < picker.text.index("ch-cavaillon")  # the last choice first
    callback = redirect_params(env.browser.pick_site(picker, "ch-cavaillon"))
    second = jwt.decode(
        redeem(env, client_id, secret, callback["code"], verifier).json()["id_token"], jwks(env)
    ).claims
    assert second["current_site"] == "ch-cavaillon" and second["sid"] == first["sid"]
    # an application may name the site itself
    verifier, challenge = pkce_pair()
    named = redirect_params(
        env.browser.authorize(**authorize_params(client_id, challenge, site="ch-avignon"))
    )
    third = jwt.decode(
        redeem(env, client_id, secret, named["code"], verifier).json()["id_token"], jwks(env)
    ).claims
    assert third["current_site"] == "ch-avignon"


def test_logout_redirects_only_to_registered_uris_and_ends_the_session(env: Env) -> None:
    client_id, secret = add_client(env, backchannel_logout_uri="https://dpi.ght.test/backchannel")
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    sid = jwt.decode(tokens["id_token"], jwks(env)).claims["sid"]

    evil = env.http.get(
        "/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://evil.example/"},
    )
    assert "location" not in evil.headers  # no open redirect (the session is ended all the same)
    with env.gateway.store.session() as session:
        assert session.get(BrowserSession, sid).ended_at is not None  # type: ignore[union-attr]
        queued = list(
            session.execute(select(BackchannelDelivery).where(BackchannelDelivery.sid == sid)).scalars()
        )
    assert [d.client_id for d in queued] == [client_id]
    assert introspect(env, client_id, secret, tokens["access_token"])["active"] is False
    prompt_none = redirect_params(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="none"))
    )
    assert prompt_none["error"] == "login_required"

    env.http.cookies.clear()
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    good = env.http.get(
        "/logout",
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": DPI_LOGGED_OUT,
            "state": "s1",
        },
    )
    assert good.status_code == 302 and good.headers["location"] == f"{DPI_LOGGED_OUT}?state=s1"


def test_it_staff_sign_a_person_out_of_every_session(env: Env) -> None:
    """`ght people sign-out` (a stolen badge, a lost phone): every session of the person ends, the
    applications are told, and refresh tokens stop working; the next sign-in asks for the password."""
    client_id, secret = add_client(env, backchannel_logout_uri="https://dpi.ght.test/backchannel")
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    sid = jwt.decode(tokens["id_token"], jwks(env)).claims["sid"]
    person_id = jwt.decode(tokens["id_token"], jwks(env)).claims["sub"]

    ended, told = env.gateway.logout.sign_out_person(person_id, reason="stolen badge", by="it.support")

    assert (ended, told) >= (1, 1)
    with env.gateway.store.session() as session:
        assert session.get(BrowserSession, sid).ended_at is not None  # type: ignore[union-attr]
        queued = session.execute(select(BackchannelDelivery).where(BackchannelDelivery.sid == sid)).scalars()
        assert [d.client_id for d in queued] == [client_id]
        audit = session.execute(
            select(AuditEvent).where(
                AuditEvent.person_id == person_id, AuditEvent.action == "gateway.signed_out"
            )
        ).scalar_one()
    assert audit.changes["by"] == "it.support" and audit.changes["reason"] == "stolen badge"
    refreshed = env.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, secret),
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert introspect(env, client_id, secret, tokens["access_token"])["active"] is False
    prompt_none = redirect_params(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="none"))
    )
    assert prompt_none["error"] == "login_required"


def test_logout_without_id_token_hint_asks_for_confirmation(env: Env) -> None:
    client_id, _ = add_client(env)
    sign_in_for_code(env, client_id)
    page = env.http.get("/logout")
    assert page.status_code == 200 and 'name="csrf_token"' in page.text
    assert env.http.post("/logout", data={"csrf_token": "forged"}).status_code == 200  # asks again
    fields = form_fields(page.text)
    fields.pop("__action__")
    done = env.http.post("/logout", data=fields)
    assert "déconnecté" in done.text
    prompt_none = redirect_params(
        env.browser.authorize(**authorize_params(client_id, pkce_pair()[1], prompt="none"))
    )
    assert prompt_none["error"] == "login_required"


# --------------------------------------------------------------------------- brute force


def test_brute_force_is_slowed_then_locked_per_account_and_per_address(env: Env) -> None:
    signin = env.gateway.signin
    for _ in range(4):  # three free failures, then each one makes the next attempt wait
        assert signin("pgarcia", "wrong", "10.1.1.1").failure == "wrong_password"
    delayed = signin("pgarcia", PASSWORD, "10.1.1.2")  # even the right password waits its turn
    assert delayed.failure == "throttled" and delayed.retry_after >= 1
    with env.gateway.store.session() as session:
        row = session.get(LoginThrottle, f"person:{env.people['nurse'].id}")
        assert row is not None
        row.next_attempt_at = None
        row.failures = 4
        session.commit()
    signin("pgarcia", "wrong", "10.1.1.3")  # the fifth failure locks
    locked = signin("pgarcia", PASSWORD, "10.1.1.4")
    assert locked.failure == "throttled" and locked.retry_after > 60
    unknown = [signin("nobody-at-all", "x", "10.1.1.5").failure for _ in range(5)]
    assert unknown[-1] == "throttled"  # an unknown login is throttled like a known one
    with env.gateway.store.session() as session:
        session.query(LoginThrottle).delete()
        session.commit()
    page_client, _ = add_client(env)
    page = env.browser.follow(env.browser.authorize(**authorize_params(page_client, pkce_pair()[1])))
    for _ in range(5):
        page_response = env.browser.sign_in(page, "pgarcia", "wrong")
    assert page_response.status_code == 429 and "Trop de tentatives" in page_response.text
    with env.gateway.store.session() as session:
        session.query(LoginThrottle).delete()
        session.commit()


# --------------------------------------------------------------------------- health


def test_health_and_readiness(env: Env, tmp_path: Path) -> None:
    assert env.http.get("/healthz").json() == {"status": "ok"}
    assert env.http.get("/readyz").status_code == 200


def test_a_refresh_waits_for_a_database_another_process_is_writing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path answers on the event loop's own SQLite connection, which never waits for a lock:
    while another process holds the write lock (a sync, the other gateway worker), the claim is made in
    a worker thread that waits for it, and the refresh is answered once the lock is released. Its
    write-ahead log is checkpointed in a thread, every CHECKPOINT_EVERY commits."""
    import sqlite3
    import threading

    from sso_gateway.oauth import fastpath

    client_id, secret = add_client(env)
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    fast_path = env.gateway.server.refresh_fast_path
    monkeypatch.setattr(fastpath, "CHECKPOINT_EVERY", 1)
    checkpoints: list[bool] = []
    checkpoint = fast_path._checkpoint
    monkeypatch.setattr(fast_path, "_checkpoint", lambda: checkpoints.append(True) or checkpoint())

    def refresh(token: str) -> httpx.Response:
        return env.http.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": token}, auth=(client_id, secret)
        )

    first = refresh(tokens["refresh_token"])  # on the loop's connection: nobody holds the lock
    assert first.status_code == 200
    other = sqlite3.connect(env.gateway.store.engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    answered: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answered.append(refresh(first.json()["refresh_token"])))
    waiting.start()
    try:
        time.sleep(0.5)
        assert answered == [] and waiting.is_alive()  # waits for the lock, without failing...
        asked = time.monotonic()  # ...and not on the event loop, which goes on answering at once
        assert env.http.get("/healthz").status_code == 200 and time.monotonic() - asked < 1.5
    finally:
        other.execute("COMMIT")
        other.close()
        waiting.join(timeout=30)
    assert answered[0].status_code == 200, answered[0].text
    assert refresh(answered[0].json()["refresh_token"]).status_code == 200  # the chain goes on
    assert refresh(first.json()["refresh_token"]).json()["error"] == "invalid_grant"  # claimed once
    assert checkpoints  # the loop's commits were checkpointed


def test_refresh_refused_for_a_suspended_person_a_wrong_secret_or_another_client(env: Env) -> None:
    """What the refresh fast path hands back is answered as before, and consumes nothing."""
    from directory_sync.store import Person

    client_id, secret = add_client(env)
    other_id, other_secret = add_client(env, name="Other")
    callback, verifier, _ = sign_in_for_code(env, client_id)
    tokens = redeem(env, client_id, secret, callback["code"], verifier).json()
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    wrong = env.http.post("/token", data=form, auth=(client_id, "guess"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["cache-control"] == "no-store"
    foreign = env.http.post("/token", data=form, auth=(other_id, other_secret or ""))
    assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"
    person_id = env.people["nurse"].id  # pgarcia
    store = env.gateway.store

    def set_status(status: str) -> None:
        with store.session() as session:
            person = session.get(Person, person_id)
            assert person is not None
            person.status = status
            session.add(person)
            session.commit()

    try:
        set_status("suspended")
        refused = env.http.post("/token", data=form, auth=(client_id, secret or ""))
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    finally:
        set_status("active")
    again = env.http.post("/token", data=form, auth=(client_id, secret or ""))
    assert again.status_code == 200, again.text  # none of the refused requests used the token


def test_the_token_endpoint_refuses_an_oversized_body_and_tags_its_answers(env: Env) -> None:
    """Token requests are answered in front of the application's middleware: they still carry the
    request id, and a body far larger than any token request is refused before it is buffered."""
    client_id, secret = add_client(env, redirect_uris=[], grant_types=["client_credentials"])
    big = env.http.post(
        "/token",
        data={"grant_type": "client_credentials", "padding": "x" * 100_000},
        auth=(client_id, secret or ""),
    )
    assert big.status_code == 413
    tagged = env.http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret or ""),
        headers={"X-Request-ID": "lb-1234"},
    )
    assert tagged.status_code == 200 and tagged.headers["x-request-id"] == "lb-1234"
    refused = env.http.post("/token", data={"grant_type": "password"}, auth=(client_id, secret or ""))
    assert refused.status_code == 400 and refused.json()["error"] == "unsupported_grant_type"
    assert len(refused.headers["x-request-id"]) == 32
