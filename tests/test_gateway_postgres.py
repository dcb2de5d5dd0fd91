"""Two gateway processes on one PostgreSQL behave as one (as behind a load balancer); so do two on one
SQLite file (as two workers of `ght gateway serve --workers 2`).

A code issued by one is redeemed at the other; a token revoked at one is inactive at the other; a
logout at one ends the session at the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import update
from sqlmodel import col

from directory_sync.store import Person, open_store
from tests.servers.gateway import (
    PASSWORD,
    REPO,
    Browserless,
    GatewayProcess,
    ght,
    pkce_pair,
    redirect_params,
    seed_directory,
    write_config,
)
from tests.servers.postgres import PostgresServer
from tests.servers.slapd import free_port

CALLBACK = "https://dpi.ght.test/cb"


@dataclass
class Pair:
    one: GatewayProcess
    two: GatewayProcess
    client_id: str
    secret: str
    url: str


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two processes on one PostgreSQL database (gateways behind a load balancer), or on one SQLite
    file (two workers of one host: each answers refreshes on a connection of its own, sso_gateway/
    oauth/fastpath.py, that never waits for the other's write lock on the event loop)."""
    tmp = tmp_path_factory.mktemp("pg")
    postgres_server: PostgresServer | None = None
    if request.param == "postgresql":
        postgres_server = request.getfixturevalue("postgres_server")
        url = postgres_server.create_database()
    else:
        url = f"sqlite:///{tmp}/ght.db"
    seed_directory(open_store(url))
    port = free_port()
    config = write_config(tmp, url, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings")
    done = ght("people", "set-password", "--password-stdin", "pgarcia", config=config, stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    added = ght("clients", "add", "DPI", "--redirect-uri", CALLBACK, "--json", config=config)
    assert added.returncode == 0, added.stderr
    import json

    client = json.loads(added.stdout)
    one = GatewayProcess(config, port=port)
    two = GatewayProcess(config)  # same issuer and database, another process and port
    try:
        yield Pair(one, two, client["client_id"], client["client_secret"], url)
    finally:
        one.stop()
        two.stop()
        if postgres_server is not None:
            postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_two_processes_share_codes_tokens_and_sessions(pair: Pair) -> None:
    with httpx.Client() as http:
        browser = Browserless(http, pair.one.url)
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code", "client_id": pair.client_id, "redirect_uri": CALLBACK,
            "scope": "openid profile health", "state": "s", "code_challenge": challenge,
            "code_challenge_method": "S256",
        }  # fmt: skip
        page = browser.follow(browser.authorize(**params))
        callback = redirect_params(browser.sign_in(page, "pgarcia", PASSWORD))  # at process one

        auth = (pair.client_id, pair.secret)
        tokens = http.post(
            f"{pair.two.url}/token",  # redeemed at process two
            data={"grant_type": "authorization_code", "code": callback["code"], "code_verifier": verifier,
                  "redirect_uri": CALLBACK},
            auth=auth,
        )  # fmt: skip
        assert tokens.status_code == 200, tokens.text
        access, id_token = tokens.json()["access_token"], tokens.json()["id_token"]

        def active(base: str) -> bool:
            return bool(http.post(f"{base}/introspect", data={"token": access}, auth=auth).json()["active"])

        bearer = {"Authorization": f"Bearer {access}"}
        assert http.get(f"{pair.one.url}/userinfo", headers=bearer).status_code == 200
        http.post(f"{pair.one.url}/revoke", data={"token": access}, auth=auth)
        assert active(pair.one.url) is False and active(pair.two.url) is False
        replay = http.post(
            f"{pair.one.url}/token",
            data={"grant_type": "authorization_code", "code": callback["code"], "code_verifier": verifier,
                  "redirect_uri": CALLBACK},
            auth=auth,
        )  # fmt: skip
        assert replay.status_code == 400  # single use across processes

        silent = redirect_params(browser.authorize(**{**params, "prompt": "none"}))
        assert "code" in silent  # the session (cookie from process one) is live
        ended = http.get(f"{pair.two.url}/logout", params={"id_token_hint": id_token})  # logout at two
        assert ended.status_code == 200
        after = redirect_params(browser.authorize(**{**params, "prompt": "none"}))  # back at one
        assert after["error"] == "login_required"


# -- refresh grants on PostgreSQL: the fast path (sso_gateway/oauth/fastpath.py) -----------------------


def _tokens(http: httpx.Client, pair: Pair, base: str) -> dict[str, str]:
    """A complete sign-in of pgarcia at `base`, redeemed there: the token response."""
    browser = Browserless(http, base)
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": pair.client_id, "redirect_uri": CALLBACK,
        "scope": "openid profile offline_access", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256",
    }  # fmt: skip
    page = browser.follow(browser.authorize(**params))
    callback = redirect_params(browser.sign_in(page, "pgarcia", PASSWORD))
    http.cookies.clear()  # the next sign-in starts from a new browser
    answer = http.post(
        f"{base}/token",
        data={"grant_type": "authorization_code", "code": callback["code"], "code_verifier": verifier,
              "redirect_uri": CALLBACK},
        auth=(pair.client_id, pair.secret),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    tokens: dict[str, str] = answer.json()
    return tokens


def _refresh(
    http: Any, pair: Pair, base: str, token: str, auth: tuple[str, str] | None = None, **form: str
) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **form}
    answer: httpx.Response = http.post(f"{base}/token", data=data, auth=auth or (pair.client_id, pair.secret))
    return answer


