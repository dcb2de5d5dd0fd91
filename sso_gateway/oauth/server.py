"""The authorization server: Authlib's framework-agnostic core, wired to the gateway's storage.

The four methods a framework integration must provide (`create_oauth2_request`, `create_json_request`,
`handle_response`, `send_signal`) are implemented on plain values here; `sso_gateway.web` only turns
Starlette requests into `GatewayRequest`s and `OAuthResponse`s back into Starlette responses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import JsonRequest, OAuth2Error
from authlib.oauth2.rfc9207 import IssuerParameter
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Person, PersonStatus, Store

from ..claims import ClaimsBuilder
from ..clients import SCOPES, Client
from ..keys import KeyStore
from ..models import GatewayClient
from .endpoints import EndSession, TokenIntrospection, TokenRevocation, UserInfo
from .grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    GatewayOpenIDCode,
    PrivateKeyJWT,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from .requests import GatewayRequest, OAuthResponse
from .tokens import ACCESS, AuthenticatedUser, TokenFactory, TokenView, find_token, save_tokens

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")


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
        self.register_token_generator("default", TokenFactory(settings, keys))
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

    # -- the methods Authlib asks an integration for -------------------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
        return Client(record) if record is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        save_tokens(self.store, self.settings, token, request)

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

    def user_claims(self, user: AuthenticatedUser, scope: str) -> dict[str, Any]:
        with self.store.session() as session:
            return self.claims.claims(session, user.person_id, set(scope.split()), user.current_site)

    def validate_access_token(self, token: str) -> TokenView | None:
        """A live access token of ours: our signature and algorithm, `at+jwt`, our issuer, not revoked."""
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
        with self.store.session() as session:
            view = find_token(session, token, ACCESS)
        if view is None or view.is_expired() or view.is_revoked():
            return None
        return view

    def user_from_token(self, view: TokenView) -> AuthenticatedUser | None:
        record = view.record
        if record.person_id is None:
            return None
        with self.store.session() as session:
            person = session.get(Person, record.person_id)
        if person is None or person.status != PersonStatus.ACTIVE:
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
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
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
