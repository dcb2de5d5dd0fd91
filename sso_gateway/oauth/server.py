"""The authorization server: Authlib's framework-agnostic core, wired to the gateway's storage.

The four methods a framework integration must provide (`create_oauth2_request`, `create_json_request`,
`handle_response`, `send_signal`) are implemented on plain values here; `sso_gateway.web` only turns
Starlette requests into `GatewayRequest`s and `OAuthResponse`s back into Starlette responses.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import JsonRequest, OAuth2Error
from authlib.oauth2.rfc9207 import IssuerParameter
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Person, PersonStatus, Store

from .. import assurance
from ..claims import ClaimsBuilder
from ..clients import SCOPES, Client
from ..keys import KeyStore
from ..models import GatewayClient
from .endpoints import EndSession, TokenIntrospection, TokenRevocation, UserInfo
from .fastpath import RefreshFastPath
from .grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    GatewayOpenIDCode,
    PrivateKeyJWT,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from .requests import GatewayRequest, OAuthResponse
from .tokens import ACCESS, AuthenticatedUser, TokenFactory, TokenView, client_token_view, find_token

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
#: How long a process trusts the client registration it read (secret digest, grants, redirect URIs).
#: `ght clients rotate-secret` / `remove` run in another process: every serving process stops accepting
#: the old secret or the removed client within this bound (tests/test_gateway_serve.py). A client
#: unknown to a process is looked up every time (no negative cache), so a new client works at once.
CLIENT_CACHE_SECONDS = 5.0


class _Issuer(IssuerParameter):
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class GatewayAuthorizationServer(AuthorizationServer):
    """OAuth 2.0 + OpenID Connect provider for one GHT."""

    def __init__(
        self,
        store: Store,
        settings: GatewaySettings,
        keys: KeyStore,
        claims: ClaimsBuilder,
        end_session: Callable[..., int],
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.store = store
        self.settings = settings
        self.keys = keys
        self.claims = claims
        self._end_session = end_session
        self.issuer_parameter = _Issuer(settings.issuer)
        #: Builds every grant's token response (Authlib calls it through `generate_token`).
        self.token_factory = TokenFactory(settings, keys)
        self.register_token_generator("default", self.token_factory)
        self.register_grant(
            AuthorizationCodeGrant, [S256CodeChallenge(required=True), GatewayOpenIDCode(self)]
        )
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT(self))
        self.register_extension(self.issuer_parameter)
        self.register_endpoint(TokenIntrospection)
        self.register_endpoint(TokenRevocation)
        self.register_endpoint(UserInfo)
        self.register_endpoint(EndSession)
        self._clients: dict[str, tuple[float, GatewayClient]] = {}
        self._clients_lock = threading.Lock()
        #: The refresh grant's common case on PostgreSQL, on the event loop (fastpath.py).
        self.refresh_fast_path = RefreshFastPath(self)

    # -- the methods Authlib asks an integration for -------------------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        """The client, read at most every CLIENT_CACHE_SECONDS per process (see there)."""
        now = time.monotonic()
        cached = self._clients.get(client_id)
        if cached is not None and now - cached[0] < CLIENT_CACHE_SECONDS:
            return Client(cached[1])
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
        with self._clients_lock:
            if record is None:
                self._clients.pop(client_id, None)
            else:
                if len(self._clients) > 10_000:  # client ids come from requests: bound the memory
                    self._clients.clear()
                self._clients[client_id] = (now, record)
        return Client(record) if record is not None else None

    def cached_client(self, client_id: str) -> GatewayClient | None:
        """The registration this process read less than CLIENT_CACHE_SECONDS ago, else None (no read)."""
        cached = self._clients.get(client_id)
        if cached is None or time.monotonic() - cached[0] >= CLIENT_CACHE_SECONDS:
            return None
        return cached[1]

    def forget_clients(self) -> None:
        """Drop the cached registrations (after this process changed one itself)."""
        with self._clients_lock:
            self._clients.clear()

    def answers_without_database(self, request: GatewayRequest) -> bool:
        """True for a client-credentials request whose answer needs no database: the client (found by
        its Basic credentials or `client_id`) and the signing key are cached in this process, and it
        authenticates with a secret (private_key_jwt records the assertion's `jti`). The web adapter then
        answers it on the event loop instead of a worker thread (no thread hop: about a third of the
        grant's cost under load)."""
        form = request.form
        if form.get("grant_type") != "client_credentials" or "client_assertion" in form:
            return False
        client_id = form.get("client_id")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id = unquote(base64.b64decode(credentials, validate=True).decode().partition(":")[0])
            except (ValueError, UnicodeDecodeError):
                return False
        cached = self._clients.get(client_id or "")
        return (
            cached is not None and time.monotonic() - cached[0] < CLIENT_CACHE_SECONDS and self.keys.fresh()
        )

    @contextmanager
    def db(self, request: Any = None) -> Iterator[Session]:
        """The token request's database session (opened at first use, one for the whole request),
        else a session of its own."""
        if request is not None and getattr(request, "db_scope", False):
            if request.db is None:
                request.db = Session(self.store.engine, expire_on_commit=False)
            yield request.db
            return
        with self.store.session() as own:
            yield own

    def create_token_response(self, request: Any = None) -> Any:
        """Authlib's token endpoint, with every read and write of the request on one session.

        The grants' hooks (`query_authorization_code`, `authenticate_refresh_token`, `authenticate_user`,
        `save_token`) all use `db(request)`; `save_token` claims the code or refresh token and records
        the new tokens in one transaction (grants.py). A client-credentials grant opens none.
        """
        oauth_request = self.create_oauth2_request(request)
        oauth_request.db_scope = True
        try:
            return super().create_token_response(oauth_request)
        finally:
            if oauth_request.db is not None:
                oauth_request.db.close()
            oauth_request.db = None
            oauth_request.db_scope = False

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Nothing to write for a client's own token (tokens.py); the grants record a person's tokens."""

    def get_consent_grant(self, request: Any = None, end_user: Any = None) -> Any:
        grant = super().get_consent_grant(request, end_user)
        grant.validated = True  # see create_authorization_response
        return grant

    def create_authorization_response(
        self, request: Any = None, grant_user: Any = None, grant: Any = None
    ) -> Any:
        """As Authlib's, but a grant that `get_consent_grant` validated in this same request is not
        validated a second time (each validation looks the nonce up in the database again)."""
        if grant is None or not getattr(grant, "validated", False):
            return super().create_authorization_response(request, grant_user, grant)
        # Authlib's method is @hooked: run its hooks here too (RFC 9207's `iss` is one of them).
        self.execute_hook("before_create_authorization_response", request, grant_user, grant)
        try:
            args = grant.create_authorization_response(grant.redirect_uri, grant_user)
            response = self.handle_response(*args)
        except OAuth2Error as error:
            error.state = grant.request.payload.state
            response = self.handle_error_response(grant.request, error)
        grant.execute_hook("after_authorization_response", response)
        self.execute_hook("after_create_authorization_response", response)
        return response

    def create_oauth2_request(self, request: Any) -> GatewayRequest:
        if isinstance(request, GatewayRequest):
            return request
        raise TypeError(f"the web adapter must hand over a GatewayRequest, not {type(request).__name__}")

    def create_json_request(self, request: Any) -> JsonRequest:
        raise NotImplementedError("the gateway has no JSON endpoint (no dynamic client registration)")

    def handle_response(self, status: int, body: Any, headers: Any) -> OAuthResponse:
        return OAuthResponse(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's signals: nothing listens; the audit trail is written where things happen."""

    # -- what the grants and endpoints share ---------------------------------------------------------

    def authorization_error(self, request: GatewayRequest, error: OAuth2Error) -> OAuthResponse:
        """An error redirect to a validated redirect URI, with `iss` (RFC 9207)."""
        response: OAuthResponse = self.handle_error_response(request, error)
        self.issuer_parameter.add_issuer_parameter(self, response)
        return response

    def user_claims(
        self, user: AuthenticatedUser, scope: str, request: Any = None, person: Any = None
    ) -> dict[str, Any]:
        """`person`: the person's columns the claims need, if already read (`ClaimsBuilder.claims`)."""
        with self.db(request) as session:
            return self.claims.claims(session, user.person_id, set(scope.split()), user.current_site, person)

    def access_token_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token of ours: our signature and algorithm, `at+jwt`, our issuer,
        not expired. Says nothing of revocation (`find_token`)."""
        try:
            decoded = jwt.decode(token, self.keys.verification_keys(), algorithms=self.keys.algorithms)
            registry = jwt.JWTClaimsRegistry(
                leeway=5, iss={"essential": True, "value": self.settings.issuer}, exp={"essential": True}
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError):
            return None
        if str(decoded.header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            return None  # an ID token or a logout token is not an access token
        return dict(decoded.claims)

    def find_token(self, session: Session, token: str, kind: str | None = None) -> TokenView | None:
        """A recorded token, or else a client-credentials access token of ours, never recorded unless
        revoked (tokens.py): then its revoked row is what this finds."""
        view = find_token(session, token, kind)
        if view is None and kind in (None, ACCESS) and token.count(".") == 2:
            claims = self.access_token_claims(token)
            view = client_token_view(token, claims) if claims is not None else None
        return view

    def validate_access_token(self, token: str) -> TokenView | None:
        """A live access token of ours: signed by us, `at+jwt`, our issuer, not expired nor revoked."""
        if self.access_token_claims(token) is None:
            return None
        with self.store.session() as session:
            view = self.find_token(session, token, ACCESS)
        if view is None or view.is_expired() or view.is_revoked():
            return None
        return view

    def user_from_token(self, view: TokenView) -> AuthenticatedUser | None:
        record = view.record
        if record.person_id is None:
            return None
        with self.store.session() as session:
            person = session.get(Person, record.person_id)
        if person is None or person.status not in (PersonStatus.ACTIVE, PersonStatus.EXTERNAL):
            return None
        grant = view.grant
        return AuthenticatedUser(
            person_id=record.person_id,
            sid=grant.sid if grant else None,
            current_site=grant.current_site if grant else None,
            grant_id=record.grant_id,
        )

    def end_session(self, sid: str, *, reason: str, address: str | None = None) -> int:
        return self._end_session(sid, reason=reason, address=address)

    def has_clients(self) -> bool:
        with self.store.session() as session:
            return session.execute(select(col(GatewayClient.client_id)).limit(1)).first() is not None

    # -- discovery ----------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """OpenID Provider Metadata, also served as RFC 8414 authorization server metadata."""
        issuer = self.settings.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            "introspection_endpoint": f"{issuer}/introspect",
            "revocation_endpoint": f"{issuer}/revoke",
            "end_session_endpoint": f"{issuer}/logout",
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.settings.signing_alg],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": assurance.known(self.settings),
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "acr",
                "amr",
                "sid",
                "name",
                "family_name",
                "given_name",
                "preferred_username",
                "updated_at",
                "email",
                "rpps",
                "idnat_ps",
                "profession",
                "affiliations",
                "current_site",
            ],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "prompt_values_supported": ["none", "login", "select_account"],
            "ui_locales_supported": ["fr", "en"],
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
            "access_token_signing_alg_values_supported": [self.settings.signing_alg],
            "service_documentation": f"{issuer}/claims",
        }
