"""Every HTTP request: its request id, and the request metrics. A pure ASGI middleware (no
BaseHTTPMiddleware: no extra task, no body buffering), cheap enough for every request.

The request id is the client's `X-Request-ID` when it is well formed (1 to 64 letters, digits, `-`,
`_`, `.`, `:`: a load balancer's or an application's id carries through), else a new random one. It is
put in `directory_sync.logs.REQUEST_ID` for the request's task (and the threads serving it, which copy
the context), so every log line and every audit event of the request carry it, and it is sent back in
the response's `X-Request-ID`. The variable is not reset afterwards: uvicorn runs each request in a
task of its own (whose context dies with it), and an unhandled error logged by uvicorn after this
middleware keeps its request id.

Metrics are labelled by route template (`/login`, `/static`), never by raw path, and by method (an
unknown one is `other`): the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from directory_sync.logs import REQUEST_ID

from ..metrics import REQUEST_DURATION, REQUESTS

REQUEST_ID_HEADER = b"x-request-id"
WELL_FORMED = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
UNMATCHED = "unmatched"
#: Any other method (clients send what they like) is counted as "other": labels stay bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER and WELL_FORMED.fullmatch(value):
            return value.decode("ascii")
    return secrets.token_hex(16)


def route_template(scope: Scope) -> str:
    """The path template of the route (or mount) that served the request: the router puts it on the
    scope; a request that matched no route has none."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: The metrics' series, by labels (bounded: route templates, METHODS, statuses).
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        REQUEST_ID.set(request_id)
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            counted = self._counters.get((route, method, status))
            if counted is None:  # labels() looks the series up under a lock: once per series here
                counted = self._counters[route, method, status] = REQUESTS.labels(route, method, str(status))
            timed = self._timers.get((route, method))
            if timed is None:
                timed = self._timers[route, method] = REQUEST_DURATION.labels(route, method)
            counted.inc()
            timed.observe(time.perf_counter() - started)
