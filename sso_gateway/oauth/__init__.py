"""The OAuth 2.0 / OpenID Connect core on Authlib: grants, endpoints, tokens. Knows no web framework.

`server.GatewayAuthorizationServer` is Authlib's framework-agnostic `AuthorizationServer` with our
storage; the web adapter (`sso_gateway.web`) hands it `GatewayRequest`s and gets `OAuthResponse`s back.
"""

from .requests import GatewayRequest, OAuthResponse
from .server import GatewayAuthorizationServer
from .tokens import AuthenticatedUser

__all__ = ["AuthenticatedUser", "GatewayAuthorizationServer", "GatewayRequest", "OAuthResponse"]
