"""Client registrations (`ght clients ...`) and the view Authlib has of a client.

Redirect URIs are compared exactly (RFC 9700 §2.1): no wildcard, no prefix, no port freedom. `http` is
allowed only on the loopback address; a fragment never. A client secret is 256 random bits, printed
once and stored as a SHA-256 digest (a slow hash buys nothing against a secret that cannot be guessed).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.util import scope_to_list
from sqlalchemy import delete, select
from sqlmodel import col

from directory_sync.store import Store, utcnow

from .errors import ClientError, UnknownClient
from .models import GatewayClient, SessionClient

GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
#: Scopes the gateway knows (see CLAIMS.md). `health` carries the professional claims.
SCOPES = ("openid", "profile", "email", "health", "offline_access")


def hash_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redirect_uri(uri: str, what: str = "redirect URI") -> str:
    """Raise ClientError unless `uri` may be registered: absolute, no fragment, https (http on loopback)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ClientError(f"{what} {uri!r} is not a URL") from None
    if parts.fragment or "#" in uri:
        raise ClientError(f"{what} {uri!r} must not contain a fragment (#)")
    if "*" in uri:
        raise ClientError(f"{what} {uri!r}: wildcards are not allowed, give each URI exactly")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname:
        if _is_loopback(parts.hostname):
            return uri
        raise ClientError(f"{what} {uri!r}: http is only allowed on the loopback address; use https")
    if parts.scheme and "." in parts.scheme and not parts.netloc and parts.path:
        return uri  # a native application's private-use scheme (RFC 8252 §7.1), e.g. fr.ght.dpi:/cb
    raise ClientError(f"{what} {uri!r} must be an absolute https:// URL")


