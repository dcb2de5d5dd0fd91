"""The FastAPI adapter: HTTP in, `GatewayRequest` to the core, `OAuthResponse` back out; the sign-in pages.

The protocol lives in `sso_gateway.oauth` (Authlib); this module only moves values between Starlette
and the core, and renders the pages a person sees: sign-in, site picker, logout. Pages are plain HTML
forms (no JavaScript), in French or English, with a CSRF token bound to the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import anyio.to_thread
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oidc.core.errors import InteractionRequiredError
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import bindparam, delete
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from directory_sync.config import load_settings
from directory_sync.store import Affiliation, Person, Site, sa_table

from .. import assurance, mfa
from ..audit import record_event
from ..gateway import SERVE_THREADS, Gateway, serving_store
from ..metrics import (
    CONTENT_TYPE,
    TOKENS_ISSUED,
    MetricsAccess,
    exposition,
    scrape_registry,
    worker_exit,
)
from ..models import BrowserSession, PendingAuthorization, SiteChoice
from ..oauth import AuthenticatedUser, GatewayRequest, OAuthResponse
from ..oauth.tokens import epoch
from ..sessions import digest, insert_session, site_codes
from ..signin import SignInResult
from .i18n import MESSAGES, pick_locale
from .observe import ObserveMiddleware

log = logging.getLogger("sso_gateway.web")
#: The pending request of a sign-in that goes straight to the application, in the sign-in's transaction.
PENDING_DELETE = delete(sa_table(PendingAuthorization)).where(
    sa_table(PendingAuthorization).c.id == bindparam("id")
)
HERE = Path(__file__).parent
#: What the person reads when an upstream sign-in is refused (i18n key, HTTP status), by audit reason.
UPSTREAM_MESSAGES = {
    "no_person": ("upstream_no_person", 403),
    "no_national_id": ("upstream_no_person", 403),
    "ambiguous": ("upstream_no_person", 403),
    "person_not_active": ("upstream_no_person", 403),
    "tenant_mismatch": ("upstream_no_person", 403),
    "external_client_not_allowed": ("upstream_external_refused", 403),
    "upstream_error": ("upstream_cancelled", 400),
    "upstream_unavailable": ("upstream_unavailable", 502),
    "not_offered": ("upstream_not_offered", 403),
}
SESSION_COOKIE = "ght_session"
BROWSER_COOKIE = "ght_browser"
LANG_COOKIE = "ght_lang"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The pages that run a WebAuthn ceremony load one script, /static/webauthn.js (nothing inline).
SCRIPT_PAGE_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"] + "; script-src 'self'",
}


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def oauth_request(request: Request, gateway: Gateway) -> GatewayRequest:
    """The core's view of an HTTP request; its URI is built on the configured issuer."""
    form: list[tuple[str, str]] = []
    if request.method == "POST" and _urlencoded(request):
        # What OAuth clients send (RFC 6749 §4.1.3): parsed directly, a tenth of the multipart parser's cost.
        form = parse_qsl((await request.body()).decode("latin-1"), keep_blank_values=True)
    elif request.method == "POST":
        data = await request.form()
        form = [(k, v) for k, v in data.multi_items() if isinstance(v, str)]
    query = list(request.query_params.multi_items())
    uri = gateway.issuer + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return GatewayRequest(
        request.method, uri, request.headers, query=query, form=form, address=_address(request)
    )


def _urlencoded(request: Request) -> bool:
    return _urlencoded_media(request.headers)


def _urlencoded_media(headers: Mapping[str, str]) -> bool:
    media_type = headers.get("content-type", "").partition(";")[0]
    return media_type.strip().lower() == "application/x-www-form-urlencoded"


#: The largest token request body read (a client assertion and a long refresh token fit many times).
MAX_TOKEN_REQUEST = 64 * 1024


