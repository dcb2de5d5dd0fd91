"""The OIDC gateway for tests: a small territorial directory, its configuration, and `ght gateway serve`.

`seed_directory` writes three hospitals and a few clinicians straight into the store (what a sync would
have written); `write_config` writes a ght.toml with a `[gateway]` section and a key-encryption key
file; `GatewayProcess` runs the real `ght gateway serve` in a subprocess and waits for /readyz.
`Browserless` drives the sign-in pages with httpx, the way a browser without JavaScript would.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from directory_sync.store import Account, Affiliation, Person, PersonStatus, Site, Store, utcnow

from .logscan import SECRETS, log_file, record_cli
from .slapd import free_port

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"  # the clinicians' local password in these tests
SECRETS.add(PASSWORD)

SITES = {
    "ch-avignon": ("CH d'Avignon", "840000087"),
    "ch-cavaillon": ("CH de Cavaillon", "840000186"),
    "ch-carpentras": ("CH de Carpentras", "840000061"),
}


@dataclass
class Clinician:
    key: str
    family_name: str
    given_name: str
    sites: dict[str, tuple[str, str]]  # site -> (login, G15 profession)
    rpps: str | None = None
    status: str = PersonStatus.ACTIVE
    dn: dict[str, str] = field(default_factory=dict)  # site -> DN in that site's directory
    id: str = ""


def clinicians() -> dict[str, Clinician]:
    return {
        "doctor": Clinician(
            "doctor",
            "Lefèvre",
            "Hélène",
            {"ch-avignon": ("hlefevre", "10"), "ch-cavaillon": ("helene.lefevre", "10")},
            rpps="10000000072",
        ),
        "nurse": Clinician("nurse", "Garcia", "Paul", {"ch-carpentras": ("pgarcia", "60")}),
        "former": Clinician(
            "former", "Martin", "Luc", {"ch-avignon": ("lmartin", "60")}, status=PersonStatus.SUSPENDED
        ),
    }


def seed_directory(store: Store, people: dict[str, Clinician] | None = None) -> dict[str, Clinician]:
    """Write sites, people, accounts and affiliations as a sync would have. Returns them with ids set."""
    people = people or clinicians()
    now = utcnow()
    with store.session() as session:
        for code, (name, finess) in SITES.items():
            if session.get(Site, code) is None:
                session.add(Site(code=code, name=name, finess=finess))
        session.flush()
        for rank, clinician in enumerate(people.values()):
            person = Person(
                family_name=clinician.family_name,
                given_name=clinician.given_name,
                email=f"{clinician.given_name.lower()}.{clinician.key}@ght.test",
                rpps=clinician.rpps,
                status=clinician.status,
            )
            session.add(person)
            session.flush()
            clinician.id = person.id
            for order, (site, (login, profession)) in enumerate(clinician.sites.items()):
                dn = clinician.dn.get(site, f"uid={login},ou=people,dc={site},dc=fr")
                session.add(
                    Account(
                        site=site,
                        anchor=secrets.token_hex(8),
                        dn=dn,
                        login=login,
                        person_id=person.id,
                        fingerprint="x",
                        attributes={"uid": login},
                    )
                )
                session.add(
                    Affiliation(
                        person_id=person.id,
                        site=site,
                        profession=profession,
                        title="Médecin" if profession == "10" else "Infirmier",
                        department="Urgences",
                        active=clinician.status == PersonStatus.ACTIVE,
                        started_at=now - timedelta(days=100 * (rank + 1) - order),
                    )
                )
        session.commit()
    return people


def gateway_toml(issuer: str, kek_file: Path, **extra: Any) -> str:
    lines = ["[gateway]", f'issuer = "{issuer}"', f'key_encryption_key = {{ file = "{kek_file}" }}']
    lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path,
    database_url: str,
    issuer: str,
    *,
    sites: list[str] | None = None,
    mappings_dir: Path | None = None,
    **gateway: Any,
) -> Path:
    """A ght.toml for the gateway (its key-encryption key in a file beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    kek = directory / "kek"
    if not kek.exists():
        kek.write_text(secrets.token_urlsafe(32))
        kek.chmod(0o600)
    SECRETS.add(kek.read_text())
    head = [f'database_url = "{database_url}"']
    if sites is not None:
        head.append(f"sites = {sites!r}".replace("'", '"'))
    if mappings_dir is not None:
        head.append(f'mappings_dir = "{mappings_dir}"')
    config = directory / "ght.toml"
    config.write_text("\n".join(head) + "\n\n" + gateway_toml(issuer, kek, **gateway))
    return config


def ght(*args: str, config: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    """Run `ght` (cli.main) in a fresh process with this configuration. A client secret it prints is
    registered as a secret; its standard error is kept with the session's logs (tests/servers/logscan.py)."""
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "--config", str(config), *args],
        cwd=config.parent,
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
    )
    SECRETS.add(stdin.strip() if stdin else None)
    with contextlib.suppress(ValueError):
        printed = json.loads(done.stdout)
        if isinstance(printed, dict):
            SECRETS.add(printed.get("client_secret"))
    record_cli(args, done.stderr)
    return done


