"""A small relying party, for the demo and the browser tests: sign in through the gateway, show the claims.

It does what any application of the group would: authorization code with PKCE, state and nonce; the
code redeemed with its client secret; the ID token checked against the gateway's JWKS (issuer,
audience, nonce, expiry); logout through the gateway's end-session endpoint; and a back-channel
logout endpoint that verifies the logout token and ends its own local session. Sessions are kept in
memory: it is a sample, not a framework.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class SampleState:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)
    logouts: list[dict[str, Any]] = field(default_factory=list)


def create_sample_app(
    *, issuer: str, client_id: str, client_secret: str, base_url: str, title: str = "Application exemple"
) -> FastAPI:
    """A relying party registered at `issuer` as `client_id`, served at `base_url`."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    cookie_name = f"session_{client_id}"  # apps on one host (other ports) must not share a cookie
    state = SampleState()
    app.state.sample = state
    http = httpx.Client(timeout=10)

    def metadata() -> dict[str, Any]:
        return dict(http.get(f"{issuer}/.well-known/openid-configuration").json())

    def keys() -> KeySet:
        return KeySet.import_key_set(http.get(metadata()["jwks_uri"]).json())

    def page(body: str) -> HTMLResponse:
        return HTMLResponse(
            f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
        )

    @app.get("/")
    def home(request: Request) -> Response:
        session = state.sessions.get(request.cookies.get(cookie_name, ""))
        if session is None:
            return page(
                '<p>Vous n\'êtes pas connecté(e).</p><p><a id="login" href="/login">Se connecter</a></p>'
            )
        claims = session["claims"]
        rows = "".join(
            f"<tr><th scope='row'>{html.escape(k)}</th>"
            f"<td><code>{html.escape(json.dumps(v, ensure_ascii=False))}</code></td></tr>"
            for k, v in claims.items()
        )
        return page(
            f"<p id='who'>Connecté(e) : {html.escape(str(claims.get('name', claims['sub'])))}, "
            f"à <span id='site'>{html.escape(str(claims.get('current_site', '')))}</span></p>"
            f"<table><caption>Jeton d'identité (ID token) décodé</caption>{rows}</table>"
            '<p><a id="switch" href="/login?prompt=select_account">Changer d\'établissement</a> · '
            '<a id="logout" href="/logout">Se déconnecter</a></p>'
        )

    @app.get("/login")
    def login(prompt: str | None = None) -> RedirectResponse:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        flow = {"verifier": verifier, "nonce": secrets.token_urlsafe(16)}
        flow_state = secrets.token_urlsafe(16)
        state.pending[flow_state] = flow
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": f"{base_url}/callback",
            "scope": "openid profile email health",
            "state": flow_state,
            "nonce": flow["nonce"],
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if prompt:
            params["prompt"] = prompt
        return RedirectResponse(
            f"{metadata()['authorization_endpoint']}?{urlencode(params)}", status_code=303
        )

    @app.get("/callback")
    def callback(request: Request) -> Response:
        query = request.query_params
        flow = state.pending.pop(query.get("state", ""), None)
        if flow is None or query.get("iss") != issuer:
            return page("<p role='alert'>Réponse d'autorisation inattendue.</p>")
        if "code" not in query:
            return page(f"<p role='alert'>Refusé : {html.escape(query.get('error', '?'))}</p>")
        response = http.post(
            metadata()["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": f"{base_url}/callback",
                "code_verifier": flow["verifier"],
            },
            auth=(client_id, client_secret),
        )
        tokens = response.json()
        try:
            claims = dict(jwt.decode(tokens["id_token"], keys()).claims)
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": client_id},
                nonce={"essential": True, "value": flow["nonce"]},
                exp={"essential": True},
            ).validate(claims)
        except (JoseError, KeyError) as exc:
            return page(f"<p role='alert'>Jeton refusé : {html.escape(type(exc).__name__)}</p>")
        local = secrets.token_urlsafe(24)
        state.sessions[local] = {"claims": claims, "id_token": tokens["id_token"], "sid": claims.get("sid")}
        redirect = RedirectResponse("/", status_code=303)
        redirect.set_cookie(cookie_name, local, httponly=True, samesite="lax")
        return redirect

    @app.get("/logout")
    def logout(request: Request) -> Response:
        session = state.sessions.pop(request.cookies.get(cookie_name, ""), None)
        params = {"post_logout_redirect_uri": f"{base_url}/", "client_id": client_id}
        if session:
            params["id_token_hint"] = session["id_token"]
        redirect = RedirectResponse(
            f"{metadata()['end_session_endpoint']}?{urlencode(params)}", status_code=303
        )
        redirect.delete_cookie(cookie_name)
        return redirect

    @app.post("/backchannel-logout")
    def backchannel_logout(logout_token: str = Form(...)) -> Response:
        try:
            token = jwt.decode(logout_token, keys())
            claims = dict(token.claims)
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": client_id},
                exp={"essential": True},
            ).validate(claims)
        except JoseError:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if token.header.get("typ") != "logout+jwt" or BACKCHANNEL_EVENT not in claims.get("events", {}):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if "nonce" in claims:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        ended = [k for k, s in state.sessions.items() if s["sid"] == claims.get("sid")]
        for key in ended:
            del state.sessions[key]
        state.logouts.append({"sid": claims.get("sid"), "sub": claims.get("sub"), "ended": len(ended)})
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    @app.get("/backchannel-logouts")
    def logouts() -> list[dict[str, Any]]:
        """What this application was told (for the tests and the curious)."""
        return state.logouts

    return app