class GatewayApp(FastAPI):
    """The gateway's FastAPI application, with one request kind answered in front of its middleware
    stack: `shortcut` is (accepts(scope), ASGI app), set by `create_app` (the token endpoint's)."""

    shortcut: tuple[Callable[[Scope], bool], ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.shortcut is not None and scope["type"] == "http" and self.shortcut[0](scope):
            await self.shortcut[1](scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def fastapi_telemetry() -> Any:
    """FastAPI's own OpenTelemetry (spans, metrics and logs per request): on when the environment asks
    FastAPI to configure its exporters (`FASTAPI_OTEL_AUTO_CONFIGURE=true`, with the `OTEL_*`
    variables), off otherwise. The gateway's own request metrics and request ids (web/observe.py) are
    always on; FastAPI's check that nobody configured OpenTelemetry cost 3% of a token grant."""
    if os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").strip().lower() in ("1", "true", "yes"):
        return None  # FastAPI's defaults
    return {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def raw_json_response(result: OAuthResponse) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages `to_response` would send for a JSON body (the same JSON, the same headers),
    without building a Response."""
    body = json.dumps(result.body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in result.headers]
    start = {"type": "http.response.start", "status": result.status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


def to_response(result: OAuthResponse | None) -> Response:
    if result is None:
        return Response(status_code=204)
    headers = dict(result.headers)
    if isinstance(result.body, dict | list):
        headers.pop("Content-Type", None)
        return JSONResponse(result.body, status_code=result.status, headers=headers)
    return Response(result.body or "", status_code=result.status, headers=headers)


class Pages:
    """Renders the person-facing pages in the request's language."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        # The templates ship with the code: no modification time read (os.stat) per page rendered.
        self.templates.env.auto_reload = False

    def locale(self, request: Request, params: dict[str, str] | None = None) -> str:
        params = params or {}
        return pick_locale(
            request.query_params.get("lang"),
            params.get("ui_locales"),
            request.cookies.get(LANG_COOKIE),
            accept_language=request.headers.get("accept-language", ""),
            default=self.gateway.config.default_locale,
        )

    def render(
        self,
        request: Request,
        name: str,
        lang: str,
        status: int = 200,
        *,
        scripts: bool = False,
        switch: tuple[str, dict[str, str]] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """`switch`: the page (path, query) the language link reloads, by default this request's."""
        other = "en" if lang == "fr" else "fr"
        path, query = switch or (request.url.path, dict(request.query_params))
        query = {k: v for k, v in query.items() if k != "lang"}
        switch_url = f"{path}?{urlencode({**query, 'lang': other})}"
        response = self.templates.TemplateResponse(
            request,
            name,
            {"lang": lang, "t": MESSAGES[lang], "switch_url": switch_url, **context},
            status_code=status,
            headers=SCRIPT_PAGE_HEADERS if scripts else PAGE_HEADERS,
        )
        if request.query_params.get("lang") in MESSAGES:
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", httponly=True)
        return response

    def message(
        self, request: Request, lang: str, heading: str, message: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        return self.render(
            request,
            "message.html",
            lang,
            status,
            heading=heading,
            message=message,
            alert=status >= 400,
            **context,
        )


def create_app(gateway: Gateway, *, threads: int | None = None) -> FastAPI:
    """The gateway's HTTP application; `threads`: at most so many requests' blocking work at once."""
    pages = Pages(gateway)
    server = gateway.server
    secure_cookies = gateway.issuer.startswith("https://")
    wake = asyncio.Event()

    async def deliver_logouts() -> None:
        while True:
            try:
                await run_in_threadpool(gateway.logout.deliver_due)
            except Exception:  # a database hiccup must not kill the delivery loop
                log.exception("back-channel logout delivery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=1.0)
            wake.clear()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threads is not None:  # no more than the database connections of the pool (serving_store)
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await run_in_threadpool(gateway.keys.ensure_key)
        task = asyncio.create_task(deliver_logouts())
        yield
        task.cancel()
        worker_exit()

    app = GatewayApp(
        title="GHT OIDC gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=fastapi_telemetry(),
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.gateway = gateway
    app.add_middleware(ObserveMiddleware)  # request id and request metrics (web/observe.py)
    metrics_access = MetricsAccess(gateway.config, str(gateway.settings.config_file or "ght.toml"))
    metrics_registry = scrape_registry(gateway.settings, gateway.store)

    def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, httponly=True, secure=secure_cookies, samesite="lax", path="/"
        )

    def browser_of(request: Request) -> tuple[str, bool]:
        """The browser's binding cookie (new if it has none yet)."""
        existing = request.cookies.get(BROWSER_COOKIE)
        return (existing, False) if existing else (secrets.token_urlsafe(24), True)

    def session_csrf(cookie: str | None) -> str:
        return digest(f"csrf:{cookie}") if cookie else ""

    # -- discovery, keys, health ---------------------------------------------------------------------

    @app.get("/.well-known/openid-configuration")
    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> JSONResponse:
        return JSONResponse(server.metadata(), headers={"Cache-Control": "public, max-age=300"})

    @app.get("/jwks")
    def jwks() -> JSONResponse:
        # Cached for less than the publish delay, so a new key is known before it signs.
        max_age = max(0, min(300, gateway.config.key_publish_delay // 2))
        return JSONResponse(gateway.keys.jwks(), headers={"Cache-Control": f"public, max-age={max_age}"})

    @app.get("/claims")
    def claims_documentation() -> PlainTextResponse:
        """CLAIMS.md, for integrators (`service_documentation` in the metadata)."""
        text = (HERE.parent / "CLAIMS.md").read_text(encoding="utf-8")
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, detail = gateway.ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "detail": detail}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (sso_gateway/metrics.py), for the allowed networks or the bearer token."""
        if not metrics_access.allows(_address(request), request.headers.get("authorization")):
            return PlainTextResponse("forbidden\n", status_code=403, headers={"Cache-Control": "no-store"})
        body = await run_in_threadpool(exposition, metrics_registry)  # reads the database
        return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    # -- token, userinfo, introspection, revocation --------------------------------------------------

    async def token_response(oreq: GatewayRequest) -> Response:
        if server.answers_without_database(oreq):  # client credentials, client and key cached: CPU only
            result = server.create_token_response(oreq)
        else:
            result = await run_in_threadpool(server.create_token_response, oreq)
        if result is not None and result.status == 200:  # a grant type the server knows: bounded labels
            TOKENS_ISSUED.labels(oreq.form.get("grant_type", "")).inc()
        return to_response(result)

    @app.post("/token")
    async def token(request: Request) -> Response:
        """A token request in another form than urlencoded (TokenShortcut answers those)."""
        return await token_response(await oauth_request(request, gateway))

    token_route = next(r for r in app.router.routes if getattr(r, "path", None) == "/token")

    class TokenShortcut:
        """Token requests in the form OAuth clients send (RFC 6749: urlencoded, no query), answered as
        plain ASGI in front of FastAPI's stack (`GatewayApp`), with the request id and metrics of any
        request (ObserveMiddleware) and a 500 for an unexpected error, as ServerErrorMiddleware would:
        the middleware layers, the router and FastAPI's request and response machinery were about a
        third of a refresh grant's CPU. A refresh grant the fast path answers (oauth/fastpath.py: one
        that succeeds) is answered there; every other grant by `token_response`, as the route would."""

        def accepts(self, scope: Scope) -> bool:
            return (
                scope["type"] == "http"
                and scope["path"] == "/token"
                and scope["method"] == "POST"
                and not scope.get("query_string")
                and _urlencoded_media(Headers(scope=scope))
            )

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            started = False

            async def send_tracked(message: Message) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.answer(scope, receive, send_tracked)
            except Exception:
                if not started:  # as ServerErrorMiddleware: a plain 500, and the error goes on to be logged
                    await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
                raise

        async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
            headers = Headers(scope=scope)
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_TOKEN_REQUEST:  # no token request is anywhere near: not buffered further
                    await PlainTextResponse("Request Entity Too Large", 413)(scope, receive, send)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            # Parsed directly: a tenth of the multipart parser's cost (see `oauth_request`).
            pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
            scope["route"] = token_route  # the metrics' route label
            fast = None
            if server.refresh_fast_path.enabled and b"refresh_token" in body:  # else: not a refresh grant
                form = dict(reversed(pairs))  # the first value wins, as in GatewayRequest
                fast = await server.refresh_fast_path.refresh(form, headers, {})
            if fast is not None:
                REFRESH_TOKENS_ISSUED.inc()
                start, content = raw_json_response(fast)
                await send(start)
                await send(content)
                return
            client = scope.get("client")
            oreq = GatewayRequest(
                "POST",
                f"{gateway.issuer}/token",
                headers,
                form=pairs,
                address=client[0] if client else "unknown",
            )
            response = await token_response(oreq)
            await response(scope, receive, send)

    shortcut = TokenShortcut()
    app.shortcut = (shortcut.accepts, ObserveMiddleware(shortcut))
    REFRESH_TOKENS_ISSUED = TOKENS_ISSUED.labels("refresh_token")

    @app.api_route("/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        return to_response(await run_in_threadpool(server.create_endpoint_response, "userinfo", oreq))

    @app.post("/introspect")
    async def introspect(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        return to_response(await run_in_threadpool(server.create_endpoint_response, "introspection", oreq))

    @app.post("/revoke")
    async def revoke(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        return to_response(await run_in_threadpool(server.create_endpoint_response, "revocation", oreq))

    # -- authorization --------------------------------------------------------------------------------

    def client_name(params: dict[str, str]) -> str | None:
        client = server.query_client(params.get("client_id", "")) if params.get("client_id") else None
        return client.record.name if client else None

    def required_level(params: dict[str, str], address: str) -> str:
        """The `acr` a sign-in must reach: the client's minimum, its `acr_values`, the network's rule."""
        client = server.query_client(params["client_id"]) if params.get("client_id") else None
        return assurance.required_acr(
            gateway.config,
            address=address,
            client_minimum=client.record.min_acr if client else None,
            acr_values=params.get("acr_values"),
        )

    def second_factor_notice(params: dict[str, str], address: str) -> str:
        """Which sentence of the login page says whether a second factor will follow the password."""
        if not assurance.is_internal(address, gateway.config):
            return "means_second_external"
        lowest = gateway.config.assurance_levels[0].acr
        if required_level(params, address) == lowest:
            return "means_second_internal"
        return "means_second_required"

    def authorize_request(params: dict[str, str], address: str) -> GatewayRequest:
        query = list(params.items())
        return GatewayRequest(
            "GET", f"{gateway.issuer}/authorize?{urlencode(query)}", {}, query=query, address=address
        )

    def site_choices(person_id: str) -> list[tuple[Affiliation, Site | None]]:
        with gateway.store.session() as session:
            return gateway.claims.sites_offered(session, person_id)

    def site_decision(
        params: dict[str, str], current_site: str | None, codes: list[str]
    ) -> tuple[str | None, bool]:
        """The site the sign-in goes on with, and whether the person must pick one first."""
        prompt = set(params.get("prompt", "").split())
        site = current_site if current_site in codes else None
        asked = params.get("site")
        if asked in codes:
            site = asked
        elif len(codes) == 1:
            site = codes[0]
        wants_picker = "select_account" in prompt or (asked is not None and asked not in codes)
        if (site is None or wants_picker) and len(codes) > 1:
            if "none" in prompt:
                return site or codes[0], False  # no interaction allowed: the last choice, else the home site
            return site, True
        return site, False

    def goes_to_application(
        params: dict[str, str], user: BrowserSession, codes: list[str], address: str
    ) -> bool:
        """After a sign-in: neither a second factor nor a site to pick stands before the application."""
        if not assurance.satisfies(user.acr, required_level(params, address), gateway.config):
            return False
        return not params or not site_decision(params, user.current_site, codes)[1]

    def continue_authorization(
        request: Request,
        oreq: GatewayRequest,
        browser_session: BrowserSession | None,
        *,
        fresh: bool,
        pending: PendingAuthorization | None,
        browser: str,
        codes: list[str] | None = None,
        db: Session,
    ) -> Response:
        """Decide what the person sees next: the sign-in form, the site picker, or the application.

        `codes`: the person's sites (`site_codes`) if already read. `db`: the request's transaction,
        which the caller commits: the nonce's lookup, the pending request, the site chosen and the
        code are all read and written there (one transaction per request, not one per step)."""
        oreq.db, oreq.db_scope = db, True  # the grant's reads and writes (oauth/grants.py) go there too
        params = dict(oreq.payload.data)
        lang = pages.locale(request, params)
        prompt = set(params.get("prompt", "").split())
        user = browser_session
        if user is not None and not fresh:
            max_age = params.get("max_age", "")
            auth_time = epoch(user.auth_time) or 0
            too_old = max_age.isdigit() and int(max_age) < int(time.time()) - auth_time
            if "login" in prompt or too_old:
                user = None
        marker = AuthenticatedUser(user.person_id) if user else None
        try:
            grant = server.get_consent_grant(oreq, end_user=marker)
        except OAuth2Error as error:
            if error.redirect_uri:
                return to_response(server.authorization_error(oreq, error))
            return pages.message(
                request,
                lang,
                MESSAGES[lang]["error_heading"],
                MESSAGES[lang]["error_invalid_request"].format(detail=error.description or error.error),
                400,
            )
        if user is None:  # the sign-in form, here: no redirect to /login (one request less, as Keycloak)
            pending = pending or gateway.save_pending(params, browser, db)
            return login_page(request, pending, lang, _address(request))
        if not assurance.satisfies(user.acr, required_level(params, _address(request)), gateway.config):
            if "none" in prompt:  # the level needs the person: say so to the application
                too_low = InteractionRequiredError(
                    description="the session's level of assurance is below what is required",
                    state=params.get("state"),
                    redirect_uri=getattr(grant, "redirect_uri", None),
                )
                return to_response(server.authorization_error(oreq, too_low))
            pending = pending or gateway.save_pending(params, browser, db)
            return RedirectResponse(f"/mfa?{urlencode({'request': pending.id})}", status_code=303)
        if codes is None:
            codes = site_codes(db, user.person_id)
        site, pick = site_decision(params, user.current_site, codes)
        if pick:
            pending = pending or gateway.save_pending(params, browser, db)
            return RedirectResponse(f"/select-site?{urlencode({'request': pending.id})}", status_code=303)
        if site and site != user.current_site:
            gateway.sessions.set_site(user.sid, user.person_id, site, db)
        grant_user = AuthenticatedUser(
            person_id=user.person_id,
            sid=user.sid,
            auth_time=epoch(user.auth_time),
            amr=list(user.amr),
            current_site=site,
            acr=user.acr,
        )
        result = server.create_authorization_response(oreq, grant_user=grant_user, grant=grant)
        if pending is not None:
            gateway.drop_pending(pending.id, db)
        return to_response(result)

    def resume_authorization(
        request: Request,
        params: dict[str, str],
        user: BrowserSession,
        pending: PendingAuthorization,
        browser: str,
    ) -> Response:
        """The application's request again, once the person has just proved who they are (upstream,
        second factor) or picked a site: in a transaction of its own."""
        with gateway.store.session() as db:
            oreq = authorize_request(params, _address(request))
            response = continue_authorization(
                request, oreq, user, fresh=True, pending=pending, browser=browser, db=db
            )
            db.commit()
        return response

    def with_browser_cookie(response: Response, browser: str, new: bool) -> Response:
        if new:
            set_cookie(response, BROWSER_COOKIE, browser, max_age=30 * 86400)
        return response

    @app.api_route("/authorize", methods=["GET", "POST"])
    async def authorize(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        browser, new = browser_of(request)

        def run() -> Response:
            with gateway.store.session() as db:  # one transaction for the whole request
                session = gateway.sessions.current(request.cookies.get(SESSION_COOKIE), db)
                response = continue_authorization(
                    request, oreq, session, fresh=False, pending=None, browser=browser, db=db
                )
                db.commit()
            return response

        return with_browser_cookie(await run_in_threadpool(run), browser, new)

    # -- sign-in ----------------------------------------------------------------------------------

    def expired(request: Request, lang: str) -> HTMLResponse:
        t = MESSAGES[lang]
        return pages.message(request, lang, t["error_heading"], t["error_expired"], 400)

    def login_page(
        request: Request,
        pending: PendingAuthorization,
        lang: str,
        address: str,
        status: int = 200,
        *,
        login: str = "",
        error: str | None = None,
    ) -> HTMLResponse:
        """The sign-in form of a pending request (at /authorize, /login, or again after a failure)."""
        here = f"/login?{urlencode({'request': pending.id})}"
        return pages.render(
            request,
            "login.html",
            lang,
            status,
            switch=("/login", {"request": pending.id}),
            action=here,
            csrf=pending.csrf,
            login=login,
            error=error,
            client_name=client_name(pending.params),
            upstream=upstream_buttons(pending),
            second_factor=second_factor_notice(pending.params, address),
        )

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        browser, new = browser_of(request)

        def run() -> Response:
            pending_id = request.query_params.get("request")
            if pending_id is None:  # signing in at the gateway itself, without an application
                pending = gateway.save_pending({}, browser)
            else:
                found = gateway.pending(pending_id, browser)
                if found is None:
                    return expired(request, pages.locale(request))
                pending = found
            return login_page(request, pending, pages.locale(request, pending.params), _address(request))

        return with_browser_cookie(await run_in_threadpool(run), browser, new)

    @app.post("/login")
    async def login_submit(request: Request) -> Response:
        if _urlencoded(request):  # what the form sends: parsed directly (Starlette's parser costs more)
            body = (await request.body()).decode("utf-8", "replace")
            form: Any = dict(parse_qsl(body, keep_blank_values=True))
        else:
            form = await request.form()
        login = str(form.get("login", ""))[:256]
        password = str(form.get("password", ""))
        csrf = str(form.get("csrf_token", ""))
        browser = request.cookies.get(BROWSER_COOKIE)
        address = _address(request)

        def run() -> Response:
            with gateway.store.session() as db:  # one database session for the whole POST
                return submitted(db)

        def submitted(db: Session) -> Response:
            pending = gateway.pending(request.query_params.get("request"), browser, db)
            lang = pages.locale(request, pending.params if pending else None)
            t = MESSAGES[lang]
            if pending is None or not hmac.compare_digest(pending.csrf, csrf):
                return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
            found = pending

            def started(
                db: Session, result: SignInResult
            ) -> tuple[BrowserSession, str, list[str], Response | None, bool]:
                """In the sign-in's transaction, one commit: the browser session, and what follows for
                the application's request (its code, or the second factor or site picker to show), or
                else the pending request dropped when nothing will need it any more."""
                assert result.person is not None
                codes = site_codes(db, result.person.id)
                site = codes[0] if len(codes) == 1 else None
                record, cookie = gateway.sessions.new(result.person.id, result.amr, site)
                insert_session(db, record)
                if found.params:
                    assert browser is not None  # `found` is this browser's pending request
                    oreq = authorize_request(found.params, address)
                    response = continue_authorization(
                        request, oreq, record, fresh=True, pending=found, browser=browser, codes=codes, db=db
                    )  # fmt: skip
                    return record, cookie, codes, response, True
                done = goes_to_application(found.params, record, codes, address)
                if done:
                    db.execute(PENDING_DELETE, {"id": found.id})
                return record, cookie, codes, None, done

            result = gateway.signin(login, password, address, on_success=started, session=db)
            if not result.ok:
                message = (
                    t["throttled"].format(seconds=result.retry_after) if result.retry_after else t["invalid"]
                )
                status = 401 if not result.retry_after else 429
                return login_page(request, pending, lang, address, status, login=login, error=message)
            assert result.person is not None and browser is not None
            record, cookie, codes, answered, dropped = result.after
            if answered is not None:
                response = answered
            elif not assurance.satisfies(record.acr, required_level({}, address), gateway.config):
                response = RedirectResponse(f"/mfa?{urlencode({'request': pending.id})}", status_code=303)
            else:
                if not dropped:
                    gateway.drop_pending(pending.id)
                response = RedirectResponse("/site" if len(codes) > 1 else "/", status_code=303)
            set_cookie(response, SESSION_COOKIE, cookie)
            return response

        return await run_in_threadpool(run)

    # -- upstream identity providers: Entra ID, Pro Sante Connect (sso_gateway/upstream.py) -------------

    def upstream_buttons(pending: PendingAuthorization) -> list[tuple[str, str, str]]:
        """(name, label, url) of each upstream provider, for the sign-in page."""
        query = urlencode({"request": pending.id})
        buttons = gateway.upstream.buttons(pending.params.get("client_id"))
        return [(name, label, f"/upstream/{name}/start?{query}") for name, label in buttons]

    def upstream_refusal(
        request: Request, lang: str, label: str, failure: str, pending: PendingAuthorization | None
    ) -> HTMLResponse:
        t = MESSAGES[lang]
        key, status = UPSTREAM_MESSAGES.get(failure, ("upstream_failed", 400))
        link = {}
        if pending is not None:
            back = f"/login?{urlencode({'request': pending.id})}"
            link = {"link_url": back, "link_text": t["upstream_back"]}
        heading = t["upstream_failed_heading"].format(provider=label)
        return pages.message(request, lang, heading, t[key].format(provider=label), status, **link)

    @app.get("/upstream/{provider}/start")
    async def upstream_start(request: Request, provider: str) -> Response:
        browser = request.cookies.get(BROWSER_COOKIE)

        def run() -> Response:
            pending = gateway.pending(request.query_params.get("request"), browser)
            lang = pages.locale(request, pending.params if pending else None)
            t = MESSAGES[lang]
            upstream = gateway.upstream.providers.get(provider)
            if upstream is None:
                return pages.message(request, lang, t["error_heading"], t["upstream_unknown"], 404)
            if pending is None or browser is None:
                return expired(request, lang)
            if not gateway.upstream.offered(provider, pending.params.get("client_id")):
                return upstream_refusal(request, lang, upstream.label, "not_offered", pending)
            try:
                url = gateway.upstream.begin(provider, pending.id, pending.params, browser)
            except Exception:  # discovery failed: the provider is down or misconfigured
                log.exception("upstream provider %s: cannot start a sign-in", provider)
                return upstream_refusal(request, lang, upstream.label, "upstream_unavailable", pending)
            return RedirectResponse(url, status_code=303)

        return await run_in_threadpool(run)

    @app.get("/upstream/{provider}/callback")
    async def upstream_callback(request: Request, provider: str) -> Response:
        browser = request.cookies.get(BROWSER_COOKIE)
        address = _address(request)

        def run() -> Response:
            upstream = gateway.upstream.providers.get(provider)
            if upstream is None:
                lang = pages.locale(request)
                t = MESSAGES[lang]
                return pages.message(request, lang, t["error_heading"], t["upstream_unknown"], 404)

            def client_of(pending_id: str) -> str | None:
                found = gateway.pending(pending_id, browser)
                return found.params.get("client_id") if found else None

            query = dict(request.query_params)
            result = gateway.upstream.finish(provider, query, browser, address, client_of)
            pending = gateway.pending(result.pending_id, browser)
            lang = pages.locale(request, pending.params if pending else None)
            if not result.ok or result.person_id is None:
                return upstream_refusal(request, lang, upstream.label, result.failure or "", pending)
            if pending is None or browser is None:
                return expired(request, lang)
            choices = site_choices(result.person_id)
            site = choices[0][0].site if len(choices) == 1 else None
            record, cookie = gateway.sessions.start(result.person_id, result.amr, site, acr=result.acr)
            if pending.params:
                response = resume_authorization(request, pending.params, record, pending, browser)
            else:
                gateway.drop_pending(pending.id)
                response = RedirectResponse("/site" if len(choices) > 1 else "/", status_code=303)
            if not result.external:  # an external professional gets no single sign-on (upstream.py)
                set_cookie(response, SESSION_COOKIE, cookie)
            return response

        return await run_in_threadpool(run)

    # -- where am I working today -------------------------------------------------------------------

    def site_page(request: Request, lang: str, person_id: str, action: str, csrf: str) -> HTMLResponse:
        choices = site_choices(person_id)
        with gateway.store.session() as session:
            last = session.get(SiteChoice, person_id)
        sites = [
            {
                "code": a.site,
                "name": s.name if s else a.site,
                "detail": ", ".join(x for x in (a.title, a.department) if x),
                "last": last is not None and last.site == a.site,
            }
            for a, s in choices
        ]
        return pages.render(
            request, "select_site.html", lang, action=action, csrf=csrf, sites=sites, error=None
        )

    @app.api_route("/select-site", methods=["GET", "POST"])
    async def select_site(request: Request) -> Response:
        form = await request.form() if request.method == "POST" else None
        browser = request.cookies.get(BROWSER_COOKIE)

        def run() -> Response:
            pending = gateway.pending(request.query_params.get("request"), browser)
            session = gateway.sessions.current(request.cookies.get(SESSION_COOKIE))
            lang = pages.locale(request, pending.params if pending else None)
            t = MESSAGES[lang]
            if pending is None or session is None or browser is None:
                return expired(request, lang)
            action = f"/select-site?{urlencode({'request': pending.id})}"
            if form is None:
                return site_page(request, lang, session.person_id, action, pending.csrf)
            if not hmac.compare_digest(pending.csrf, str(form.get("csrf_token", ""))):
                return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
            site = str(form.get("site", ""))
            if site not in [a.site for a, _ in site_choices(session.person_id)]:
                return site_page(request, lang, session.person_id, action, pending.csrf)
            gateway.sessions.set_site(session.sid, session.person_id, site)
            session.current_site = site
            params = {k: v for k, v in pending.params.items() if k not in ("prompt", "site")}
            return resume_authorization(request, params, session, pending, browser)

        return await run_in_threadpool(run)

    @app.api_route("/site", methods=["GET", "POST"])
    async def switch_site(request: Request) -> Response:
        """Switch the site of the current session, without the password."""
        form = await request.form() if request.method == "POST" else None
        cookie = request.cookies.get(SESSION_COOKIE)

        def run() -> Response:
            session = gateway.sessions.current(cookie)
            lang = pages.locale(request)
            t = MESSAGES[lang]
            if session is None:
                return RedirectResponse("/login", status_code=303)
            if form is None:
                return site_page(request, lang, session.person_id, "/site", session_csrf(cookie))
            if not hmac.compare_digest(session_csrf(cookie), str(form.get("csrf_token", ""))):
                return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
            site = str(form.get("site", ""))
            names = {a.site: (s.name if s else a.site) for a, s in site_choices(session.person_id)}
            if site not in names:
                return site_page(request, lang, session.person_id, "/site", session_csrf(cookie))
            gateway.sessions.set_site(session.sid, session.person_id, site)
            return pages.message(request, lang, t["signed_in"], t["site_done"].format(site=names[site]))

        return await run_in_threadpool(run)

    @app.get("/")
    async def home(request: Request) -> Response:
        def run() -> Response:
            session = gateway.sessions.current(request.cookies.get(SESSION_COOKIE))
            lang = pages.locale(request)
            t = MESSAGES[lang]
            if session is None:
                return RedirectResponse("/login", status_code=303)
            with gateway.store.session() as db:
                site = db.get(Site, session.current_site) if session.current_site else None
            message = t["site_done"].format(site=site.name) if site else t["signed_in"]
            return pages.message(
                request,
                lang,
                t["signed_in"],
                message,
                link_url="/site",
                link_text=t["change_site"],
                link2_url="/security",
                link2_text=t["security_link"],
            )

        return await run_in_threadpool(run)

    # -- second factors: step-up, enrolment, the person's own list (sso_gateway/mfa.py) ---------------

    step_up_returns = {"home": "/", "security": "/security"}

    def may_manage(live: BrowserSession, address: str, has_factors: bool) -> bool:
        """May this session enrol or remove factors? After a second factor in it (or an upstream sign-in
        above the lowest level); or, for a person with none yet, after a password sign-in from an
        internal network (never from elsewhere)."""
        if "mfa" in live.amr or (assurance.rank(live.acr, gateway.config) or 0) > 0:
            return True
        return not has_factors and assurance.is_internal(address, gateway.config)

    def security_gate(
        request: Request, cookie: str | None, form: Any, address: str
    ) -> tuple[BrowserSession, str] | Response:
        """The session and language of a security page, when the session may manage its factors (and a
        submitted form carries its CSRF token); else the sign-in, the step-up or a refusal page."""
        live = gateway.sessions.current(cookie)
        lang = carried_locale(request)
        t = MESSAGES[lang]
        if live is None:
            return RedirectResponse("/login", status_code=303)
        if form is not None and not hmac.compare_digest(
            session_csrf(cookie), str(form.get("csrf_token", ""))
        ):
            return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
        has_factors = bool(gateway.mfa.factors(live.person_id))
        if may_manage(live, address, has_factors):
            return live, lang
        if has_factors:
            return RedirectResponse("/mfa?return=security", status_code=303)
        return pages.message(request, lang, t["mfa_none_heading"], t["mfa_none_refused"], 403)

    def carried_locale(request: Request) -> str:
        """The page's language, following the waiting authorization's `ui_locales` if there is one."""
        pending_id = request.query_params.get("request")
        pending = gateway.pending(pending_id, request.cookies.get(BROWSER_COOKIE)) if pending_id else None
        return pages.locale(request, pending.params if pending else None)

    def carried(request: Request) -> tuple[str, str]:
        """The query carrying a waiting authorization through the security pages, and where to go next."""
        pending_id = request.query_params.get("request")
        if pending_id:
            query = "?" + urlencode({"request": pending_id})
            return query, f"/mfa{query}"
        return "", "/security"

    def step_up_page(
        request: Request,
        lang: str,
        live: BrowserSession,
        action: str,
        error: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        kinds = gateway.mfa.kinds(live.person_id)
        key = gateway.mfa.authentication_options(live.sid, live.person_id) if mfa.WEBAUTHN in kinds else None
        return pages.render(
            request,
            "mfa.html",
            lang,
            status,
            scripts=key is not None,
            action=action,
            csrf=session_csrf(request.cookies.get(SESSION_COOKIE)),
            error=error,
            code=bool(kinds & {mfa.TOTP, mfa.RECOVERY}),
            challenge=key[0] if key else None,
            webauthn_options=key[1] if key else None,
        )

    def after_step_up(
        request: Request, live: BrowserSession, pending: PendingAuthorization | None, browser: str
    ) -> Response:
        if pending is not None and pending.params:
            return resume_authorization(request, pending.params, live, pending, browser)
        if pending is not None:
            gateway.drop_pending(pending.id)
        return RedirectResponse(step_up_returns.get(request.query_params.get("return", ""), "/"), 303)

    @app.api_route("/mfa", methods=["GET", "POST"])
    async def step_up(request: Request) -> Response:
        """Ask for the missing factor: a TOTP or recovery code, or the security key."""
        form = await request.form() if request.method == "POST" else None
        cookie = request.cookies.get(SESSION_COOKIE)
        browser = request.cookies.get(BROWSER_COOKIE)
        address = _address(request)

        def run() -> Response:
            pending_id = request.query_params.get("request")
            pending = gateway.pending(pending_id, browser) if pending_id else None
            lang = pages.locale(request, pending.params if pending else None)
            t = MESSAGES[lang]
            if (pending_id and pending is None) or browser is None:
                return expired(request, lang)
            live = gateway.sessions.current(cookie)
            if live is None:
                back = f"/login?{urlencode({'request': pending.id})}" if pending else "/login"
                return RedirectResponse(back, status_code=303)
            back_to = request.query_params.get("return", "")
            query = {"request": pending.id} if pending else ({"return": back_to} if back_to else {})
            action = "/mfa" + (f"?{urlencode(query)}" if query else "")
            if form is None and pending is not None:
                required = required_level(pending.params, address)
                if assurance.satisfies(live.acr, required, gateway.config):
                    return after_step_up(request, live, pending, browser)  # e.g. just enrolled one
            kinds = gateway.mfa.kinds(live.person_id)
            if not kinds:
                if assurance.is_internal(address, gateway.config):
                    setup = "/security" + (f"?{urlencode({'request': pending.id})}" if pending else "")
                    return pages.message(
                        request,
                        lang,
                        t["mfa_none_heading"],
                        t["mfa_none_enrol"],
                        link_url=setup,
                        link_text=t["security_heading"],
                    )
                with gateway.store.session() as db:
                    record_event(db, "mfa_missing", person_id=live.person_id, address=address)
                    db.commit()
                return pages.message(request, lang, t["mfa_none_heading"], t["mfa_none_refused"], 403)
            if form is None:
                return step_up_page(request, lang, live, action)
            if not hmac.compare_digest(session_csrf(cookie), str(form.get("csrf_token", ""))):
                return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
            if form.get("method") == "webauthn":
                challenge, credential = str(form.get("challenge", "")), str(form.get("credential", ""))
                outcome = gateway.mfa.verify_assertion(
                    live.sid, live.person_id, challenge, credential[:20000], address=address
                )
                wrong = t["mfa_key_invalid"]
            else:
                code = str(form.get("code", ""))[:64]
                outcome = gateway.mfa.verify_code(live.person_id, code, address=address)
                wrong = t["mfa_invalid"]
            if not outcome.ok or outcome.amr is None:
                if outcome.retry_after:
                    message, status = t["mfa_throttled"].format(seconds=outcome.retry_after), 429
                else:
                    message, status = wrong, 401
                return step_up_page(request, lang, live, action, message, status)
            stepped = gateway.sessions.step_up(live.sid, [outcome.amr])
            if stepped is None:
                return expired(request, lang)
            return after_step_up(request, stepped, pending, browser)

        return await run_in_threadpool(run)

    def enrolled(request: Request, lang: str, live: BrowserSession, amr: str, address: str) -> Response:
        """A factor was just enrolled (and proved): the session rises; first recovery codes shown once."""
        gateway.sessions.step_up(live.sid, [amr])
        _, next_url = carried(request)
        if gateway.mfa.recovery_codes_left(live.person_id):
            return RedirectResponse(next_url, status_code=303)
        codes = gateway.mfa.new_recovery_codes(live.person_id, address=address)
        return pages.render(
            request, "recovery_codes.html", lang, codes=codes, next_url=next_url, enrolled=True
        )

    def account_name(person: Person | None, person_id: str) -> str:
        """How an authenticator lists the account: the person's email, else their territorial id."""
        return (person.email if person and person.email else None) or person_id

    @dataclass
    class SecurityPage:
        """A request to one of the person's security pages, past `security_gate`."""

        request: Request
        form: Any  # the submitted form (POST), else None
        cookie: str | None
        address: str
        live: BrowserSession
        lang: str

        @property
        def t(self) -> dict[str, str]:
            return MESSAGES[self.lang]

        @property
        def csrf(self) -> str:
            return session_csrf(self.cookie)

    def security_page(
        handler: Callable[[SecurityPage], Response],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A security page's endpoint: reads the form and cookie, passes the gate (session, CSRF, may
        manage factors), then runs `handler` in a worker thread (it talks to the database)."""

        async def endpoint(request: Request) -> Response:
            form = await request.form() if request.method == "POST" else None
            cookie = request.cookies.get(SESSION_COOKIE)
            address = _address(request)

            def run() -> Response:
                gate = security_gate(request, cookie, form, address)
                if isinstance(gate, Response):
                    return gate
                live, lang = gate
                return handler(SecurityPage(request, form, cookie, address, live, lang))

            return await run_in_threadpool(run)

        endpoint.__doc__ = handler.__doc__
        return endpoint

    @security_page
    def security(page: SecurityPage) -> Response:
        """The person's second factors: list, remove, add; recovery codes."""
        query, _ = carried(page.request)
        person_id = page.live.person_id
        return pages.render(
            page.request,
            "security.html",
            page.lang,
            csrf=page.csrf,
            factors=gateway.mfa.factors(person_id),
            recovery_left=gateway.mfa.recovery_codes_left(person_id),
            query=query,
            notice=page.t["security_removed"] if page.request.query_params.get("removed") else None,
        )

    @security_page
    def security_change(page: SecurityPage) -> Response:
        """Remove a factor, or make new recovery codes."""
        action = page.request.url.path.rsplit("/", 1)[-1]
        person_id, address = page.live.person_id, page.address
        if action == "remove":
            gateway.mfa.remove(person_id, str(page.form.get("factor", "")), address=address)
            return RedirectResponse("/security?removed=1", status_code=303)
        if action == "recovery-codes" and gateway.mfa.factors(person_id):
            codes = gateway.mfa.new_recovery_codes(person_id, address=address)
            return pages.render(
                page.request, "recovery_codes.html", page.lang, codes=codes, next_url="/security"
            )
        return RedirectResponse("/security", status_code=303)

    @security_page
    def enrol_totp(page: SecurityPage) -> Response:
        """Enrol an authenticator app: the QR code and its key, then a first code to confirm."""
        request, form, live, lang, t = page.request, page.form, page.live, page.lang, page.t
        with gateway.store.session() as db:
            name = account_name(db.get(Person, live.person_id), live.person_id)
        query, _ = carried(request)
        error, status, label = None, 200, t["totp_label_default"]
        if form is None:
            enrolment = gateway.mfa.begin_totp(live.person_id, name)
        else:
            credential = str(form.get("credential", ""))
            label = str(form.get("label", ""))[:128].strip() or label
            outcome = gateway.mfa.confirm_totp(
                live.person_id, credential, str(form.get("code", ""))[:64], label, address=page.address
            )
            if outcome.ok:
                return enrolled(request, lang, live, "otp", page.address)
            found = gateway.mfa.pending_totp(live.person_id, credential, name)
            enrolment = found or gateway.mfa.begin_totp(live.person_id, name)
            if outcome.retry_after:
                error, status = t["mfa_throttled"].format(seconds=outcome.retry_after), 429
            else:
                error, status = t["mfa_invalid"], 400
        return pages.render(
            request,
            "totp_enrol.html",
            lang,
            status,
            action="/security/totp" + query,
            csrf=page.csrf,
            credential_id=enrolment.credential_id,
            secret=enrolment.secret,
            uri=enrolment.uri,
            qr_svg=enrolment.qr_svg,
            label=label,
            error=error,
        )

    @security_page
    def enrol_key(page: SecurityPage) -> Response:
        """Register a security key or this device's authenticator (WebAuthn: needs JavaScript)."""
        request, form, live, lang, t = page.request, page.form, page.live, page.lang, page.t
        error, status, label = None, 200, t["key_label_default"]
        if form is not None:
            label = str(form.get("label", ""))[:128].strip() or label
            outcome = gateway.mfa.finish_registration(
                live.sid,
                live.person_id,
                str(form.get("challenge", "")),
                str(form.get("credential", ""))[:20000],
                label,
                address=page.address,
            )
            if outcome.ok and outcome.amr is not None:
                return enrolled(request, lang, live, outcome.amr, page.address)
            error, status = t["mfa_key_invalid"], 400
        with gateway.store.session() as db:
            person = db.get(Person, live.person_id)
        assert person is not None
        name = account_name(person, person.id)
        challenge, options = gateway.mfa.registration_options(live.sid, person, name)
        query, _ = carried(request)
        return pages.render(
            request,
            "webauthn_enrol.html",
            lang,
            status,
            scripts=True,
            action="/security/webauthn" + query,
            csrf=page.csrf,
            challenge=challenge,
            webauthn_options=options,
            label=label,
            error=error,
        )

    app.add_api_route("/security", security, methods=["GET"])
    app.add_api_route("/security/remove", security_change, methods=["POST"])
    app.add_api_route("/security/recovery-codes", security_change, methods=["POST"])
    app.add_api_route("/security/totp", enrol_totp, methods=["GET", "POST"])
    app.add_api_route("/security/webauthn", enrol_key, methods=["GET", "POST"])

    # -- logout ---------------------------------------------------------------------------------------

    @app.api_route("/logout", methods=["GET", "POST"])
    async def logout(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        cookie = request.cookies.get(SESSION_COOKIE)

        def run() -> Response:
            oreq.browser_session = gateway.sessions.current(cookie)
            lang = pages.locale(request, dict(oreq.payload.data))
            t = MESSAGES[lang]
            try:
                validated = server.validate_endpoint_request("end_session", oreq)
            except OAuth2Error as error:  # never redirect on an invalid logout request
                return pages.message(
                    request,
                    lang,
                    t["error_heading"],
                    t["error_invalid_request"].format(detail=error.description or error.error),
                    400,
                )
            if validated.needs_confirmation:
                if oreq.browser_session is None:
                    return pages.message(request, lang, t["logout_heading"], t["logged_out"])
                if request.method == "GET" or not hmac.compare_digest(
                    session_csrf(cookie), oreq.form.get("csrf_token", "")
                ):
                    params = [(k, v) for k, v in oreq.payload.data.items() if k != "csrf_token"]
                    return pages.render(
                        request, "logout_confirm.html", lang, csrf=session_csrf(cookie), params=params
                    )
            result = server.create_endpoint_response("end_session", validated)
            if result is not None:
                response = to_response(result)
            else:
                response = pages.message(request, lang, t["logout_heading"], t["logged_out"])
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response

        response = await run_in_threadpool(run)
        wake.set()
        return response

    return app


def create_app_from_environment() -> FastAPI:
    """The application `ght gateway serve` runs in each worker: settings from $GHT_CONFIG and GHT_*."""
    settings = load_settings()
    return create_app(Gateway(settings, serving_store(settings.database_url)), threads=SERVE_THREADS)
