"""Access tokens (JWT, RFC 9068), refresh tokens, and their state in the database.

An access token is a JWT (`typ: at+jwt`) signed with the current key, audience-restricted to the
client it was issued to, valid `access_token_lifetime` seconds. A person's access token is recorded (as
a digest) beside the refresh token of its grant, so that revoking the grant (refresh-token or code reuse,
logout) makes it inactive in every process. A client's own token (client credentials: no person, no
grant) is not written at all: introspection and userinfo accept it by its signature, issuer, type and
expiry, and revoking it writes its digest (with its `jti`) as a revoked row, which every process then
finds. A refresh token is 256 random bits, recorded as a digest; each use rotates it, and a second use of
the same one revokes the whole grant.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import TokenMixin
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Person, sa_table, utcnow

from ..keys import KeyStore, sign_jwt
from ..models import Grant, IssuedToken
from ..sessions import aware, digest

if TYPE_CHECKING:
    from ..clients import Client

ACCESS = "access_token"
REFRESH = "refresh_token"


@dataclass
class AuthenticatedUser:
    """The person a grant is for, with the session facts the tokens carry."""

    person_id: str
    sid: str | None = None
    auth_time: int | None = None
    amr: list[str] = field(default_factory=list)
    current_site: str | None = None
    grant_id: str | None = None
    acr: str | None = None
    #: (scope, claims) already read for this grant's ID token (`AuthorizationCodeGrant.authenticate_user`).
    claims_read: tuple[str, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def get_user_id(self) -> str:
        return self.person_id


def epoch(when: datetime | None) -> int | None:
    return int(aware(when).timestamp()) if when else None


class TokenFactory:
    """Authlib's token generator: builds the token response of every grant."""

    def __init__(self, settings: GatewaySettings, keys: KeyStore) -> None:
        self.settings = settings
        self.keys = keys

    def access_token(
        self,
        client_id: str,
        user: AuthenticatedUser | None,
        scope: str,
        lifetime: int,
        jti: str | None = None,
    ) -> str:
        kid, alg, key = self.keys.signing_key()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": user.person_id if user else client_id,
            "aud": client_id,
            "client_id": client_id,
            "iat": now,
            "exp": now + lifetime,
            "jti": jti or secrets.token_urlsafe(16),
            "scope": scope,
        }
        if user is not None:
            if user.auth_time:
                claims["auth_time"] = user.auth_time
            if user.sid:
                claims["sid"] = user.sid
            if user.current_site:
                claims["current_site"] = user.current_site
        return sign_jwt({"typ": "at+jwt", "alg": alg, "kid": kid}, claims, key)

    def __call__(
        self,
        grant_type: str,
        client: Client,
        user: AuthenticatedUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
        jti: str | None = None,
    ) -> dict[str, Any]:
        """`jti`: the access token's, when the caller records it (else a random one)."""
        lifetime = expires_in or self.settings.access_token_lifetime
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": self.access_token(client.client_id, user, scope or "", lifetime, jti),
            "expires_in": lifetime,
            "scope": scope or "",
        }
        if include_refresh_token and user is not None:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token


def record_tokens(session: Session, settings: GatewaySettings, token: dict[str, Any], request: Any) -> None:
    """Record a person's token response (as digests) under the request's grant, in one INSERT (Core:
    no unit of work). The caller commits.

    Nothing for a client's own token (client credentials): it has no grant to be revoked with, so its
    signature and expiry say all there is until someone revokes it (`client_token_view`).
    """
    user: AuthenticatedUser | None = request.user if isinstance(request.user, AuthenticatedUser) else None
    if user is None:
        return
    now = utcnow()
    access = token["access_token"]
    common = {
        "grant_id": user.grant_id,
        "client_id": request.client.client_id,
        "person_id": user.person_id,
        "scope": token.get("scope", ""),
        "issued_at": now,
        "revoked_at": None,
        "rotated_at": None,
    }
    rows = [
        {
            **common,
            "token_hash": digest(access),
            "kind": ACCESS,
            "jti": _unverified_claims(access).get("jti"),
            "expires_at": now + timedelta(seconds=int(token["expires_in"])),
        }
    ]
    if "refresh_token" in token:
        rows.append(
            {
                **common,
                "token_hash": digest(token["refresh_token"]),
                "kind": REFRESH,
                "jti": None,
                "expires_at": now + timedelta(seconds=settings.refresh_token_lifetime),
            }
        )
    session.execute(_INSERT_TOKENS, rows)


