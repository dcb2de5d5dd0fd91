"""The grants the gateway offers, as Authlib grant classes with our storage and our stricter rules.

- Authorization code (+ OpenID Connect): codes are single use, claimed atomically; a second use revokes
  everything the first one issued (RFC 6749 §4.1.2, RFC 9700 §4.5).
- One database session per token request (`server.db`): the code or refresh token is read first, and
  claimed (`UPDATE ... WHERE used_at/rotated_at IS NULL`) in the same transaction that records the new
  tokens (`save_token`), so that a grant is one short write; a claim lost to a concurrent use is a reuse.
- PKCE: S256 only, required for every client unless its registration says otherwise (public clients
  always); a `code_challenge_method` must be given (no silent `plain` downgrade); a verifier without
  a challenge is refused (RFC 9700 §4.8.2).
- Refresh token: rotated on every use; presenting a used one revokes the whole grant (RFC 9700 §4.14.2).
- Client credentials: for back-end services, no refresh token.
- Client authentication: client_secret_basic, client_secret_post, private_key_jwt (RFC 7523, with
  `jti` replay detection), and `none` for public clients.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, grants
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from joserfc.jwk import KeySet
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from directory_sync.store import Person, PersonStatus, sa_table, utcnow

from ..audit import record_event
from ..claims import CLAIMS_PERSON_COLUMNS
from ..models import AuthorizationCode, ClientAssertionUse, Grant, IssuedToken
from ..sessions import add_session_client, aware, digest
from .tokens import (
    REFRESH,
    AuthenticatedUser,
    TokenView,
    epoch,
    find_token,
    record_tokens,
    revoke_grants,
)

if TYPE_CHECKING:
    from .server import GatewayAuthorizationServer

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


_codes, _tokens = sa_table(AuthorizationCode), sa_table(IssuedToken)
#: The claims (first use only), as Core statements built once (no ORM bulk-update bookkeeping).
_CLAIM_CODE = (
    update(_codes)
    .where(_codes.c.code_hash == bindparam("digest"), _codes.c.used_at.is_(None))
    .values(used_at=bindparam("now"))
)
_CLAIM_REFRESH = (
    update(_tokens)
    .where(
        _tokens.c.token_hash == bindparam("digest"),
        _tokens.c.rotated_at.is_(None),
        _tokens.c.revoked_at.is_(None),
    )
    .values(rotated_at=bindparam("now"))
)


#: The code flow's statements, built once (composing them cost more than running them on SQLite).
_INSERT_GRANT = insert(sa_table(Grant))
_INSERT_CODE = insert(_codes)
_grants, _people = sa_table(Grant), sa_table(Person)
#: The code, its grant (columns prefixed `g__`) and the grant's person (`p__`: its status, and what
#: the ID token's claims are made of, so that they need no query of their own), as Core rows.
_FIND_CODE = (
    select(
        *_codes.c,
        *(c.label(f"g__{c.name}") for c in _grants.c),
        *(c.label(f"p__{c.name}") for c in CLAIMS_PERSON_COLUMNS),
    )
    .select_from(
        _codes.outerjoin(_grants, _grants.c.id == _codes.c.grant_id).outerjoin(
            _people, _people.c.id == _grants.c.person_id
        )
    )
    .where(_codes.c.code_hash == bindparam("digest"))
)
_CODE_NAMES = [c.name for c in _codes.c]
_GRANT_NAMES = [(c.name, f"g__{c.name}") for c in _grants.c]
_PERSON_NAMES = [(c.name, f"p__{c.name}") for c in CLAIMS_PERSON_COLUMNS]
_PERSON_STATUS = select(col(Person.status)).where(col(Person.id) == bindparam("person"))
_NONCE_USED = (
    select(col(AuthorizationCode.code_hash))
    .where(
        col(AuthorizationCode.client_id) == bindparam("client"),
        col(AuthorizationCode.nonce) == bindparam("nonce"),
    )
    .limit(1)
)


def _server(grant: grants.BaseGrant) -> GatewayAuthorizationServer:
    server: GatewayAuthorizationServer = grant.server
    return server


class CodeView:
    """A claimed authorization code, as Authlib's code grant and OpenID extension read it."""

    def __init__(self, record: Any, grant: Any, person_status: Any = None, person: Any = None) -> None:
        """`record`, `grant`: the code's and grant's columns as attributes (ORM objects or not)."""
        self.record = record
        self.grant = grant
        #: The status of the grant's person, read with the code (None: not read).
        self.person_status = person_status
        #: The grant's person's `CLAIMS_PERSON_COLUMNS` as attributes, read with the code (or None).
        self.person = person
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope

    def get_nonce(self) -> str | None:
        return self.record.nonce

    def get_auth_time(self) -> int | None:
        return epoch(self.grant.auth_time)

    def get_acr(self) -> str | None:
        return self.grant.acr

    def get_amr(self) -> list[str] | None:
        return list(self.grant.amr) or None


