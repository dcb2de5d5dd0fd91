"""Ending sessions, and OpenID Connect Back-Channel Logout 1.0 with retries.

On a shared workstation the next person must never find themselves signed in as the last one: ending a
session (from any application, or at the gateway) revokes every grant made in it, and queues a logout
token for every application that received tokens in it and registered a back-channel logout URI. The
queue is a table: any gateway process delivers what is due, claiming each row first so that two
processes never send the same one at once; a failed delivery is retried with a growing delay.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Store, utcnow

from .audit import record_event
from .keys import KeyStore, sign_jwt
from .models import BackchannelDelivery, BrowserSession, GatewayClient, SessionClient
from .oauth.tokens import revoke_grants

log = logging.getLogger("sso_gateway.logout")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
CLAIM_SECONDS = 30
MAX_BACKOFF = 300


class Logout:
    def __init__(self, store: Store, keys: KeyStore, settings: GatewaySettings) -> None:
        self.store = store
        self.keys = keys
        self.settings = settings

    def end_session(self, sid: str, *, reason: str, address: str | None = None) -> int:
        """End session `sid`, revoke its grants, queue back-channel logouts. Returns how many were queued."""
        now = utcnow()
        with self.store.session() as session:
            record = session.get(BrowserSession, sid)
            if record is None or record.ended_at is not None:
                return 0
            record.ended_at = now
            session.add(record)
            revoke_grants(session, sid=sid, reason="logout")
            clients = session.execute(
                select(GatewayClient)
                .join(SessionClient, col(SessionClient.client_id) == col(GatewayClient.client_id))
                .where(col(SessionClient.sid) == sid)
            ).scalars()
            queued = 0
            for client in clients:
                if client.backchannel_logout_uri:
                    session.add(
                        BackchannelDelivery(
                            client_id=client.client_id,
                            sid=sid,
                            person_id=record.person_id,
                            next_attempt_at=now,
                        )
                    )
                    queued += 1
            record_event(
                session, "logout", person_id=record.person_id, address=address, reason=reason, notified=queued
            )
            session.commit()
        return queued

    def sign_out_person(self, person_id: str, *, reason: str, by: str) -> tuple[int, int]:
        """IT staff: end every live session of a person (applications told by back-channel logout) and
        revoke every grant left (refresh tokens). Returns (sessions ended, logouts queued). Access
        tokens already issued stay valid until they expire (`access_token_lifetime`), as JWTs do."""
        with self.store.session() as session:
            live = list(
                session.execute(
                    select(col(BrowserSession.sid)).where(
                        col(BrowserSession.person_id) == person_id, col(BrowserSession.ended_at).is_(None)
                    )
                ).scalars()
            )
        queued = sum(self.end_session(sid, reason=reason) for sid in live)
        with self.store.session() as session:
            revoked = revoke_grants(session, person_id=person_id, reason=reason)
            record_event(
                session,
                "signed_out",
                person_id=person_id,
                by=by,
                reason=reason,
                sessions=len(live),
                grants=len(revoked),
            )
            session.commit()
        return len(live), queued

    def logout_token(self, client_id: str, person_id: str, sid: str) -> str:
        kid, alg, key = self.keys.signing_key()
        now = int(time.time())
        claims = {
            "iss": self.settings.issuer,
            "aud": client_id,
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
            "sub": person_id,
            "sid": sid,
            "events": {BACKCHANNEL_EVENT: {}},
        }
        return sign_jwt({"alg": alg, "kid": kid, "typ": "logout+jwt"}, claims, key)

    def deliver_due(self, limit: int = 20, timeout: float = 5.0) -> int:
        """Send the logout tokens that are due; returns how many were acknowledged."""
        now = utcnow()
        with self.store.session() as session:
            due = list(
                session.execute(
                    select(col(BackchannelDelivery.id))
                    .where(
                        col(BackchannelDelivery.delivered_at).is_(None),
                        col(BackchannelDelivery.failed_at).is_(None),
                        col(BackchannelDelivery.next_attempt_at) <= now,
                        or_(
                            col(BackchannelDelivery.claimed_until).is_(None),
                            col(BackchannelDelivery.claimed_until) < now,
                        ),
                    )
                    .limit(limit)
                ).scalars()
            )
        delivered = 0
        for delivery_id in due:
            delivered += self._deliver_one(delivery_id, timeout)
        return delivered

    def _deliver_one(self, delivery_id: int | None, timeout: float) -> int:
        now = utcnow()
        with self.store.session() as session:
            claimed = session.execute(
                update(BackchannelDelivery)
                .where(
                    col(BackchannelDelivery.id) == delivery_id,
                    col(BackchannelDelivery.delivered_at).is_(None),
                    or_(
                        col(BackchannelDelivery.claimed_until).is_(None),
                        col(BackchannelDelivery.claimed_until) < now,
                    ),
                )
                .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return 0  # another process has it
            delivery = session.get(BackchannelDelivery, delivery_id)
            client = session.get(GatewayClient, delivery.client_id) if delivery else None
        if delivery is None:
            return 0
        error: str | None = None
        if client is None or not client.backchannel_logout_uri:
            error = "client removed"
        else:
            try:
                token = self.logout_token(client.client_id, delivery.person_id, delivery.sid)
                response = httpx.post(
                    client.backchannel_logout_uri,
                    data={"logout_token": token},
                    headers={"Cache-Control": "no-store"},
                    timeout=timeout,
                )
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
        with self.store.session() as session:
            row = session.get(BackchannelDelivery, delivery_id)
            assert row is not None
            row.attempts += 1
            row.claimed_until = None
            if error is None:
                row.delivered_at = utcnow()
            else:
                row.last_error = error
                if row.attempts >= self.settings.backchannel_logout_attempts or client is None:
                    row.failed_at = utcnow()
                    record_event(
                        session,
                        "backchannel_logout_failed",
                        client_id=row.client_id,
                        person_id=row.person_id,
                        attempts=row.attempts,
                        error=error,
                    )
                else:
                    row.next_attempt_at = utcnow() + timedelta(seconds=min(MAX_BACKOFF, 2**row.attempts))
                log.warning(
                    "back-channel logout to %s failed (attempt %d): %s", row.client_id, row.attempts, error
                )
            session.add(row)
            session.commit()
        return 1 if error is None else 0
