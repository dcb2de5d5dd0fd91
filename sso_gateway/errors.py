"""The gateway's typed errors, on the service's `GhtError` base: the CLI prints them as one line."""

from __future__ import annotations

from directory_sync.errors import ConfigError, GhtError


class GatewayError(GhtError):
    """Base of the gateway's expected failures."""


class GatewayNotConfigured(ConfigError):
    """`ght.toml` has no `[gateway]` section."""

    def __init__(self, where: str) -> None:
        super().__init__(
            where,
            "gateway",
            "no [gateway] section: set at least issuer and key_encryption_key = {env = ...} or {file = ...}",
        )


class KeyStoreError(GatewayError):
    """The signing keys cannot be used: no key-encryption key, or not the one they were sealed with."""


class ClientError(GatewayError):
    """A client registration is invalid (bad redirect URI, unknown grant...). Nothing was changed."""

    exit_code = 2


class UnknownClient(GatewayError):
    """No client has this id."""