def _active(http: httpx.Client, pair: Pair, base: str, token: str) -> bool:
    answer = http.post(f"{base}/introspect", data={"token": token}, auth=(pair.client_id, pair.secret))
    return bool(answer.json()["active"])


def test_refresh_rotates_across_processes_and_a_reuse_revokes_the_grant_everywhere(pair: Pair) -> None:
    with httpx.Client() as http:
        first = _tokens(http, pair, pair.one.url)
        second = _refresh(http, pair, pair.two.url, first["refresh_token"])  # rotated at process two
        assert second.status_code == 200, second.text
        assert second.headers["cache-control"] == "no-store" and second.headers["pragma"] == "no-cache"
        assert second.headers["content-type"] == "application/json" and second.headers["x-request-id"]
        body = second.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] > 0
        assert body["scope"] == first["scope"] == "openid profile"
        assert body["refresh_token"] != first["refresh_token"]
        keys = KeySet.import_key_set(http.get(f"{pair.one.url}/jwks").json())
        claims = jwt.decode(body["access_token"], keys)
        assert claims.header["typ"] == "at+jwt" and claims.claims["aud"] == pair.client_id
        assert claims.claims["sid"] and claims.claims["auth_time"]
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        assert http.get(f"{pair.one.url}/userinfo", headers=bearer).status_code == 200
        assert _active(http, pair, pair.one.url, body["access_token"])
        assert _active(http, pair, pair.two.url, body["refresh_token"])
        third = _refresh(http, pair, pair.one.url, body["refresh_token"])  # and again at process one
        assert third.status_code == 200, third.text

        stolen = _refresh(http, pair, pair.two.url, first["refresh_token"])  # a used one, presented again
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        assert stolen.headers["cache-control"] == "no-store"
        latest = third.json()
        assert _refresh(http, pair, pair.one.url, latest["refresh_token"]).json()["error"] == "invalid_grant"
        for base in (pair.one.url, pair.two.url):  # every token of the grant, at every process
            for token in (body["access_token"], latest["access_token"], latest["refresh_token"]):
                assert _active(http, pair, base, token) is False
        bearer = {"Authorization": f"Bearer {latest['access_token']}"}
        assert http.get(f"{pair.two.url}/userinfo", headers=bearer).status_code == 401


def test_two_processes_racing_on_one_refresh_token_issue_once_and_revoke_the_grant(pair: Pair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client() as http:
        token = _tokens(http, pair, pair.one.url)["refresh_token"]
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda base: _refresh(httpx, pair, base, token), [pair.one.url, pair.two.url] * 2)
            )
        winners = [a for a in answers if a.status_code == 200]
        assert len(winners) == 1, [a.text for a in answers]
        assert all(a.json()["error"] == "invalid_grant" for a in answers if a.status_code != 200)
        assert _refresh(http, pair, pair.two.url, winners[0].json()["refresh_token"]).status_code == 400
        assert _active(http, pair, pair.one.url, winners[0].json()["access_token"]) is False