def _active_user(
    server: GatewayAuthorizationServer, grant: Grant | None, request: Any = None, status: Any = None
) -> AuthenticatedUser | None:
    """The grant's person, if the grant stands and the person may still sign in (`status`: the
    person's, when the caller read it with the grant in the same transaction)."""
    if grant is None or grant.revoked_at is not None or grant.person_id is None:
        return None
    if status is None:
        with server.db(request) as session:
            status = session.execute(_PERSON_STATUS, {"person": grant.person_id}).scalar()
    if status not in (PersonStatus.ACTIVE, PersonStatus.EXTERNAL):  # external: sso_gateway/upstream.py
        return None
    return AuthenticatedUser(
        person_id=grant.person_id,
        sid=grant.sid,
        auth_time=epoch(grant.auth_time),
        amr=list(grant.amr),
        current_site=grant.current_site,
        grant_id=grant.id,
        acr=grant.acr,
    )


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    AUTHORIZATION_CODE_LENGTH = 43

    def save_authorization_code(self, code: str, request: Any) -> None:
        server = _server(self)
        user: AuthenticatedUser = request.user
        data = request.payload.data
        now = utcnow()
        grant_id = secrets.token_hex(16)
        grant = {
            "id": grant_id,
            "client_id": request.client.client_id,
            "person_id": user.person_id,
            "sid": user.sid,
            "scope": request.scope or "",
            "current_site": user.current_site,
            "auth_time": now - timedelta(seconds=time.time() - user.auth_time) if user.auth_time else now,
            "amr": user.amr,
            "acr": user.acr,
            "created_at": now,
            "revoked_at": None,
            "revoked_reason": None,
        }
        record = {
            "code_hash": digest(code),
            "grant_id": grant_id,
            "client_id": request.client.client_id,
            "redirect_uri": request.payload.redirect_uri or request.client.get_default_redirect_uri(),
            "scope": request.scope or "",
            "nonce": data.get("nonce"),
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
            "created_at": now,
            "expires_at": now + timedelta(seconds=server.settings.authorization_code_lifetime),
            "used_at": None,
        }
        # Core statements built once (no unit of work), in the adapter's transaction when it handed one
        # over (the login form's POST: the sign-in, its session and its code in one commit), else in one
        # of their own.
        own = request.db is None
        with server.store.engine.begin() if own else contextlib.nullcontext(request.db) as db:
            db.execute(_INSERT_GRANT, grant)
            db.execute(_INSERT_CODE, record)
            if user.sid:
                add_session_client(db, user.sid, request.client.client_id)

    def query_authorization_code(self, code: str, client: Any) -> CodeView | None:
        """The code, if unused (claimed in `save_token`). A second use revokes the grant and its tokens."""
        server = _server(self)
        now = utcnow()
        with server.db(self.request) as session:
            row = session.execute(_FIND_CODE, {"digest": digest(code)}).first()
            if row is None or row.client_id != client.client_id:
                return None
            found = row._mapping
            record = SimpleNamespace(**{name: found[name] for name in _CODE_NAMES})
            grant = (
                SimpleNamespace(**{name: found[label] for name, label in _GRANT_NAMES})
                if found["g__id"] is not None
                else None
            )
            status = found["p__status"]
            person = (
                SimpleNamespace(**{name: found[label] for name, label in _PERSON_NAMES})
                if found["p__id"] is not None
                else None
            )
            if record.used_at is not None:
                self._reused(session, record.grant_id, client.client_id)
                return None
        if grant is None or aware(record.expires_at) <= now:
            return None
        return CodeView(record, grant, status, person)

    def _reused(self, session: Any, grant_id: str, client_id: str) -> None:
        revoked = revoke_grants(session, grant_id=grant_id, reason="code_reuse")
        record_event(
            session,
            "code_reuse",
            client_id=client_id,
            address=getattr(self.request, "address", None),
            revoked_grants=len(revoked),
        )
        session.commit()

    def save_token(self, token: dict[str, Any]) -> None:
        """Claim the code (first use only) and record the tokens, in one transaction."""
        server = _server(self)
        code: CodeView = self.request.authorization_code
        with server.db(self.request) as session:
            claimed = session.execute(_CLAIM_CODE, {"digest": code.record.code_hash, "now": utcnow()})
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                # Redeemed meanwhile by another request: a reuse like any other.
                self._reused(session, code.record.grant_id, code.record.client_id)
                raise InvalidGrantError("the authorization code was already used")
            record_tokens(session, server.settings, token, self.request)
            session.commit()
        super().save_token(token)

    def delete_authorization_code(self, authorization_code: CodeView) -> None:
        """Nothing to do: the code was marked used when claimed, and is kept to detect reuse."""

    def authenticate_user(self, authorization_code: CodeView) -> AuthenticatedUser | None:
        server = _server(self)
        user = _active_user(server, authorization_code.grant, self.request, authorization_code.person_status)
        scope = authorization_code.get_scope()
        if user is not None and "openid" in scope.split():
            # The ID token's claims, read now in the code's transaction: once `save_token` has committed,
            # they would take a transaction (a connection, BEGIN and ROLLBACK) of their own.
            claims = server.user_claims(user, scope, self.request, authorization_code.person)
            user.claims_read = (scope, claims)
        return user


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only, required unless the client's registration waives it (never for public ones)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    CODE_CHALLENGE_METHODS: ClassVar[dict[str, Any]] = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client = grant.request.client
        required = client.record.require_pkce or client.record.public
        if required and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 ('plain' is not accepted)")
        super().validate_code_challenge(grant, redirect_uri)


