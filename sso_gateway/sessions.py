"""Browser sessions (server-side): one per person per browser, identified by `sid` in ID tokens.

The browser holds only a random cookie (HttpOnly); the database holds its SHA-256 digest, the person,
when and how they authenticated, and the site where they are working now.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Affiliation, Store, sa_table, utcnow

from .assurance import acr_for, rank, with_mfa
from .models import BrowserSession, SessionClient, SiteChoice


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def aware(when: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=utcnow().tzinfo)


class Sessions:
    def __init__(self, store: Store, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings

    def start(
        self, person_id: str, amr: list[str], current_site: str | None, acr: str | None = None
    ) -> tuple[BrowserSession, str]:
        """A new session; returns it and the cookie value to give the browser (shown only here).

        `acr`: the level reached (upstream sign-ins compute it with `assurance.acr_for`); by default,
        the level `amr` reaches.
        """
        record, cookie = self.new(person_id, amr, current_site, acr)
        with self.store.session() as session:
            session.add(record)
            session.commit()
        return record, cookie

    def new(
        self, person_id: str, amr: list[str], current_site: str | None, acr: str | None = None
    ) -> tuple[BrowserSession, str]:
        """A new session and its cookie, not yet written: the caller adds it to its own transaction."""
        cookie = secrets.token_urlsafe(32)
        now = utcnow()
        amr = with_mfa(amr)
        record = BrowserSession(
            sid=secrets.token_urlsafe(24),
            cookie_hash=digest(cookie),
            person_id=person_id,
            auth_time=now,
            amr=amr,
            acr=acr if acr is not None else acr_for(amr, settings=self.settings),
            current_site=current_site,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.session_lifetime),
        )
        return record, cookie

    def current(self, cookie: str | None, session: Session | None = None) -> BrowserSession | None:
        """The live session behind a cookie, if any (ended or expired sessions are not).

        `session`: read in the caller's transaction, else in one of its own."""
        if not cookie:
            return None
        with contextlib.nullcontext(session) if session is not None else self.store.session() as db:
            live = db.execute(
                select(BrowserSession).where(col(BrowserSession.cookie_hash) == digest(cookie))
            ).scalar_one_or_none()
        if live is None or live.ended_at is not None or aware(live.expires_at) <= utcnow():
            return None
        return live

    def step_up(self, sid: str, added: list[str], upstream_acr: str | None = None) -> BrowserSession | None:
        """The person just proved another factor in this session: its `amr` and `acr` rise with it."""
        with self.store.session() as session:
            record = session.get(BrowserSession, sid)
            if record is None or record.ended_at is not None:
                return None
            record.amr = with_mfa([*record.amr, *added])
            reached = acr_for(record.amr, upstream_acr, settings=self.settings)
            if (rank(reached, self.settings) or 0) >= (rank(record.acr, self.settings) or 0):
                record.acr = reached
            record.auth_time = utcnow()
            session.add(record)
            session.commit()
            return record

    def get(self, sid: str) -> BrowserSession | None:
        with self.store.session() as session:
            return session.get(BrowserSession, sid)

    def set_site(self, sid: str, person_id: str, site: str, session: Session | None = None) -> None:
        """The person says where they work now: the session and their remembered choice follow.

        `session`: in the caller's transaction (the caller commits), else in one of its own."""
        if session is not None:
            session.execute(
                update(BrowserSession).where(col(BrowserSession.sid) == sid).values(current_site=site)
            )
            remember_site(session, person_id, site)
            return
        with self.store.session() as own:
            self.set_site(sid, person_id, site, own)
            own.commit()


def remember_site(session: Session, person_id: str, site: str) -> None:
    choice = session.get(SiteChoice, person_id) or SiteChoice(person_id=person_id, site=site)
    choice.site = site
    choice.chosen_at = utcnow()
    session.add(choice)


_INSERT_SESSION = insert(sa_table(BrowserSession))


def insert_session(session: Session, record: BrowserSession) -> None:
    """Write a new browser session (`Sessions.new`) in the caller's transaction: one Core statement
    built once, no unit of work (the record stays detached). The caller commits."""
    session.execute(
        _INSERT_SESSION,
        {
            "sid": record.sid,
            "cookie_hash": record.cookie_hash,
            "person_id": record.person_id,
            "auth_time": record.auth_time,
            "amr": record.amr,
            "acr": record.acr,
            "current_site": record.current_site,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "ended_at": record.ended_at,
        },
    )


#: Built once per dialect: an upsert that keeps the row (`add_session_client`).
_ADD_SESSION_CLIENT = {
    name: dialect.insert(sa_table(SessionClient))
    .values(sid=bindparam("sid"), client_id=bindparam("client_id"))
    .on_conflict_do_nothing()
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def add_session_client(session: Session | Connection, sid: str, client_id: str) -> None:
    """Remember that `client_id` received tokens in session `sid` (for back-channel logout).

    One statement, no read first (nor the flush a read would cause): an upsert that keeps the row.
    `session`: an ORM session or a Core connection (the caller commits)."""
    bind = session.get_bind() if isinstance(session, Session) else session
    statement = _ADD_SESSION_CLIENT["postgresql" if bind.dialect.name == "postgresql" else "sqlite"]
    session.execute(statement, {"sid": sid, "client_id": client_id})


_SITE_CODES = (
    select(col(Affiliation.site), col(SiteChoice.site))
    .outerjoin(SiteChoice, col(SiteChoice.person_id) == col(Affiliation.person_id))
    .where(col(Affiliation.person_id) == bindparam("person"), col(Affiliation.active).is_(True))
    .order_by(col(Affiliation.started_at), col(Affiliation.site))
)


def site_codes(session: Session, person_id: str) -> list[str]:
    """The sites of the person's active affiliations in the site picker's order (the last chosen one
    first, then the home site...), as `ClaimsBuilder.sites_offered` orders them, in one query."""
    rows = session.execute(_SITE_CODES, {"person": person_id}).all()
    chosen = rows[0][1] if rows else None
    return sorted((site for site, _ in rows), key=lambda site: chosen is not None and site != chosen)
