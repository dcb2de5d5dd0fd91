"""Access tokens for Microsoft Graph: MSAL's confidential client, client-credentials flow.

The app registration proves itself with a client secret or a certificate (a PEM file holding the RSA
private key and the certificate; MSAL signs a client assertion with it). MSAL caches the token and
returns the cached one until it is close to expiry, so asking for a token before every request costs
nothing. Every refusal of the token endpoint becomes one `AzureAuthError` saying what to fix, from the
AADSTS code; neither the secret nor the token ever appears in an error or a log line.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from ..config import AzureSettings, SecretRef
from ..errors import ConfigError
from .errors import AzureAuthError, GraphUnavailable

#: The clouds whose authority MSAL knows (no instance discovery needed; anything else is "custom").
_KNOWN_AUTHORITIES = {
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
}
_KNOWN_GRAPH_HOSTS = {
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
}
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
_AADSTS = re.compile(r"(AADSTS\d+):\s*([^\r\n]*)")


def graph_scope(graph_url: str) -> str:
    """The `.default` scope of the Graph instance at `graph_url` (the public cloud's for a custom URL)."""
    host = urlsplit(graph_url).hostname or ""
    return f"https://{host}/.default" if host in _KNOWN_GRAPH_HOSTS else GRAPH_SCOPE


class _Session(requests.Session):
    """MSAL's HTTP client: a requests session that keeps the configured CA file and time-out.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's `verify`; a configured CA
    file (a private cloud, the tests' fake) must win over the host's environment.
    """

    def __init__(self, verify: str | bool, timeout: float) -> None:
        super().__init__()
        self.verify = verify
        self._timeout = timeout

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        if isinstance(self.verify, str):
            settings["verify"] = self.verify
        return settings

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def _resolve(path: Path, base: Path | None) -> Path:
    return path if path.is_absolute() or base is None else (base / path)


def _certificate_credential(ref: SecretRef, where: str) -> dict[str, str]:
    """MSAL's credential for a certificate: the private key and the public certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        pem = ref.read()
    except ValueError as exc:
        raise ConfigError(where, "azure.certificate", str(exc)) from None
    key = re.search(
        r"-----BEGIN (?:RSA |ENCRYPTED )?PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", pem, re.S
    )
    cert = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if key is None or cert is None:
        raise ConfigError(
            where,
            "azure.certificate",
            f"{ref.describe()} must hold a PEM private key and a PEM certificate (the app's credential)",
        )
    try:
        private_key = load_pem_private_key(key.group(0).encode(), password=None)
        x509.load_pem_x509_certificate(cert.group(0).encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, "azure.certificate", f"{ref.describe()}: unreadable PEM ({exc})") from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ConfigError(where, "azure.certificate", "Entra ID accepts RSA certificates only")
    return {"private_key": key.group(0), "public_certificate": cert.group(0)}


class TokenProvider:
    """Graph access tokens for one app registration, from MSAL (built on first use)."""

    def __init__(self, settings: AzureSettings, *, config_dir: Path | None = None) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.scope = graph_scope(settings.graph_url)
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self.requests = 0

    @property
    def verify(self) -> str | bool:
        """What TLS verification trusts: the configured CA file, or the system's CAs."""
        ca = self.settings.ca_file
        return str(_resolve(ca, self.config_dir)) if ca else True

    def _credential(self) -> str | dict[str, str]:
        settings = self.settings
        where = str(self.config_dir or "configuration")
        if settings.client_secret is not None:
            try:
                return settings.client_secret.read()
            except ValueError as exc:
                raise ConfigError(where, "azure.client_secret", str(exc)) from None
        assert settings.certificate is not None
        return _certificate_credential(settings.certificate, where)

    def _build(self) -> msal.ConfidentialClientApplication:
        settings = self.settings
        authority = f"{settings.authority}/{settings.tenant_id}"
        custom = urlsplit(settings.authority).hostname not in _KNOWN_AUTHORITIES
        try:
            return msal.ConfidentialClientApplication(
                settings.client_id,
                client_credential=self._credential(),
                authority=authority,
                http_client=_Session(self.verify, settings.timeout),
                # A private authority (the tests' fake, a sovereign proxy) is not in Microsoft's list.
                instance_discovery=False if custom else None,
            )
        except ValueError as exc:  # tenant discovery failed: the AADSTS code is in the wrapped error
            raise _auth_error(_chain(exc), settings) from None
        except requests.RequestException as exc:
            raise GraphUnavailable(
                f"cannot reach the Entra ID authority {settings.authority}: {exc}"
            ) from None

    def token(self) -> str:
        """A valid access token (MSAL's cached one when it is not about to expire)."""
        with self._lock:
            if self._app is None:
                self._app = self._build()
            app = self._app
        try:
            result: dict[str, Any] = app.acquire_token_for_client(scopes=[self.scope])
        except requests.RequestException as exc:
            raise GraphUnavailable(
                f"cannot reach the Entra ID token endpoint at {self.settings.authority}: {exc}"
            ) from None
        except ValueError as exc:
            raise _auth_error(str(exc), self.settings) from None
        if "access_token" in result:
            if result.get("token_source") == "identity_provider":
                self.requests += 1
            return str(result["access_token"])
        description = str(result.get("error_description") or result.get("error") or "no token returned")
        raise _auth_error(description, self.settings)

    def invalidate(self) -> None:
        """Forget the cached token (Graph said it is no longer valid): the next call gets a new one."""
        with self._lock:
            if self._app is not None:
                self._app.remove_tokens_for_client()


def _chain(exc: BaseException) -> str:
    """The messages of an exception and of those it was raised from (MSAL wraps the server's answer)."""
    messages: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(messages) < 5:
        messages.append(str(current))
        current = current.__cause__ or current.__context__
    return "\n".join(reversed(messages))


def _auth_error(description: str, settings: AzureSettings) -> AzureAuthError:
    """One line saying what is wrong, from the AADSTS code of the token endpoint's answer."""
    found = _AADSTS.search(description)
    code = found.group(1) if found else None
    detail = (found.group(2) if found else description.splitlines()[0] if description else "").strip()
    secret = settings.client_secret.describe() if settings.client_secret else None
    hints = {
        "AADSTS90002": f"tenant {settings.tenant_id!r} was not found: check azure.tenant_id",
        "AADSTS900023": f"{settings.tenant_id!r} is not a valid tenant id: check azure.tenant_id",
        "AADSTS700016": (
            f"application {settings.client_id!r} was not found in tenant {settings.tenant_id!r}: "
            "check azure.client_id"
        ),
        "AADSTS7000215": (
            f"the client secret in {secret} is not valid for application {settings.client_id!r}: "
            "give the secret's value (not its id), and check that it has not been replaced"
        ),
        "AADSTS7000222": f"the client secret in {secret} has expired: create a new one for the app",
        "AADSTS700027": (
            "the certificate is not registered on the app registration, or the assertion is invalid: "
            "upload the certificate under Certificates & secrets"
        ),
        "AADSTS700024": "the client assertion is not within its valid time range: check the host's clock",
        "AADSTS1002012": f"the scope is not valid for this app: {detail}",
        "AADSTS70011": f"the scope is not valid for this app: {detail}",
    }
    problem = hints.get(code or "", detail or "no access token returned")
    return AzureAuthError(code, problem)