class Client(ClientMixin):
    """A registered client, as Authlib's grants and endpoints see it."""

    def __init__(self, record: GatewayClient) -> None:
        self.record = record
        self.client_id = record.client_id
        self.client_metadata: dict[str, Any] = {
            "post_logout_redirect_uris": list(record.post_logout_redirect_uris),
            "jwks": record.jwks,
        }

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.record.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        allowed = self.record.scopes
        if not scope:
            return " ".join(allowed)
        return " ".join(s for s in scope_to_list(scope) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.record.secret_hash
        return stored is not None and hmac.compare_digest(stored, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.record.public:
            return method == "none"
        return method == self.record.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types

    @property
    def backchannel_logout_uri(self) -> str | None:
        return self.record.backchannel_logout_uri


@dataclass
class NewClient:
    """A client just created or whose secret was just rotated: the secret is shown once."""

    record: GatewayClient
    secret: str | None


def describe(record: GatewayClient) -> dict[str, Any]:
    """A client as `ght clients show --json` prints it (the secret digest is never shown)."""
    return {
        "client_id": record.client_id,
        "name": record.name,
        "public": record.public,
        "token_endpoint_auth_method": record.token_endpoint_auth_method,
        "redirect_uris": record.redirect_uris,
        "post_logout_redirect_uris": record.post_logout_redirect_uris,
        "backchannel_logout_uri": record.backchannel_logout_uri,
        "grant_types": record.grant_types,
        "scopes": record.scopes,
        "require_pkce": record.require_pkce,
        "min_acr": record.min_acr,
        "has_jwks": bool(record.jwks),
        "created_at": record.created_at.isoformat(),
        "secret_rotated_at": record.secret_rotated_at.isoformat() if record.secret_rotated_at else None,
    }


class ClientRegistry:
    """Create, find, list, remove clients and rotate their secrets.

    `on_change` is called after a removal or a secret rotation, so that a serving process that changed
    a client itself forgets its cached copy at once (other processes within their cache's bound:
    `oauth.server.CLIENT_CACHE_SECONDS`).
    """

    def __init__(self, store: Store, on_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def add(
        self,
        name: str,
        *,
        redirect_uris: Sequence[str] = (),
        public: bool = False,
        post_logout_redirect_uris: Sequence[str] = (),
        backchannel_logout_uri: str | None = None,
        grant_types: Sequence[str] | None = None,
        scopes: Sequence[str] | None = None,
        auth_method: str | None = None,
        jwks: dict[str, Any] | None = None,
        client_id: str | None = None,
        require_pkce: bool = True,
        min_acr: str | None = None,
    ) -> NewClient:
        """Register a client; raises ClientError (nothing written) if any value is wrong."""
        grants = list(grant_types or (["client_credentials"] if not redirect_uris else GRANT_TYPES[:2]))
        for grant in grants:
            if grant not in GRANT_TYPES:
                raise ClientError(f"unknown grant {grant!r}; known: {', '.join(GRANT_TYPES)}")
        if public and "client_credentials" in grants:
            raise ClientError("a public client cannot use client_credentials (it has no credentials)")
        if "authorization_code" in grants and not redirect_uris:
            raise ClientError("authorization_code needs at least one --redirect-uri")
        method = "none" if public else (auth_method or ("private_key_jwt" if jwks else "client_secret_basic"))
        if method not in AUTH_METHODS or (method == "none") != public:
            raise ClientError(
                f"authentication method {method!r} does not fit a {'public' if public else 'confidential'} "
                f"client; known: {', '.join(AUTH_METHODS)}"
            )
        if method == "private_key_jwt" and not (jwks and jwks.get("keys")):
            raise ClientError("private_key_jwt needs the client's public keys (--jwks FILE)")
        scope_list = list(scopes or SCOPES[:4])
        for scope in scope_list:
            if scope not in SCOPES:
                raise ClientError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        for uri in redirect_uris:
            check_redirect_uri(uri)
        for uri in post_logout_redirect_uris:
            check_redirect_uri(uri, "post-logout redirect URI")
        if backchannel_logout_uri:
            check_redirect_uri(backchannel_logout_uri, "back-channel logout URI")
        client_id = client_id or _client_id(name)
        secret = None if method in ("none", "private_key_jwt") else secrets.token_urlsafe(32)
        record = GatewayClient(
            client_id=client_id,
            name=name,
            secret_hash=hash_secret(secret) if secret else None,
            public=public,
            token_endpoint_auth_method=method,
            redirect_uris=_unique(redirect_uris),
            post_logout_redirect_uris=_unique(post_logout_redirect_uris),
            backchannel_logout_uri=backchannel_logout_uri,
            grant_types=_unique(grants),
            scopes=_unique(scope_list),
            jwks=jwks,
            require_pkce=require_pkce or public,
            min_acr=min_acr,
        )
        with self.store.session() as session:
            if session.get(GatewayClient, client_id) is not None:
                raise ClientError(f"a client {client_id!r} already exists")
            session.add(record)
            session.commit()
        return NewClient(record, secret)

    def get(self, client_id: str) -> GatewayClient:
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
        if record is None:
            raise UnknownClient(f"no client {client_id!r} (see `ght clients list`)")
        return record

    def list(self) -> list[GatewayClient]:
        with self.store.session() as session:
            return list(session.execute(select(GatewayClient).order_by(col(GatewayClient.name))).scalars())

    def remove(self, client_id: str) -> None:
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
            if record is None:
                raise UnknownClient(f"no client {client_id!r} (see `ght clients list`)")
            session.execute(delete(SessionClient).where(col(SessionClient.client_id) == client_id))
            session.delete(record)
            session.commit()
        self._changed()

    def set_min_acr(self, client_id: str, min_acr: str | None) -> GatewayClient:
        """The lowest level of assurance the client accepts (None: the network's rule alone)."""
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
            if record is None:
                raise UnknownClient(f"no client {client_id!r} (see `ght clients list`)")
            record.min_acr = min_acr
            session.add(record)
            session.commit()
        return record

    def rotate_secret(self, client_id: str) -> NewClient:
        with self.store.session() as session:
            record = session.get(GatewayClient, client_id)
            if record is None:
                raise UnknownClient(f"no client {client_id!r} (see `ght clients list`)")
            if record.token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
                raise ClientError(f"client {client_id!r} has no secret ({record.token_endpoint_auth_method})")
            secret = secrets.token_urlsafe(32)
            record.secret_hash = hash_secret(secret)
            record.secret_rotated_at = utcnow()
            session.add(record)
            session.commit()
        self._changed()
        return NewClient(record, secret)


def _client_id(name: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40] or "client"
    return f"{slug}-{secrets.token_hex(4)}"


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
