"""Endpoints beside authorization and token: introspection, revocation, userinfo, end session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749.endpoint import Endpoint
from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc.jwk import KeySet
from sqlalchemy.exc import IntegrityError

from ..models import IssuedToken
from .grants import AUTH_METHODS, CONFIDENTIAL_AUTH_METHODS
from .tokens import ACCESS, REFRESH, TokenView, epoch, revoke_grants

if TYPE_CHECKING:
    from .server import GatewayAuthorizationServer


def _gateway(endpoint: Endpoint) -> GatewayAuthorizationServer:
    server: GatewayAuthorizationServer = endpoint.server
    return server


class TokenIntrospection(IntrospectionEndpoint):
    """RFC 7662. A client may introspect only the tokens issued to it."""

    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        gateway = _gateway(self)
        with gateway.store.session() as session:
            return gateway.find_token(session, token_string)

    def check_permission(self, token: TokenView, client: Any, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        record = token.record
        grant = token.grant
        payload: dict[str, Any] = {
            "active": True,
            "iss": _gateway(self).settings.issuer,
            "client_id": record.client_id,
            "aud": record.client_id,
            "scope": record.scope,
            "sub": record.person_id or record.client_id,
            "iat": epoch(record.issued_at),
            "exp": epoch(record.expires_at),
            "token_type": "Bearer" if record.kind == ACCESS else REFRESH,
        }
        if record.jti:
            payload["jti"] = record.jti
        if grant is not None:
            if grant.sid:
                payload["sid"] = grant.sid
            if grant.current_site:
                payload["current_site"] = grant.current_site
        return payload


class TokenRevocation(RevocationEndpoint):
    """RFC 7009. Revoking a refresh token revokes its whole grant (its access tokens too)."""

    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        gateway = _gateway(self)
        with gateway.store.session() as session:
            return gateway.find_token(session, token_string)

    def revoke_token(self, token: TokenView, request: Any) -> None:
        from directory_sync.store import utcnow

        with _gateway(self).store.session() as session:
            if token.record.kind == REFRESH and token.record.grant_id:
                revoke_grants(session, grant_id=token.record.grant_id, reason="revoked_by_client")
            record = session.get(IssuedToken, token.record.token_hash)
            if record is None:  # a client's own access token, never recorded: recorded now, as revoked
                record = token.record
                session.add(record)
            if record.revoked_at is None:
                record.revoked_at = utcnow()
                session.add(record)
            try:
                session.commit()
            except IntegrityError:  # revoked at the same moment by another request: revoked all the same
                session.rollback()


class UserInfo(Endpoint):
    """OpenID Connect UserInfo: the claims of the token's scopes, for a valid access token only."""

    ENDPOINT_NAME = "userinfo"

    def create_endpoint_response(self, request: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else request.form.get("access_token", "")
        if not token:
            raise InvalidTokenError(description="an access token is required")
        gateway = _gateway(self)
        view = gateway.validate_access_token(token)
        if view is None:
            raise InvalidTokenError(description="the access token is invalid, expired or revoked")
        if "openid" not in view.get_scope().split():
            raise InsufficientScopeError()
        user = gateway.user_from_token(view)
        if user is None:
            raise InvalidTokenError(description="the access token is no longer valid")
        return 200, gateway.user_claims(user, view.get_scope()), list(default_json_headers)


class EndSession(EndSessionEndpoint):
    """RP-initiated logout: checks the ID token hint and the post-logout URI, then ends the session."""

    def get_server_jwks(self) -> KeySet:
        return _gateway(self).keys.verification_keys()

    def get_algorithms(self) -> list[str]:
        return _gateway(self).keys.algorithms

    def end_session(self, end_session_request: Any) -> None:
        gateway = _gateway(self)
        request = end_session_request.request
        claims = end_session_request.id_token_claims or {}
        sids = {claims.get("sid")} if claims.get("sid") else set()
        if request.browser_session is not None:
            sids.add(request.browser_session.sid)
        for sid in sids:
            gateway.end_session(str(sid), reason="rp_initiated_logout", address=request.address)
