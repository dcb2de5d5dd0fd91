"""The FastAPI adapter: HTTP in, `GatewayRequest` to the core, `OAuthResponse` back out; the sign-in pages.

The protocol lives in `sso_gateway.oauth` (Authlib); this module only moves values between Starlette
and the core, and renders the pages a person sees: sign-in, site picker, logout. Pages are plain HTML
forms (no JavaScript), in French or English, with a CSRF token bound to the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
from authlib.oauth2.rfc6749 import OAuth2Error
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from directory_sync.config import load_settings
from directory_sync.store import Affiliation, Site

from ..gateway import SERVE_THREADS, Gateway, serving_store
from ..models import BrowserSession, PendingAuthorization, SiteChoice
from ..oauth import AuthenticatedUser, GatewayRequest, OAuthResponse
from ..oauth.tokens import epoch
from ..sessions import digest
from .i18n import MESSAGES, pick_locale

log = logging.getLogger("sso_gateway.web")
HERE = Path(__file__).parent
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


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def oauth_request(request: Request, gateway: Gateway) -> GatewayRequest:
    """The core's view of an HTTP request; its URI is built on the configured issuer."""
    form: list[tuple[str, str]] = []
    if request.method == "POST":
        data = await request.form()
        form = [(k, v) for k, v in data.multi_items() if isinstance(v, str)]
    query = list(request.query_params.multi_items())
    uri = gateway.issuer + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return GatewayRequest(
        request.method, uri, request.headers, query=query, form=form, address=_address(request)
    )


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
        self, request: Request, name: str, lang: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        other = "en" if lang == "fr" else "fr"
        query = {k: v for k, v in request.query_params.items() if k != "lang"}
        switch_url = f"{request.url.path}?{urlencode({**query, 'lang': other})}"
        response = self.templates.TemplateResponse(
            request,
            name,
            {"lang": lang, "t": MESSAGES[lang], "switch_url": switch_url, **context},
            status_code=status,
            headers=PAGE_HEADERS,
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

    app = FastAPI(
        title="GHT OIDC gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.gateway = gateway

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

    # -- token, userinfo, introspection, revocation --------------------------------------------------

    @app.post("/token")
    async def token(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        return to_response(await run_in_threadpool(server.create_token_response, oreq))

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

    def authorize_request(params: dict[str, str], address: str) -> GatewayRequest:
        query = list(params.items())
        return GatewayRequest(
            "GET", f"{gateway.issuer}/authorize?{urlencode(query)}", {}, query=query, address=address
        )

    def site_choices(person_id: str) -> list[tuple[Affiliation, Site | None]]:
        with gateway.store.session() as session:
            return gateway.claims.sites_offered(session, person_id)

    def continue_authorization(
        request: Request,
        oreq: GatewayRequest,
        browser_session: BrowserSession | None,
        *,
        fresh: bool,
        pending: PendingAuthorization | None,
        browser: str,
    ) -> Response:
        """Decide what the person sees next: the sign-in form, the site picker, or the application."""
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
        if user is None:
            pending = pending or gateway.save_pending(params, browser)
            return RedirectResponse(f"/login?{urlencode({'request': pending.id})}", status_code=303)
        choices = site_choices(user.person_id)
        codes = [a.site for a, _ in choices]
        site = user.current_site if user.current_site in codes else None
        asked = params.get("site")
        if asked in codes:
            site = asked
        elif len(codes) == 1:
            site = codes[0]
        wants_picker = "select_account" in prompt or (asked is not None and asked not in codes)
        if (site is None or wants_picker) and len(codes) > 1:
            if "none" in prompt:
                site = site or codes[0]  # no interaction allowed: the last choice, else the home site
            else:
                pending = pending or gateway.save_pending(params, browser)
                return RedirectResponse(f"/select-site?{urlencode({'request': pending.id})}", status_code=303)
        if site and site != user.current_site:
            gateway.sessions.set_site(user.sid, user.person_id, site)
        grant_user = AuthenticatedUser(
            person_id=user.person_id,
            sid=user.sid,
            auth_time=epoch(user.auth_time),
            amr=list(user.amr),
            current_site=site,
        )
        result = server.create_authorization_response(oreq, grant_user=grant_user, grant=grant)
        if pending is not None:
            gateway.drop_pending(pending.id)
        return to_response(result)

    def with_browser_cookie(response: Response, browser: str, new: bool) -> Response:
        if new:
            set_cookie(response, BROWSER_COOKIE, browser, max_age=30 * 86400)
        return response

    @app.api_route("/authorize", methods=["GET", "POST"])
    async def authorize(request: Request) -> Response:
        oreq = await oauth_request(request, gateway)
        browser, new = browser_of(request)

        def run() -> Response:
            session = gateway.sessions.current(request.cookies.get(SESSION_COOKIE))
            return continue_authorization(request, oreq, session, fresh=False, pending=None, browser=browser)

        return with_browser_cookie(await run_in_threadpool(run), browser, new)

    # -- sign-in ----------------------------------------------------------------------------------

    def expired(request: Request, lang: str) -> HTMLResponse:
        t = MESSAGES[lang]
        return pages.message(request, lang, t["error_heading"], t["error_expired"], 400)

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
            lang = pages.locale(request, pending.params)
            return pages.render(
                request,
                "login.html",
                lang,
                action=f"/login?{urlencode({'request': pending.id})}",
                csrf=pending.csrf,
                login="",
                error=None,
                client_name=client_name(pending.params),
            )

        return with_browser_cookie(await run_in_threadpool(run), browser, new)

    @app.post("/login")
    async def login_submit(request: Request) -> Response:
        form = await request.form()
        login = str(form.get("login", ""))[:256]
        password = str(form.get("password", ""))
        csrf = str(form.get("csrf_token", ""))
        browser = request.cookies.get(BROWSER_COOKIE)
        address = _address(request)

        def run() -> Response:
            pending = gateway.pending(request.query_params.get("request"), browser)
            lang = pages.locale(request, pending.params if pending else None)
            t = MESSAGES[lang]
            if pending is None or not hmac.compare_digest(pending.csrf, csrf):
                return pages.message(request, lang, t["error_heading"], t["error_csrf"], 403)
            result = gateway.signin(login, password, address)
            if not result.ok:
                message = (
                    t["throttled"].format(seconds=result.retry_after) if result.retry_after else t["invalid"]
                )
                return pages.render(
                    request,
                    "login.html",
                    lang,
                    401 if not result.retry_after else 429,
                    action=f"/login?{urlencode({'request': pending.id})}",
                    csrf=pending.csrf,
                    login=login,
                    error=message,
                    client_name=client_name(pending.params),
                )
            assert result.person is not None and browser is not None
            choices = site_choices(result.person.id)
            site = choices[0][0].site if len(choices) == 1 else None
            record, cookie = gateway.sessions.start(result.person.id, result.amr, site)
            if pending.params:
                response = continue_authorization(
                    request, authorize_request(pending.params, address), record, fresh=True, pending=pending,
                    browser=browser,
                )  # fmt: skip
            else:
                gateway.drop_pending(pending.id)
                response = RedirectResponse("/site" if len(choices) > 1 else "/", status_code=303)
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
        address = _address(request)

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
            return continue_authorization(
                request,
                authorize_request(params, address),
                session,
                fresh=True,
                pending=pending,
                browser=browser,
            )

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
                request, lang, t["signed_in"], message, link_url="/site", link_text=t["change_site"]
            )

        return await run_in_threadpool(run)

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
