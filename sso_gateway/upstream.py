"""Signing in at an upstream OpenID provider: the group's Entra ID tenant, or Pro Sante Connect (PSC).

Each provider is `[gateway.upstream.<name>]` in ght.toml (`UpstreamProviderSettings`); its endpoints
come from the issuer's discovery document. The gateway is an ordinary confidential client of it
(Authlib's OAuth2 client): authorization code with PKCE (S256), `state` and `nonce`.

- **state**: 256 random bits, single use, bound to the browser (its binding cookie) and to the pending
  authorization it continues. The database holds only its SHA-256 digest (`UpstreamState`); the PKCE
  verifier and the nonce are HMACs of the state under a key derived from the key-encryption key, so
  neither the table nor a leaked callback URL is enough to redeem the code.
- **iss** (RFC 9207, mix-up defence): an `iss` in the authorization response must be the provider's
  issuer; it is required when the provider's metadata says `authorization_response_iss_parameter_supported`.
- **ID token**: signature (the provider's JWKS, asymmetric algorithms only), `iss`, `aud`/`azp`, `exp`,
  `iat`, `nonce`. PSC's identity traits come from userinfo (JSON, or a signed JWT), whose `sub` must be
  the ID token's.

Linking to the territorial person:
- Entra ID: the `oid` the Entra export stored for the person (`azure_export_state.object_id`), else the
  `employeeId` it wrote there; `tid` must be `tenant_id` when configured.
- PSC: `SubjectNameID` is the idNat_PS: "8" + RPPS (or "0" + ADELI), matched against the directory.
- Nobody found: refused with a page that says so. Only for PSC with `admit_external`, the professional
  is admitted as an **external professional**: a `person` row of status `external` (no account, no
  affiliation, so no sync, no Entra export and no password sign-in ever touches it; a later sync that
  brings the same RPPS creates the territorial person, who then wins the link), linked here with
  `external_role`. Such a person signs in only to `external_clients` and gets no gateway session cookie
  (no single sign-on into other applications: each one goes through PSC again). Tokens say
  `external: true` and `roles: [external_role]` (CLAIMS.md).

The upstream's `amr` and `acr` become the session's (`assurance.acr_for`: PSC `eidas1` is substantial).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authlib.integrations.requests_client import OAuth2Session
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings, UpstreamProviderSettings
from directory_sync.store import Person, PersonStatus, Store, utcnow
from directory_sync.store.models import ExportState, ExportStatus

from .assurance import acr_for
from .audit import record_event
from .models import UpstreamIdentity, UpstreamState
from .sessions import aware, digest

log = logging.getLogger("sso_gateway.upstream")

STATE_LIFETIME = 10 * 60  # seconds a person may spend at the upstream provider
METADATA_CACHE = 300.0  # seconds discovery and JWKS are kept
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
CLOCK_SKEW = 120
LABELS = {"pro_sante_connect": "Pro Santé Connect", "entra_id": "Entra ID"}


class UpstreamFailure(Exception):
    """A sign-in the upstream path refuses; `reason` goes to the audit trail, never to the person."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class UpstreamSignIn:
    """What an upstream callback came to: a person to start a session for, or a failure."""

    provider: str
    label: str
    pending_id: str | None = None
    person_id: str | None = None
    external: bool = False
    amr: list[str] = field(default_factory=list)
    upstream_acr: str | None = None
    acr: str | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.person_id is not None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class UpstreamProvider:
    """One configured provider: discovery, the authorization URL, the code redeemed, the ID token checked."""

    def __init__(self, name: str, settings: UpstreamProviderSettings, redirect_uri: str) -> None:
        self.name = name
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.issuer = settings.issuer
        self.label = settings.label or LABELS[settings.kind]
        self._lock = threading.Lock()
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, KeySet] | None = None

    # -- HTTP -----------------------------------------------------------------------------------------

    def _verify(self) -> bool | str:
        return str(self.settings.ca_file) if self.settings.ca_file else True

    def _client(self) -> OAuth2Session:
        client = OAuth2Session(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret.read(),
            token_endpoint_auth_method=self.settings.token_endpoint_auth_method,
            scope=self.settings.effective_scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            default_timeout=self.settings.timeout,
        )
        client.verify = self._verify()
        return client

    def _get(self, url: str, **headers: str) -> Any:
        with self._client() as client:
            response = client.get(url, headers=headers, withhold_token=True)
        response.raise_for_status()
        return response

    def metadata(self) -> dict[str, Any]:
        """The discovery document (cached); its `issuer` must be the configured one."""
        with self._lock:
            if self._metadata and time.monotonic() - self._metadata[0] < METADATA_CACHE:
                return self._metadata[1]
        data = self._get(f"{self.issuer}/.well-known/openid-configuration").json()
        if not isinstance(data, dict) or data.get("issuer") != self.issuer:
            raise UpstreamFailure("metadata_issuer_mismatch", str(data.get("issuer")))
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(key), str):
                raise UpstreamFailure("metadata_incomplete", key)
        with self._lock:
            self._metadata = (time.monotonic(), data)
        return data

    def keys(self, refresh: bool = False) -> KeySet:
        with self._lock:
            if not refresh and self._jwks and time.monotonic() - self._jwks[0] < METADATA_CACHE:
                return self._jwks[1]
        keys = KeySet.import_key_set(self._get(self.metadata()["jwks_uri"]).json())
        with self._lock:
            self._jwks = (time.monotonic(), keys)
        return keys

    # -- the flow -------------------------------------------------------------------------------------

    def authorization_url(self, state: str, nonce: str, verifier: str, extra: dict[str, str]) -> str:
        params = dict(extra)
        if acr := self.settings.effective_acr_values:
            params["acr_values"] = acr
        with self._client() as client:
            url, _ = client.create_authorization_url(
                self.metadata()["authorization_endpoint"],
                state=state,
                nonce=nonce,
                code_verifier=verifier,
                **params,
            )
        return str(url)

    def redeem(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """The code for tokens; returns the checked ID token's claims, with userinfo's for PSC."""
        metadata = self.metadata()
        try:
            with self._client() as client:
                token = client.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=verifier,
                )
        except Exception as exc:  # the provider refused the code, or could not be reached
            raise UpstreamFailure("token_error", f"{type(exc).__name__}: {exc}") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamFailure("id_token_missing")
        claims = self.check_id_token(id_token, nonce)
        if self.settings.kind == "pro_sante_connect" and metadata.get("userinfo_endpoint"):
            info = self.userinfo(metadata["userinfo_endpoint"], str(token.get("access_token", "")))
            if info.get("sub") != claims["sub"]:
                raise UpstreamFailure("userinfo_sub_mismatch")
            claims = {**info, **claims}
        return claims

    def _decode(self, value: str) -> dict[str, Any]:
        algorithms = [
            a
            for a in self.metadata().get("id_token_signing_alg_values_supported", ["RS256"])
            if a in ASYMMETRIC_ALGS
        ] or ["RS256"]
        try:
            try:
                token = jwt.decode(value, self.keys(), algorithms=algorithms)
            except (JoseError, ValueError):  # a key rotated since the JWKS was cached: once more
                token = jwt.decode(value, self.keys(refresh=True), algorithms=algorithms)
        except (JoseError, ValueError) as exc:
            raise UpstreamFailure("id_token_invalid", f"signature: {type(exc).__name__}") from None
        return dict(token.claims)

    def check_id_token(self, value: str, nonce: str) -> dict[str, Any]:
        claims = self._decode(value)
        now = int(time.time())
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        problems = [
            ("iss", claims.get("iss") != self.issuer),
            ("aud", self.settings.client_id not in audiences),
            ("azp", len(audiences) > 1 and claims.get("azp") != self.settings.client_id),
            ("exp", not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - CLOCK_SKEW),
            ("iat", not isinstance(claims.get("iat"), int | float) or claims["iat"] > now + CLOCK_SKEW),
            ("sub", not isinstance(claims.get("sub"), str) or not claims["sub"]),
        ]
        for name, bad in problems:
            if bad:
                raise UpstreamFailure("id_token_invalid", name)
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
            raise UpstreamFailure("nonce_mismatch")
        return claims

    def userinfo(self, endpoint: str, access_token: str) -> dict[str, Any]:
        try:
            response = self._get(endpoint, Authorization=f"Bearer {access_token}")
        except Exception as exc:
            raise UpstreamFailure("userinfo_error", f"{type(exc).__name__}") from None
        if response.headers.get("content-type", "").split(";")[0].strip() == "application/jwt":
            info = self._decode(response.text)  # a signed userinfo: its issuer and audience too
            aud = info.get("aud")
            if info.get("iss") != self.issuer or self.settings.client_id not in (
                aud if isinstance(aud, list) else [aud]
            ):
                raise UpstreamFailure("userinfo_invalid")
            return info
        data = response.json()
        if not isinstance(data, dict):
            raise UpstreamFailure("userinfo_invalid")
        return data