class GatewayOpenIDCode(OpenIDCode):
    """ID tokens for the code flow: signed with the current key, carrying the territorial claims."""

    def __init__(self, server: GatewayAuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self.gateway = server

    def resolve_client_private_key(self, client: Any) -> Any:
        return self.gateway.keys.signing_key()[2]

    def get_client_algorithm(self, client: Any) -> str:
        return self.gateway.keys.signing_key()[1]

    def get_encode_header(self, client: Any) -> dict[str, str]:
        kid, alg, _ = self.gateway.keys.signing_key()
        return {"alg": alg, "kid": kid, "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.gateway.settings.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + self.gateway.settings.id_token_lifetime,
        }

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        with self.gateway.db(request) as session:  # the adapter's transaction, if it handed one over
            found = session.execute(_NONCE_USED, {"client": request.payload.client_id, "nonce": nonce})
            return found.first() is not None

    def generate_user_info(self, user: AuthenticatedUser, scope: str) -> dict[str, Any]:
        read = user.claims_read
        if read is not None and read[0] == scope:
            claims = dict(read[1])
        else:
            claims = self.gateway.user_claims(user, scope)
        if user.sid:
            claims["sid"] = user.sid
        return claims


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> TokenView | None:
        """The stored refresh token, if unused (claimed in `save_token`). A reused one revokes its grant."""
        server = _server(self)
        with server.db(self.request) as session:
            view = find_token(session, refresh_token, REFRESH)
            if view is None or view.record.revoked_at is not None or view.is_expired():
                return None
            if view.record.rotated_at is not None:
                self._reused(session, view)
                return None
        if view.grant is not None and view.grant.revoked_at is not None:
            return None
        return view

    def _reused(self, session: Any, view: TokenView) -> None:
        if view.record.grant_id:
            revoke_grants(session, grant_id=view.record.grant_id, reason="refresh_token_reuse")
        record_event(
            session,
            "refresh_token_reuse",
            client_id=view.record.client_id,
            person_id=view.record.person_id,
            address=getattr(self.request, "address", None),
        )
        session.commit()

    def save_token(self, token: dict[str, Any]) -> None:
        """Claim the old refresh token (first use only) and record the new tokens, in one transaction."""
        server = _server(self)
        old: TokenView = self.request.refresh_token
        with server.db(self.request) as session:
            claimed = session.execute(_CLAIM_REFRESH, {"digest": old.record.token_hash, "now": utcnow()})
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                self._reused(session, old)  # used meanwhile by another request, or revoked
                raise InvalidGrantError("the refresh token was already used")
            record_tokens(session, server.settings, token, self.request)
            session.commit()
        super().save_token(token)

    def authenticate_user(self, refresh_token: TokenView) -> AuthenticatedUser | None:
        return _active_user(_server(self), refresh_token.grant, self.request, refresh_token.person_status)

    def revoke_old_credential(self, refresh_token: TokenView) -> None:
        """Nothing to do: the old token was marked rotated when claimed, and is kept to detect reuse."""


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS


class PrivateKeyJWT(JWTBearerClientAssertion):
    """private_key_jwt client authentication (RFC 7523 §2.2, OpenID Connect Core §9)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: GatewayAuthorizationServer) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.gateway = server

    def get_audiences(self) -> list[str]:
        issuer = self.gateway.settings.issuer
        return [issuer, f"{issuer}/token"]

    def resolve_client_public_key(self, client: Any) -> KeySet:
        jwks: Any = client.record.jwks or {"keys": []}
        return KeySet.import_key_set(jwks)

    def validate_jti(self, claims: Any, jti: str) -> bool:
        expires = utcnow() + timedelta(minutes=10)
        with self.gateway.store.session() as session:
            session.execute(delete(ClientAssertionUse).where(col(ClientAssertionUse.expires_at) < utcnow()))
            session.add(
                ClientAssertionUse(client_id=str(claims["sub"]), jti=str(jti)[:255], expires_at=expires)
            )
            try:
                session.commit()
            except IntegrityError:
                return False
        return True
