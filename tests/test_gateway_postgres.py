"""Two gateway processes on one PostgreSQL behave as one (as behind a load balancer).

A code issued by one is redeemed at the other; a token revoked at one is inactive at the other; a
logout at one ends the session at the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from directory_sync.store import open_store
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


@pytest.fixture(scope="module")
def pair(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("pg")
    url = postgres_server.create_database()
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
        yield Pair(one, two, client["client_id"], client["client_secret"])
    finally:
        one.stop()
        two.stop()
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
