"""`ght demo --serve`: the demo's gateway and a sample application, on the loopback address.

The demo's hospitals are LDIF exports (no directory to bind against), so the sample clinicians get
local passwords. The key-encryption key is written beside the demo database, readable by its owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from sqlalchemy import select
from sqlmodel import col

from directory_sync.config import GatewaySettings, SecretRef, Settings
from directory_sync.store import Affiliation, Person, PersonStatus

from .errors import UnknownClient
from .gateway import Gateway
from .local_credentials import set_password
from .sample_app import create_sample_app
from .web.app import create_app

DEMO_PASSWORD = "demo-ght-2026!"
SAMPLE_CLIENT_ID = "sample-app"


@dataclass
class DemoPlan:
    gateway_url: str
    app_url: str
    logins: list[tuple[str, str]]  # (login, sites)


def demo_settings(settings: Settings, database: Path, host: str, port: int) -> Settings:
    kek = database.with_suffix(".kek")
    if not kek.exists():
        kek.touch(0o600)
        kek.write_text(secrets.token_urlsafe(32))
    gateway = GatewaySettings.model_validate(
        {"issuer": f"http://{host}:{port}", "key_encryption_key": SecretRef(file=kek.resolve())}
    )
    return settings.model_copy(update={"gateway": gateway})


def prepare(gateway: Gateway, app_url: str) -> tuple[list[tuple[str, str]], str]:
    """Local passwords for the sample clinicians, and the sample application's registration."""
    logins: list[tuple[str, str]] = []
    with gateway.store.session() as session:
        people = session.execute(
            select(Person).where(col(Person.status) == PersonStatus.ACTIVE).order_by(col(Person.family_name))
        ).scalars()
        for person in people:
            set_password(session, person.id, DEMO_PASSWORD)
            sites = session.execute(
                select(col(Affiliation.site)).where(
                    col(Affiliation.person_id) == person.id, col(Affiliation.active).is_(True)
                )
            ).scalars()
            login = person.login or person.email or person.id
            logins.append((str(login), ", ".join(sorted(sites))))
        session.commit()
    gateway.keys.ensure_key()
    with contextlib.suppress(UnknownClient):
        gateway.clients.remove(SAMPLE_CLIENT_ID)  # a fresh secret at every start
    new = gateway.clients.add(
        "Application exemple",
        client_id=SAMPLE_CLIENT_ID,
        redirect_uris=[f"{app_url}/callback"],
        post_logout_redirect_uris=[f"{app_url}/"],
        backchannel_logout_uri=f"{app_url}/backchannel-logout",
    )
    assert new.secret is not None
    return logins, new.secret


class DemoServer:
    """The demo's gateway and sample application, prepared; `run()` serves both until Ctrl-C."""

    def __init__(
        self, settings: Settings, host: str = "127.0.0.1", port: int = 8000, app_port: int = 8001
    ) -> None:
        self.gateway = Gateway(settings)
        self.host, self.port, self.app_port = host, port, app_port
        app_url = f"http://{host}:{app_port}"
        logins, self._secret = prepare(self.gateway, app_url)
        self.plan = DemoPlan(self.gateway.issuer, app_url, logins)

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        sample = create_sample_app(
            issuer=self.gateway.issuer,
            client_id=SAMPLE_CLIENT_ID,
            client_secret=self._secret,
            base_url=self.plan.app_url,
        )
        servers = [
            uvicorn.Server(
                uvicorn.Config(create_app(self.gateway), host=self.host, port=self.port, access_log=False)
            ),
            uvicorn.Server(uvicorn.Config(sample, host=self.host, port=self.app_port, access_log=False)),
        ]
        await asyncio.gather(*(server.serve() for server in servers))
