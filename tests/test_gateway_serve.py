"""`ght gateway serve` as IT staff run it, and an independent relying party (npm openid-client) against it.

One gateway process serves the module (SQLite); the clients, passwords and keys are set with the `ght`
command itself, in fresh processes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from directory_sync.store import open_store
from tests.servers.gateway import PASSWORD, REPO, GatewayProcess, ght, seed_directory, write_config

PEERS = REPO / "tests" / "oidc_peers"
CALLBACK = "http://127.0.0.1:9/callback"  # never contacted: the RP reads the code from the redirect


@dataclass
class Served:
    config: Path
    gateway: GatewayProcess

    def ght_json(self, *args: str) -> Any:
        done = ght(*args, "--json", config=self.config)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    database = f"sqlite:///{tmp}/ght.db"
    seed_directory(open_store(database))
    config = write_config(tmp, database, "http://127.0.0.1:0", mappings_dir=REPO / "mappings")
    port = _free_port()
    config = write_config(tmp, database, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings")
    done = ght(
        "people", "set-password", "--password-stdin", "ch-carpentras\\pgarcia", config=config, stdin=PASSWORD
    )
    assert done.returncode == 0, done.stderr
    gateway = GatewayProcess(config, port=port)
    try:
        yield Served(config, gateway)
    finally:
        gateway.stop()


def _free_port() -> int:
    from tests.servers.slapd import free_port

    return free_port()


def test_openid_client_completes_every_flow_against_the_served_gateway(served: Served) -> None:
    if shutil.which("node") is None or not (PEERS / "node_modules" / "openid-client").exists():
        pytest.fail(
            "openid-client is not installed: run `make node-packages` (npm ci --prefix tests/oidc_peers)"
        )
    rp = served.ght_json("clients", "add", "DPI", "--redirect-uri", CALLBACK)
    service = served.ght_json("clients", "add", "Facturation", "--grant", "client_credentials")
    config = {
        "issuer": served.gateway.url,
        "client_id": rp["client_id"],
        "client_secret": rp["client_secret"],
        "redirect_uri": CALLBACK,
        "login": "pgarcia",
        "password": PASSWORD,
        "cc_client_id": service["client_id"],
        "cc_client_secret": service["client_secret"],
    }
    done = subprocess.run(
        ["node", str(PEERS / "rp.mjs")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RP_CONFIG": json.dumps(config)},
    )
    assert done.returncode == 0, done.stderr + served.gateway.log_tail()
    result = json.loads(done.stdout)
    assert result["issuer"] == served.gateway.url and result["callback_has_iss"]
    assert (
        result["id_token"]["aud"] == rp["client_id"] and result["id_token"]["current_site"] == "ch-carpentras"
    )
    assert result["userinfo"]["sub"] == result["id_token"]["sub"]
    assert result["userinfo"]["profession"] == {"code": "60", "label": "Infirmier"}
    assert result["refresh_rotated"] and result["introspection_active"]
    assert result["introspection_after_revocation"] is False and result["old_refresh_refused"]
    assert result["client_credentials"]["token_type"].lower() == "bearer"
    assert not result["client_credentials"]["has_refresh"]
    assert result["client_credentials_introspection"]["sub"] == service["client_id"]


def test_clients_commands(served: Served) -> None:
    added = served.ght_json(
        "clients", "add", "Pharmacie", "--redirect-uri", "https://pharma.ght.test/cb",
        "--post-logout-redirect-uri", "https://pharma.ght.test/", "--backchannel-logout-uri",
        "https://pharma.ght.test/bcl",
    )  # fmt: skip
    client_id, secret = added["client_id"], added["client_secret"]
    assert len(secret) >= 43
    shown = served.ght_json("clients", "show", client_id)
    assert "client_secret" not in shown and shown["redirect_uris"] == ["https://pharma.ght.test/cb"]
    assert client_id in [c["client_id"] for c in served.ght_json("clients", "list")]
    token = f"{served.gateway.url}/token"
    assert (
        httpx.post(token, data={"grant_type": "client_credentials"}, auth=(client_id, secret)).status_code
        == 400
    )
    rotated = served.ght_json("clients", "rotate-secret", client_id)["client_secret"]
    assert rotated != secret
    done = ght("clients", "remove", client_id, config=served.config)
    assert done.returncode == 0
    missing = ght("clients", "show", client_id, config=served.config)
    assert (
        missing.returncode == 1
        and missing.stderr.startswith("error: no client")
        and "Traceback" not in missing.stderr
    )


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://dpi.ght.test/cb", "http is only allowed on the loopback address"),
        ("https://dpi.ght.test/cb#frag", "must not contain a fragment"),
        ("https://*.ght.test/cb", "wildcards are not allowed"),
        ("dpi/cb", "must be an absolute https:// URL"),
    ],
)
def test_a_bad_redirect_uri_is_one_line_error(served: Served, uri: str, problem: str) -> None:
    done = ght("clients", "add", "X", "--redirect-uri", uri, config=served.config)
    assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr


def test_keys_rotate_publishes_before_signing_and_keeps_the_old_key(served: Served) -> None:
    jwks = f"{served.gateway.url}/jwks"
    before = {k["kid"] for k in httpx.get(jwks).json()["keys"]}
    rotated = served.ght_json("keys", "rotate", "--publish-delay", "3600")
    states = {k["kid"]: k["state"] for k in served.ght_json("keys", "list")}
    assert states[rotated["kid"]] == "next"
    assert [kid for kid, state in states.items() if state == "signing"] == sorted(before)
    import time

    time.sleep(5.5)  # the gateway caches keys for 5 s
    published = {k["kid"] for k in httpx.get(jwks).json()["keys"]}
    assert published == before | {rotated["kid"]}  # published now...
    service = served.ght_json("clients", "add", "Labo", "--grant", "client_credentials")
    token = httpx.post(
        f"{served.gateway.url}/token",
        data={"grant_type": "client_credentials"},
        auth=(service["client_id"], service["client_secret"]),
    ).json()["access_token"]
    header = json.loads(_b64decode(token.split(".")[0]))
    assert header["kid"] in before  # ...but does not sign yet


def test_private_keys_are_sealed_and_a_wrong_kek_is_one_line_error(served: Served, tmp_path: Path) -> None:
    import sqlite3

    database = served.config.parent / "ght.db"
    with sqlite3.connect(database) as db:
        sealed = [row[0] for row in db.execute("SELECT private_key FROM gateway_signing_key")]
    assert sealed and all(s.startswith("aesgcm1:") and "PRIVATE KEY" not in s for s in sealed)
    other = tmp_path / "ght.toml"
    other.write_text(
        served.config.read_text().replace(str(served.config.parent / "kek"), str(tmp_path / "kek"))
    )
    (tmp_path / "kek").write_text("another key-encryption key, 32+ chars")
    for command in (("keys", "rotate"), ("gateway", "serve", "--port", "1")):
        done = ght(*command, config=other)
        assert done.returncode == 1 and "sealed with another key-encryption key" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_health_endpoints(served: Served) -> None:
    assert httpx.get(f"{served.gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{served.gateway.url}/readyz").json()["status"] == "ready"


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_tokens_are_signed_as_joserfc_signs_and_verify_with_the_published_key(alg: str) -> None:
    """`sign_jwt` (the access and logout tokens' signer) against joserfc, the library relying parties
    of the tests verify with: RS256 (deterministic) gives the same octets; every signature verifies
    with the public key alone, and a changed payload does not."""
    from joserfc import jws, jwt
    from joserfc.errors import BadSignatureError
    from joserfc.jwk import ECKey, RSAKey

    from sso_gateway.keys import sign_jwt

    key = (
        ECKey.generate_key("P-256", private=True)
        if alg == "ES256"
        else RSAKey.generate_key(2048, private=True)
    )
    public = key.__class__.import_key(key.as_dict(private=False))
    header = {"typ": "at+jwt", "alg": alg, "kid": "k1"}
    claims = {"iss": "https://gateway.example", "sub": "p1", "aud": "dpi", "exp": 2_000_000_000, "n": "é"}
    token = sign_jwt(header, claims, key)
    if alg == "RS256":
        assert token == jwt.encode(header, claims, key, algorithms=[alg])
    decoded = jwt.decode(token, public, algorithms=[alg])
    assert decoded.header == header and decoded.claims == claims
    forged = token.split(".")
    forged[1] = sign_jwt(header, {**claims, "sub": "p2"}, key).split(".")[1]
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(".".join(forged), public, algorithms=[alg])


def test_served_answers_leave_whole_on_kept_and_closed_connections(served: Served) -> None:
    """`ght gateway serve` gathers a response's writes (sso_gateway/web/protocol.py): on one kept-alive
    connection every answer arrives whole, in order; on a connection the client closes after its
    request (`Connection: close`), the answer is sent before the connection is closed."""
    import socket

    client = served.ght_json("clients", "add", "wire", "--grant", "client_credentials")
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    body = b"grant_type=client_credentials"
    request = (
        f"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {basic}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", served.gateway.port)) as kept:
        kept.sendall((request + b"\r\n" + body) * 3)  # three requests at once, one connection
        raw = b""
        while len(_responses(raw)) < 3:
            raw += kept.recv(65536)
        assert [status for status, _ in _responses(raw)] == [200, 200, 200]
    with socket.create_connection(("127.0.0.1", served.gateway.port)) as closing:
        closing.sendall(request + b"Connection: close\r\n\r\n" + body)
        raw = b""
        while chunk := closing.recv(65536):  # until the gateway closes the connection
            raw += chunk
        [(status, answer)] = _responses(raw)
        token = json.loads(answer)
        assert status == 200 and token["token_type"] == "Bearer" and token["access_token"].count(".") == 2


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """The complete HTTP/1.1 responses at the start of `raw`: (status, body), by Content-Length."""
    done = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields[b"content-length"])
        if len(rest) < length:
            break
        done.append((int(head.split(b" ")[1]), rest[:length]))
        raw = rest[length:]
    return done