_INSERT_TOKENS = insert(sa_table(IssuedToken))


def client_token_view(token: str, claims: dict[str, Any]) -> TokenView | None:
    """The view of a verified client-credentials access token that was never written (see above).

    Only a token whose subject is its client (RFC 9068 §2.2 for client credentials) and that carries
    no session qualifies: a person's token is always recorded, so a missing row never stands for one.
    """
    client_id = claims.get("client_id")
    if not isinstance(client_id, str) or claims.get("sub") != client_id or "sid" in claims:
        return None
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int):
        return None
    record = IssuedToken(
        token_hash=digest(token),
        kind=ACCESS,
        client_id=client_id,
        scope=str(claims.get("scope", "")),
        jti=str(claims["jti"])[:64] if claims.get("jti") else None,
        issued_at=datetime.fromtimestamp(issued, UTC),
        expires_at=datetime.fromtimestamp(expires, UTC),
    )
    return TokenView(record, None)


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT we have just signed ourselves (no need to verify our own signature)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class TokenView(TokenMixin):
    """A recorded token as Authlib's refresh grant, introspection and revocation endpoints see it."""

    def __init__(self, record: IssuedToken, grant: Grant | None, person_status: Any = None) -> None:
        self.record = record
        self.grant = grant
        #: The status of the grant's person when the token was read (None: no person, or not read).
        self.person_status = person_status
        self.client_id = record.client_id
        self.scope = record.scope

    def check_client(self, client: Client) -> bool:
        return self.record.client_id == client.client_id

    def get_scope(self) -> str:
        return self.record.scope

    def get_expires_in(self) -> int:
        return max(0, int((aware(self.record.expires_at) - utcnow()).total_seconds()))

    def is_expired(self) -> bool:
        return aware(self.record.expires_at) <= utcnow()

    def is_revoked(self) -> bool:
        return (
            self.record.revoked_at is not None
            or self.record.rotated_at is not None
            or (self.grant is not None and self.grant.revoked_at is not None)
        )

    def get_user(self) -> str | None:
        return self.record.person_id

    def get_client(self) -> Any:
        return self.record.client_id


#: Built once: composing the statement cost a quarter of a refresh grant's Python time (py-spy).
_FIND_TOKEN = (
    select(IssuedToken, Grant, col(Person.status))
    .outerjoin(Grant, col(Grant.id) == col(IssuedToken.grant_id))
    .outerjoin(Person, col(Person.id) == col(Grant.person_id))
    .where(col(IssuedToken.token_hash) == bindparam("digest"))
)


def find_token(session: Session, token: str, kind: str | None = None) -> TokenView | None:
    """The recorded token, its grant and the status of the grant's person (one query)."""
    row = session.execute(_FIND_TOKEN, {"digest": digest(token)}).first()
    if row is None or (kind is not None and row[0].kind != kind):
        return None
    return TokenView(row[0], row[1], row[2])


def revoke_grants(
    session: Session,
    *,
    grant_id: str | None = None,
    sid: str | None = None,
    person_id: str | None = None,
    reason: str,
) -> list[str]:
    """Revoke grants (by id, by session or by person) and every token issued under them. The caller
    commits."""
    now = utcnow()
    query = select(col(Grant.id)).where(col(Grant.revoked_at).is_(None))
    if grant_id is not None:
        query = query.where(col(Grant.id) == grant_id)
    elif sid is not None:
        query = query.where(col(Grant.sid) == sid)
    elif person_id is not None:
        query = query.where(col(Grant.person_id) == person_id)
    else:
        raise ValueError("revoke_grants needs a grant_id, a sid or a person_id")
    ids = list(session.execute(query).scalars())
    if ids:
        session.execute(
            update(Grant).where(col(Grant.id).in_(ids)).values(revoked_at=now, revoked_reason=reason)
        )
        session.execute(
            update(IssuedToken)
            .where(col(IssuedToken.grant_id).in_(ids), col(IssuedToken.revoked_at).is_(None))
            .values(revoked_at=now)
        )
    return ids