def _amr(value: Any) -> list[str]:
    """The upstream's `amr`, kept only if it is a short list of short strings."""
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and 0 < len(v) <= 32][:8]


def psc_national_ids(claims: dict[str, Any]) -> tuple[str | None, str | None]:
    """The RPPS (or ADELI) of a Pro Sante Connect identity, from its idNat_PS.

    `SubjectNameID` is the idNat_PS ("8" + the 11-digit RPPS, "0" + the 9-digit ADELI); `SubjectRefPro`
    may carry it too (`idNatPS`), as may `preferred_username`. It comes from the national registry
    through PSC: its form is checked, it is compared exactly with the directory's values.
    """
    ref = claims.get("SubjectRefPro")
    candidates = [claims.get("SubjectNameID")]
    if isinstance(ref, dict):
        candidates += [ref.get("idNatPS"), ref.get("idNat_PS")]
    candidates.append(claims.get("preferred_username"))
    for value in candidates:
        if not isinstance(value, str) or not value.isascii() or not value.isdigit():
            continue
        if len(value) == 12 and value.startswith("8"):
            return value[1:], None
        if len(value) == 10 and value.startswith("0"):
            return None, value[1:]
    return None, None


class Upstream:
    """Every configured upstream provider, the pending upstream sign-ins, and the identity links."""

    def __init__(self, store: Store, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings
        self.providers = {
            name: UpstreamProvider(name, conf, f"{settings.issuer}/upstream/{name}/callback")
            for name, conf in settings.upstream.items()
        }
        self._key: bytes | None = None

    def buttons(self, client_id: str | None) -> list[tuple[str, str]]:
        """(name, label) of each provider offered to this client, in the configuration's order."""
        return [(name, p.label) for name, p in self.providers.items() if self.offered(name, client_id)]

    def offered(self, name: str, client_id: str | None) -> bool:
        """Is provider `name` offered to this client (its `clients`, or every client if none listed)?"""
        provider = self.providers.get(name)
        if provider is None:
            return False
        allowed = provider.settings.clients
        return not allowed or client_id in allowed

    # -- state, verifier, nonce -----------------------------------------------------------------------

    def _derive(self, purpose: str, state: str) -> str:
        if self._key is None:
            self._key = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=b"ght-gateway/kek", info=b"upstream-state"
            ).derive(self.settings.key_encryption_key.read().encode())
        return _b64(hmac.new(self._key, f"{purpose}:{state}".encode(), hashlib.sha256).digest())

    def begin(self, name: str, pending_id: str, params: dict[str, str], browser: str) -> str:
        """A new upstream sign-in for this pending authorization: the URL to send the browser to."""
        provider = self.providers[name]
        state = secrets.token_urlsafe(32)
        extra: dict[str, str] = {}
        if "login" in params.get("prompt", "").split():
            extra["prompt"] = "login"
        if params.get("max_age", "").isdigit():
            extra["max_age"] = params["max_age"]
        url = provider.authorization_url(
            state, self._derive("nonce", state), self._derive("pkce", state), extra
        )
        now = utcnow()
        with self.store.session() as session:
            session.execute(delete(UpstreamState).where(col(UpstreamState.expires_at) < now))
            session.add(
                UpstreamState(
                    state_hash=digest(state),
                    provider=name,
                    pending_id=pending_id,
                    browser_hash=digest(browser),
                    created_at=now,
                    expires_at=now + timedelta(seconds=STATE_LIFETIME),
                )
            )
            session.commit()
        return url

    def _consume(self, session: Session, name: str, state: str, browser: str | None) -> UpstreamState:
        """The state's row, marked used in the same statement that checks it was not (single use)."""
        now = utcnow()
        used = session.execute(
            update(UpstreamState)
            .where(
                col(UpstreamState.state_hash) == digest(state),
                col(UpstreamState.provider) == name,
                col(UpstreamState.used_at).is_(None),
            )
            .values(used_at=now)
        )
        session.commit()
        row = session.get(UpstreamState, digest(state))
        if row is None or row.provider != name:
            raise UpstreamFailure("state_unknown")
        if getattr(used, "rowcount", 0) != 1:
            raise UpstreamFailure("state_replayed")
        if aware(row.expires_at) <= now:
            raise UpstreamFailure("state_expired")
        if not browser or not hmac.compare_digest(row.browser_hash, digest(browser)):
            raise UpstreamFailure("state_other_browser")
        return row

    # -- the callback ---------------------------------------------------------------------------------

    def finish(
        self,
        name: str,
        query: dict[str, str],
        browser: str | None,
        address: str,
        client_of: Any = None,
    ) -> UpstreamSignIn:
        """Check the authorization response, redeem the code, link the person; audited either way.

        `client_of(pending_id)` gives the client id of the pending authorization (None: none).
        """
        provider = self.providers[name]
        result = UpstreamSignIn(provider=name, label=provider.label)
        claims: dict[str, Any] = {}
        with self.store.session() as session:
            try:
                state = query.get("state")
                if not state:
                    raise UpstreamFailure("state_missing")
                row = self._consume(session, name, state, browser)
                result.pending_id = row.pending_id
                iss = query.get("iss")
                if iss is not None and iss != provider.issuer:
                    raise UpstreamFailure("iss_mismatch", iss[:200])
                if iss is None and provider.metadata().get("authorization_response_iss_parameter_supported"):
                    raise UpstreamFailure("iss_missing")
                if "error" in query:
                    raise UpstreamFailure("upstream_error", query["error"][:64])
                code = query.get("code")
                if not code:
                    raise UpstreamFailure("code_missing")
                claims = provider.redeem(code, self._derive("pkce", state), self._derive("nonce", state))
                client_id = client_of(row.pending_id) if client_of else None
                person, linked_by, external = self._link(session, provider, claims, client_id)
                result.person_id, result.external = person.id, external
                result.amr = _amr(claims.get("amr"))
                acr = claims.get("acr")
                result.upstream_acr = acr if isinstance(acr, str) else None
                result.acr = acr_for(result.amr, result.upstream_acr, self.settings)
                record_event(
                    session,
                    "signin",
                    person_id=person.id,
                    address=address,
                    client_id=client_id,
                    method="upstream",
                    provider=name,
                    linked_by=linked_by,
                    external=external or None,
                    amr=result.amr,
                    upstream_acr=result.upstream_acr,
                    acr=result.acr,
                )
            except UpstreamFailure as failure:
                session.rollback()
                result.failure = failure.reason
                result.person_id = None
                record_event(
                    session,
                    "signin_failed",
                    person_id=None,
                    address=address,
                    method="upstream",
                    provider=name,
                    reason=failure.reason,
                    detail=failure.detail or None,
                    upstream_sub=str(claims.get("sub", ""))[:255] or None,
                )
            except Exception as exc:  # the provider is down or answered nonsense: refused, audited
                log.warning("upstream %s sign-in failed: %s", name, type(exc).__name__)
                session.rollback()
                result.failure = "upstream_unavailable"
                result.person_id = None
                record_event(
                    session,
                    "signin_failed",
                    address=address,
                    method="upstream",
                    provider=name,
                    reason="upstream_unavailable",
                    detail=type(exc).__name__,
                )
            session.commit()
        return result

    # -- linking --------------------------------------------------------------------------------------

    def _link(
        self, session: Session, provider: UpstreamProvider, claims: dict[str, Any], client_id: str | None
    ) -> tuple[Person, str, bool]:
        conf = provider.settings
        if conf.kind == "entra_id":
            person, linked_by, subject = self._entra_person(session, conf, claims)
            external = False
        else:
            person, linked_by, subject = self._psc_person(session, provider, claims)
            external = person.status == PersonStatus.EXTERNAL
        if external:
            if client_id is None or client_id not in conf.external_clients:
                raise UpstreamFailure("external_client_not_allowed", client_id or "-")
        elif person.status != PersonStatus.ACTIVE:
            raise UpstreamFailure("person_not_active")
        now = utcnow()
        link = session.execute(
            select(UpstreamIdentity).where(
                col(UpstreamIdentity.provider) == provider.name, col(UpstreamIdentity.subject) == subject
            )
        ).scalar_one_or_none()
        if link is None or link.person_id != person.id:
            record_event(
                session,
                "upstream_linked",
                person_id=person.id,
                provider=provider.name,
                linked_by=linked_by,
                previous=link.person_id if link else None,
                reason=f"{provider.name} identity linked by {linked_by}",
            )
        link = link or UpstreamIdentity(
            provider=provider.name, subject=subject, person_id=person.id, linked_by=linked_by
        )
        link.person_id, link.linked_by, link.external, link.last_seen_at = person.id, linked_by, external, now
        link.role = conf.external_role if external else None
        session.add(link)
        return person, linked_by, external

    def _entra_person(
        self, session: Session, conf: UpstreamProviderSettings, claims: dict[str, Any]
    ) -> tuple[Person, str, str]:
        if conf.tenant_id and claims.get("tid") != conf.tenant_id:
            raise UpstreamFailure("tenant_mismatch", str(claims.get("tid"))[:64])
        oid = claims.get("oid")
        live = col(ExportState.status) != ExportStatus.DELETED
        found: list[str] = []
        linked_by = "oid"
        if isinstance(oid, str) and oid:
            found = list(
                session.execute(
                    select(col(ExportState.person_id)).where(col(ExportState.object_id) == oid, live)
                ).scalars()
            )
        employee_id = claims.get("employeeId", claims.get("employeeid"))
        if not found and isinstance(employee_id, str) and employee_id:
            linked_by = "employeeId"
            found = list(
                session.execute(
                    select(col(ExportState.person_id)).where(
                        col(ExportState.employee_id) == employee_id, live
                    )
                ).scalars()
            )
        if len(found) > 1:
            raise UpstreamFailure("ambiguous", linked_by)
        person = session.get(Person, found[0]) if found else None
        if person is None:
            raise UpstreamFailure("no_person", linked_by)
        return person, linked_by, oid if isinstance(oid, str) and oid else str(claims["sub"])

    def _psc_person(
        self, session: Session, provider: UpstreamProvider, claims: dict[str, Any]
    ) -> tuple[Person, str, str]:
        conf = provider.settings
        subject = str(claims["sub"])
        rpps, adeli = psc_national_ids(claims)
        if rpps is None and adeli is None:
            raise UpstreamFailure("no_national_id")
        linked_by = "rpps" if rpps else "adeli"
        key = col(Person.rpps) == rpps if rpps else col(Person.adeli) == adeli
        people = list(
            session.execute(
                select(Person).where(
                    key, col(Person.status).not_in([PersonStatus.EXTERNAL, PersonStatus.MERGED])
                )
            ).scalars()
        )
        if len(people) > 1:
            raise UpstreamFailure("ambiguous", linked_by)
        if people:
            return people[0], linked_by, subject
        if not conf.admit_external:
            raise UpstreamFailure("no_person", linked_by)
        external = session.execute(
            select(Person).where(key, col(Person.status) == PersonStatus.EXTERNAL).limit(1)
        ).scalar_one_or_none()
        if external is None:
            family = claims.get("family_name")
            given = claims.get("given_name")
            external = Person(
                family_name=str(family)[:200] if family else "?",
                given_name=str(given)[:200] if given else None,
                rpps=rpps,
                adeli=adeli,
                status=PersonStatus.EXTERNAL,
                provenance={"source": f"upstream:{provider.name}", "admitted": "external professional"},
            )
            session.add(external)
            session.flush()
            record_event(
                session,
                "external_admitted",
                person_id=external.id,
                provider=provider.name,
                role=conf.external_role,
                reason=f"unknown to the directory, admitted by {provider.name} (admit_external)",
            )
        return external, "external", subject


__all__ = ["Upstream", "UpstreamFailure", "UpstreamProvider", "UpstreamSignIn"]
