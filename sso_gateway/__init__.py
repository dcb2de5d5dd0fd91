"""The OIDC gateway: one sign-on for clinicians across the group's hospitals.

FastAPI + Authlib. `oauth/` is the protocol core (grants, endpoints, tokens) and knows nothing of HTTP
frameworks; `web/` is the thin FastAPI adapter and the sign-in pages; the other modules are the
gateway's domain: `signin` (lookup, password check, throttling), `passthrough` (LDAP bind),
`claims` (territorial claims by scope, see CLAIMS.md), `sessions`, `logout` (back-channel logout),
`keys` (signing keys sealed at rest), `clients` (registrations). People come from
`directory_sync.store`; `directory_sync` never imports this package.
"""

from .clients import ClientRegistry, NewClient
from .errors import ClientError, GatewayError, GatewayNotConfigured, KeyStoreError, UnknownClient
from .gateway import Gateway, gateway_settings
from .keys import KeyInfo, KeyStore
from .serve import serve

__all__ = [
    "ClientError",
    "ClientRegistry",
    "Gateway",
    "GatewayError",
    "GatewayNotConfigured",
    "KeyInfo",
    "KeyStore",
    "KeyStoreError",
    "NewClient",
    "UnknownClient",
    "gateway_settings",
    "serve",
]