def register_tokens(response: httpx.Response) -> httpx.Response:
    """Register the tokens of a /token answer as secrets (the log scan looks for them)."""
    if response.status_code == 200:
        with contextlib.suppress(ValueError):
            body = response.json()
            for name in ("access_token", "refresh_token", "id_token"):
                SECRETS.add(body.get(name))
    return response


class GatewayProcess:
    """`ght gateway serve` in a subprocess, on a free loopback port."""

    def __init__(self, config: Path, *, port: int | None = None, workers: int = 1) -> None:
        self.config = config
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # In the session's log folder (scanned for secrets by tests/test_zz_log_secrets.py).
        self.log = log_file(f"gateway-{self.port}-{time.monotonic_ns()}.log", config.parent)
        self._log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-c", "import cli; cli.main()", "--config", str(config),
                "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers),
            ],
            cwd=config.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


# --------------------------------------------------------------------------- driving the flow


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def form_fields(html: str) -> dict[str, str]:
    """The hidden and preset inputs of the first form of a page, and its action."""
    fields = {
        unescape(m.group(1)): unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)
    }
    action = re.search(r'<form method="post" action="([^"]+)"', html)
    if action:
        fields["__action__"] = unescape(action.group(1))
    return fields


@dataclass
class AuthorizationResult:
    response: httpx.Response
    params: dict[str, str]


class Browserless:
    """A browser without JavaScript: follows redirects on the gateway, fills the sign-in forms."""

    def __init__(self, client: httpx.Client, issuer: str) -> None:
        self.client = client
        self.issuer = issuer

    def authorize(self, **params: str) -> httpx.Response:
        return self.client.get(f"{self.issuer}/authorize?{urlencode(params)}")

    def follow(self, response: httpx.Response) -> httpx.Response:
        """Follow redirects while they stay on the gateway."""
        while response.status_code in (302, 303) and response.headers["location"].startswith(
            ("/", self.issuer)
        ):
            response = self.client.get(urljoin(self.issuer + "/", response.headers["location"]))
        return response

    def sign_in(self, page: httpx.Response, login: str, password: str) -> httpx.Response:
        SECRETS.add(password)
        fields = form_fields(page.text)
        action = fields.pop("__action__")
        return self.client.post(
            urljoin(self.issuer + "/", action), data={**fields, "login": login, "password": password}
        )

    def pick_site(self, page: httpx.Response, site: str) -> httpx.Response:
        fields = form_fields(page.text)
        action = fields.pop("__action__")
        return self.client.post(urljoin(self.issuer + "/", action), data={**fields, "site": site})

    def code_flow(
        self,
        client_id: str,
        secret: str,
        redirect_uri: str,
        login: str,
        password: str,
        *,
        site: str | None = None,
    ) -> dict[str, Any]:
        """A whole sign-in for a confidential client: authorize (PKCE), the sign-in form, the site
        picker if `site`, the code at /token; returns what /userinfo says of the person."""
        verifier, challenge = pkce_pair()
        page = self.follow(
            self.authorize(
                response_type="code", client_id=client_id, redirect_uri=redirect_uri, scope="openid health",
                state="s", code_challenge=challenge, code_challenge_method="S256",
            )
        )  # fmt: skip
        signed_in = self.follow(self.sign_in(page, login, password))
        if site:
            assert site.upper() in signed_in.text.upper(), "the site picker does not offer the site"
        callback = redirect_params(self.pick_site(signed_in, site) if site else signed_in)
        tokens = self.client.post(
            f"{self.issuer}/token",
            data={"grant_type": "authorization_code", "code": callback["code"], "code_verifier": verifier,
                  "redirect_uri": redirect_uri},
            auth=(client_id, secret),
        ).json()  # fmt: skip
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        return dict(self.client.get(f"{self.issuer}/userinfo", headers=bearer).json())


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), (response.status_code, response.text[:500])
    query = urlsplit(response.headers["location"]).query
    params = {k: v[0] for k, v in parse_qs(query).items()}
    SECRETS.add(params.get("code"))  # an authorization code is a secret until redeemed
    return params