def test_refresh_refused_with_a_wrong_secret_a_wrong_method_or_a_suspended_person(pair: Pair) -> None:
    with httpx.Client() as http:
        tokens = _tokens(http, pair, pair.one.url)
        wrong = _refresh(http, pair, pair.two.url, tokens["refresh_token"], auth=(pair.client_id, "guess"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
        # client_secret_post, for a client registered with client_secret_basic: refused as well
        posted = http.post(
            f"{pair.two.url}/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                  "client_id": pair.client_id, "client_secret": pair.secret},
        )  # fmt: skip
        assert posted.status_code == 401 and posted.json()["error"] == "invalid_client"
        # A narrower scope (Authlib's path answers it): none of the refused requests consumed the token.
        narrowed = _refresh(http, pair, pair.two.url, tokens["refresh_token"], scope="openid")
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["scope"] == "openid"
        widened = _refresh(http, pair, pair.one.url, narrowed.json()["refresh_token"], scope="openid email")
        assert widened.status_code == 400 and widened.json()["error"] == "invalid_scope"
        refresh_token = narrowed.json()["refresh_token"]
        assert _refresh(http, pair, pair.one.url, "no-such-token").json()["error"] == "invalid_grant"

        store = open_store(pair.url)
        person_id = _subject(http, pair, tokens["access_token"])

        def set_status(status: str) -> None:
            with store.session() as session:
                session.execute(update(Person).where(col(Person.id) == person_id).values(status=status))
                session.commit()

        try:
            for status in ("suspended", "deprovisioned"):
                set_status(status)
                refused = _refresh(http, pair, pair.two.url, refresh_token)
                assert refused.status_code == 400, refused.text
                assert refused.json()["error"] == "invalid_request"  # "no user for this token", as before
        finally:
            set_status("active")
            store.engine.dispose()
        assert _refresh(http, pair, pair.two.url, refresh_token).status_code == 200  # active again


def _subject(http: httpx.Client, pair: Pair, access_token: str) -> str:
    keys = KeySet.import_key_set(http.get(f"{pair.one.url}/jwks").json())
    return str(jwt.decode(access_token, keys).claims["sub"])


def test_the_fast_path_answers_a_refresh_that_succeeds_and_hands_back_the_rest(pair: Pair) -> None:
    """In-process: the path the served processes take for a refresh grant on PostgreSQL."""
    import asyncio
    import base64

    from directory_sync.config import load_settings
    from sso_gateway.gateway import Gateway

    store = open_store(pair.url)
    gateway = Gateway(load_settings(pair.one.config), store)
    fast_path = gateway.server.refresh_fast_path
    assert fast_path.enabled
    basic = {
        "Authorization": "Basic " + base64.b64encode(f"{pair.client_id}:{pair.secret}".encode()).decode()
    }
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{pair.client_id}:guess".encode()).decode()}
    with httpx.Client() as http:
        tokens = _tokens(http, pair, pair.one.url)
        form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}

        async def run() -> list[Any]:
            return [
                await fast_path.refresh(
                    form, {"Authorization": "Basic " + base64.b64encode(b"nobody:x").decode()}, {}
                ),
                await fast_path.refresh(form, wrong, {}),
                await fast_path.refresh({**form, "scope": "openid"}, basic, {}),
                await fast_path.refresh(form, basic, {"x": "1"}),
                await fast_path.refresh(form, basic, {}),  # the one that succeeds
                await fast_path.refresh(form, basic, {}),  # a reuse: handed back to Authlib's path
            ]

        unknown, bad_secret, scoped, queried, answered, reused = asyncio.run(run())
        assert unknown is None and bad_secret is None and scoped is None and queried is None
        assert reused is None
        assert answered is not None and answered.status == 200
        assert dict(answered.headers)["Cache-Control"] == "no-store"
        issued = answered.body
        assert set(issued) == {"token_type", "access_token", "expires_in", "scope", "refresh_token"}
        assert _active(http, pair, pair.two.url, issued["access_token"])
        assert _refresh(http, pair, pair.two.url, issued["refresh_token"]).status_code == 200
        # The reuse through a process: the grant and everything the fast path issued are revoked.
        assert _refresh(http, pair, pair.two.url, tokens["refresh_token"]).json()["error"] == "invalid_grant"
        assert _active(http, pair, pair.one.url, issued["access_token"]) is False
    store.engine.dispose()
