"""The gateway assembled from its parts: one object the web adapter and the CLI use.

Nothing here knows HTTP: `Gateway` wires the store, the keys, the sign-in, the sessions, the claims,
the back-channel logout queue and the Authlib authorization server together from the settings.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import timedelta

from sqlalchemy import bindparam, delete, insert, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings, LdapConnection, Settings
from directory_sync.store import Store, open_store, sa_table, utcnow

from .claims import ClaimsBuilder
from .clients import ClientRegistry
from .errors import GatewayNotConfigured
from .keys import KeyStore
from .logout import Logout
from .mfa import SecondFactors
from .models import PendingAuthorization
from .oauth import GatewayAuthorizationServer
from .passthrough import PassThrough
from .sessions import Sessions, aware, digest
from .signin import SignIn
from .upstream import Upstream

PENDING_LIFETIME = 15 * 60  # how long a sign-in page may stay open
PENDING_PURGE_EVERY = 60.0  # seconds between two purges of expired pending requests, per process
#: Threads running the blocking work of requests in each served process, and as many database
#: connections, kept open. SQLAlchemy's default pool (5 kept + 10 overflow, closed on return) against
#: anyio's 40 threads made requests queue for a connection or open one (SQLite: with its pragmas) per
#: request: 30% of the token endpoint's time under load (py-spy, benchmarks/README.md).
SERVE_THREADS = 16


def serving_store(url: str, threads: int = SERVE_THREADS) -> Store:
    """The store for a served gateway process: a pool of `threads` connections, kept open."""
    # The overflow is for a thread that nests a second session in a first: it never waits on the others.
    store = open_store(url, pool_size=threads, max_overflow=threads, pool_timeout=60)
    # Opened now, not by the first burst of requests: under wrk's 64 connections at start, the threads
    # opening SQLite connections (with their pragmas) next to the other worker's took 19% of a
    # client-credentials run's samples (py-spy, 2 workers).
    connections = [store.engine.connect() for _ in range(threads)]
    for connection in connections:
        connection.close()
    return store


def gateway_settings(settings: Settings) -> GatewaySettings:
    if settings.gateway is None:
        raise GatewayNotConfigured(str(settings.config_file or "ght.toml (absent)"))
    return settings.gateway


_PENDING = sa_table(PendingAuthorization)
_INSERT_PENDING = insert(_PENDING)
_PURGE_PENDING = delete(_PENDING).where(_PENDING.c.expires_at < bindparam("now"))
_FIND_PENDING = select(_PENDING).where(_PENDING.c.id == bindparam("id"))
_DROP_PENDING = delete(_PENDING).where(_PENDING.c.id == bindparam("id"))


class Gateway:
    """One gateway: every process built from the same settings and database behaves the same."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.config = gateway_settings(settings)
        self.store = store or open_store(settings.database_url)
        self.keys = KeyStore(self.store, self.config)
        sites = settings.load_sites() if settings.sites else []
        connections = {s.code: s.connection for s in sites if isinstance(s.connection, LdapConnection)}
        self.site_names = {s.code: s.site.name for s in sites}
        self.passthrough = PassThrough(connections, self.config.ldap_timeout)
        self.signin = SignIn(self.store, self.config, self.passthrough)
        self.sessions = Sessions(self.store, self.config)
        self.upstream = Upstream(self.store, self.config)
        self.mfa = SecondFactors(self.store, self.config)
        self.claims = ClaimsBuilder(settings.professions)
        self.logout = Logout(self.store, self.keys, self.config)
        self.server = GatewayAuthorizationServer(
            self.store, self.config, self.keys, self.claims, self.logout.end_session
        )
        self.clients = ClientRegistry(self.store, on_change=self.server.forget_clients)
        self._next_pending_purge = 0.0

    @property
    def issuer(self) -> str:
        return self.config.issuer

    # -- authorization requests waiting for the person --------------------------------------------

    def save_pending(
        self, params: dict[str, str], browser: str, session: Session | None = None
    ) -> PendingAuthorization:
        """A new pending request; `session`: written in the caller's transaction (the caller commits)."""
        now = utcnow()
        pending = PendingAuthorization(
            id=secrets.token_urlsafe(24),
            params=params,
            browser_hash=digest(browser),
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + timedelta(seconds=PENDING_LIFETIME),
        )
        # Core, built once: no unit of work.
        with contextlib.nullcontext(session) if session is not None else self.store.engine.begin() as conn:
            if time.monotonic() >= self._next_pending_purge:  # not at every sign-in: a scan and a write
                self._next_pending_purge = time.monotonic() + PENDING_PURGE_EVERY
                conn.execute(_PURGE_PENDING, {"now": now})
            conn.execute(
                _INSERT_PENDING,
                {
                    "id": pending.id,
                    "params": pending.params,
                    "browser_hash": pending.browser_hash,
                    "csrf": pending.csrf,
                    "created_at": pending.created_at,
                    "expires_at": pending.expires_at,
                },
            )
        return pending

    def pending(
        self, pending_id: str | None, browser: str | None, session: Session | None = None
    ) -> PendingAuthorization | None:
        """The pending request, only for the browser that started it and only while it is fresh.

        `session`: read in the caller's (the login form's POST: the sign-in's own transaction)."""
        if not pending_id or not browser:
            return None
        # A Core row (built once), not the ORM's identity map and loading (`Session.get` was 5% of a
        # sign-in's samples under load, py-spy; this is half that).
        if session is not None:
            row = session.execute(_FIND_PENDING, {"id": pending_id}).first()
        else:
            with self.store.engine.connect() as conn:
                row = conn.execute(_FIND_PENDING, {"id": pending_id}).first()
        if row is None or row.browser_hash != digest(browser) or aware(row.expires_at) <= utcnow():
            return None
        return PendingAuthorization(**row._mapping)

    def drop_pending(self, pending_id: str, session: Session | None = None) -> None:
        """`session`: in the caller's transaction (the caller commits)."""
        if session is not None:
            session.execute(_DROP_PENDING, {"id": pending_id})
            return
        with self.store.engine.begin() as conn:
            conn.execute(_DROP_PENDING, {"id": pending_id})

    # -- operations ---------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Can this process serve? The database answers and a signing key can be opened."""
        try:
            with self.store.session() as session:
                session.execute(text("SELECT 1"))
                session.execute(select(col(PendingAuthorization.id)).limit(1))
            self.keys.signing_key()
        except Exception as exc:  # readiness reports, it does not raise
            return False, f"{type(exc).__name__}: {exc}"
        return True, "ok"
