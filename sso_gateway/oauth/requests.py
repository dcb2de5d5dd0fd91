"""The request and response shapes the core exchanges with a web framework adapter."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request


class GatewayPayload(OAuth2Payload):
    """Query and form parameters together (like a WSGI framework's `values`); the first value wins."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class GatewayRequest(OAuth2Request):
    """An HTTP request as Authlib needs it, built from plain values by the framework adapter.

    `uri` is built from the configured issuer, not from the Host header, so that a TLS-terminating
    proxy in front of the gateway changes nothing.
    """

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: Sequence[tuple[str, str]] = (),
        form: Sequence[tuple[str, str]] = (),
        address: str | None = None,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(query)
        self._form: dict[str, str] = {}
        for key, value in form:
            self._form.setdefault(key, value)
        self.payload = GatewayPayload([*query, *form])
        self.address = address
        #: The browser session, when the adapter found one (end_session uses it).
        self.browser_session: Any = None
        #: The database session of a token request (`GatewayAuthorizationServer.db`), while it runs.
        self.db: Any = None
        self.db_scope = False

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class OAuthResponse:
    """What the core answers: the adapter turns it into its framework's response."""

    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "location"] + [("Location", value)]
