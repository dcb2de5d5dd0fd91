"""A fake of Entra ID's token endpoint and of Microsoft Graph's directory API, served over real HTTPS.

Microsoft's cloud cannot be reached from the test machines, so the export is tested against this
server: a threaded HTTPS server on 127.0.0.1 (random port, certificate from a throw-away test CA) that
MSAL and httpx talk to exactly as they would to login.microsoftonline.com and graph.microsoft.com.
It follows Microsoft's documentation for what the export relies on, and is strict where Graph is.

What it models:

- **Token endpoint (v2)**: `/{tenant}/v2.0/.well-known/openid-configuration` (MSAL's tenant discovery;
  an unknown tenant gets 400 `invalid_tenant` AADSTS90002) and `/{tenant}/oauth2/v2.0/token` for the
  client-credentials grant, with a client secret or a certificate (a client assertion signed PS256 or
  RS256, found by its `x5t#S256` / `x5t` thumbprint, audience and lifetime checked). Errors carry
  Entra's bodies: AADSTS7000215 (wrong secret), AADSTS700016 (unknown app), AADSTS700027 (assertion /
  certificate), AADSTS1002012 (scope), AADSTS90002 (tenant). Tokens are JWTs (HS256, the fake's key)
  carrying the app's `roles`, with a configurable lifetime.
- **Graph authorization**: a missing, forged or expired token gets 401 `InvalidAuthenticationToken`;
  a token without a suitable application permission (`User.Read(Write).All`, `Group.Read(Write).All`,
  `GroupMember.Read(Write).All`, `Directory.*`) gets 403 `Authorization_RequestDenied`.
- **/v1.0/users**: create (required accountEnabled, displayName, mailNickname, userPrincipalName, and
  passwordProfile unless the UPN's domain is federated, where onPremisesImmutableId is required
  instead; UPN domain must be a verified domain; duplicate UPN -> 400 "Another object with the same
  value for property userPrincipalName already exists."; documented length limits, employeeId <= 16;
  password complexity; unknown properties refused), GET by id or UPN, PATCH (extension attributes
  merged), DELETE (soft: to deleted items, memberships dropped), `$filter` (`eq`, `in`, `startswith`,
  joined by `and` or `or`), `$select` (and Graph's default projection without it, which lacks
  employeeId), `$top` (1..999, default 100) with `@odata.nextLink` / `$skiptoken` paging.
- **/directory/deletedItems**: list deleted users, `POST .../{id}/restore` (refused if the UPN was
  taken meanwhile).
- **/v1.0/groups**: create (security groups: displayName, mailEnabled, mailNickname, securityEnabled;
  `members@odata.bind` up to 20), GET/`$filter`/paging, PATCH (displayName, description,
  `members@odata.bind` up to 20, atomic: one existing member -> 400 "One or more added object
  references already exist for the following modified properties: 'members'."), `/members` (paged),
  `/members/$ref` add and `/members/{id}/$ref` remove (404 when not a member).
- **/v1.0/$batch**: at most 20 requests, each answered with its own status, headers and body, in any
  order (shuffled); `dependsOn` (424 when a dependency failed); Content-Type required with a body.
- **Throttling**: an optional write quota (writes per sliding window, per app and tenant, every
  POST/PATCH/DELETE counting one, inside a batch or not) answering 429 `Retry-After`; accepted writes
  past 80% of the quota carry `x-ms-throttle-limit-percentage`, as Entra's identity service does.
- **Faults**: a fraction of Graph calls (every 1/rate-th call, the kinds taking turns) answer 429 or
  503 before doing anything, or are processed and then answered too late (time-out) or not at all
  (connection dropped); a fraction of requests inside batches, drawn at random (seeded), answer 429
  or 503.

What it does not model: delegated (user) tokens and consent; replication delay (reads see writes at
once); throttling of reads and resource-unit costs (every write costs one); advanced queries
(`ConsistencyLevel: eventual`, `$count`, `$search`, `$orderby`); licences, mail, proxyAddresses, managers,
owners, nested groups, dynamic groups, administrative units; restoring a user's group memberships with
the user; the 30-day purge of deleted items; snapshot-consistent paging (a `$skiptoken` is an offset).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import math
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jwt

from tests.servers.certs import make_test_pki

GRAPH_AUDIENCE = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_BATCH = 20
MAX_TOP = 999
DEFAULT_TOP = 100
ALL_ROLES = ("User.ReadWrite.All", "Group.ReadWrite.All")

Answer = tuple[int, dict[str, str], Any]

_USER_PROPERTIES = {
    "id",
    "accountEnabled",
    "displayName",
    "givenName",
    "surname",
    "mailNickname",
    "userPrincipalName",
    "employeeId",
    "jobTitle",
    "department",
    "companyName",
    "officeLocation",
    "usageLocation",
    "employeeType",
    "mail",
    "onPremisesExtensionAttributes",
    "onPremisesImmutableId",
    "passwordProfile",
    "passwordPolicies",
    "businessPhones",
    "mobilePhone",
    "preferredLanguage",
    "userType",
    "createdDateTime",
    "deletedDateTime",
    "otherMails",
}
_USER_WRITABLE = _USER_PROPERTIES - {"id", "createdDateTime", "deletedDateTime", "mail", "userType"}
_USER_DEFAULT_SELECT = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
_USER_LIMITS = {
    "displayName": 256,
    "givenName": 64,
    "surname": 64,
    "mailNickname": 64,
    "jobTitle": 128,
    "department": 64,
    "companyName": 64,
    "officeLocation": 128,
    "employeeId": 16,
    "employeeType": 64,
    "userPrincipalName": 113,
}
_USER_FILTERABLE = {
    "id",
    "employeeId",
    "userPrincipalName",
    "mail",
    "mailNickname",
    "displayName",
    "accountEnabled",
    "givenName",
    "surname",
}
_GROUP_PROPERTIES = {
    "id",
    "displayName",
    "description",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
    "groupTypes",
    "createdDateTime",
    "mail",
    "visibility",
}
_GROUP_FILTERABLE = {"id", "displayName", "mailNickname", "securityEnabled", "mailEnabled"}
_NICKNAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,64}$")
_REFERENCE = re.compile(r"/(?:directoryObjects|users|groups)/([0-9a-fA-F-]{36})$")
_WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
_UNREGISTERED = (
    "The certificate with identifier used to sign the client assertion is not registered on application."
)


@dataclass
class FakeApp:
    """An app registration: its client id, its credential (secret and/or certificate), its roles."""

    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None
    roles: tuple[str, ...] = ALL_ROLES


@dataclass
class Faults:
    """Which failures to inject, and how often (fractions of calls, 0 to 1)."""

    rate: float = 0.0  # Graph HTTP calls failing as a whole
    kinds: tuple[str, ...] = ("429", "503", "timeout", "drop")
    inner_rate: float = 0.0  # requests inside a $batch answered 429 or 503
    retry_after: int = 1
    timeout_delay: float = 3.0  # a "timeout" holds the (processed) answer this long


@dataclass
class FakeStats:
    http_requests: int = 0
    token_requests: int = 0
    graph_requests: int = 0
    batches: int = 0
    batch_requests: int = 0
    writes: int = 0  # writes accepted (processed) against the quota
    throttled: int = 0  # 429 answers for the quota
    faults: dict[str, int] = field(default_factory=dict)
    largest_batch: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.answer = _error(status, code, message, headers)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {"date": _now_iso(), "request-id": str(uuid.uuid4())},
        }
    }
    return status, dict(headers or {}), body


def _aad_error(status: int, error: str, code: int, text: str, tenant: str) -> tuple[int, dict[str, Any]]:
    trace = str(uuid.uuid4())
    return status, {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {uuid.uuid4()}"
        f"\r\nTimestamp: {_now_iso()}",
        "error_codes": [code],
        "timestamp": _now_iso(),
        "trace_id": trace,
        "correlation_id": str(uuid.uuid4()),
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


def _not_found(key: str) -> _Error:
    return _Error(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def _bad(message: str, code: str = "Request_BadRequest") -> _Error:
    return _Error(400, code, message)


def _same_thumbprint(header: Any, der: bytes, algorithm: str) -> bool:
    """Whether a JWS `x5t` / `x5t#S256` header (base64url, padded or not) is this certificate's."""
    if not isinstance(header, str):
        return False
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except ValueError:
        return False
    return decoded == hashlib.new(algorithm, der).digest()


def _strong_password(password: Any) -> bool:
    if not isinstance(password, str) or not 8 <= len(password) <= 256:
        return False
    kinds = [
        any(c.isupper() for c in password),
        any(c.islower() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    return sum(kinds) >= 3


# --------------------------------------------------------------------------------------------------
# $filter: the small subset of OData the directory supports for these properties.


def _split_top(text: str, word: str) -> list[str]:
    """Split `text` at ` word ` outside quotes and parentheses."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    token = f" {word} "
    while i < len(text):
        char = text[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text[i : i + len(token)].lower() == token:
            parts.append(text[start:i])
            i += len(token)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    raise _bad("Unsupported Query.", "Request_UnsupportedQuery")


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return bool(a == b)


def compile_filter(expression: str, allowed: set[str]) -> Any:
    """A predicate for `$filter`, or a 400 for what the fake (and mostly Graph) does not support."""
    unsupported = _bad("Unsupported Query.", "Request_UnsupportedQuery")
    ors = _split_top(expression, "or")
    ands = _split_top(expression, "and")
    if len(ors) > 1 and len(ands) > 1:
        raise unsupported
    joined, parts = (any, ors) if len(ors) > 1 else (all, ands)
    tests = []
    for part in parts:
        if m := re.fullmatch(r"startswith\(\s*(\w+)\s*,\s*('(?:[^']|'')*')\s*\)", part, re.I):
            prop, prefix = m.group(1), _literal(m.group(2))
            if prop not in allowed:
                raise unsupported
            tests.append(
                lambda o, p=prop, v=prefix: isinstance(o.get(p), str) and o[p].lower().startswith(v.lower())
            )
        elif m := re.fullmatch(r"(\w+)\s+eq\s+(.+)", part, re.I):
            prop, value = m.group(1), _literal(m.group(2))
            if prop not in allowed:
                raise unsupported
            tests.append(lambda o, p=prop, v=value: _values_equal(o.get(p), v))
        elif m := re.fullmatch(r"(\w+)\s+in\s+\((.*)\)", part, re.I):
            prop = m.group(1)
            values = [_literal(v) for v in _split_top(m.group(2).replace(",", " , "), ",") if v.strip()]
            if prop not in allowed or len(values) > 15:
                raise unsupported
            tests.append(lambda o, p=prop, vs=values: any(_values_equal(o.get(p), v) for v in vs))
        else:
            raise unsupported
    return lambda obj: joined(test(obj) for test in tests)


# --------------------------------------------------------------------------------------------------
# The tenant and its API.


class GraphFake:
    """One Entra tenant, its app registrations, and the HTTPS server in front of them."""

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        apps: list[FakeApp] | None = None,
        domains: Mapping[str, bool] | None = None,
        write_quota: tuple[int, float] | None = None,
        faults: Faults | None = None,
        token_lifetime: int = 3599,
        seed: int = 0,
    ) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.apps = {a.client_id: a for a in (apps or [])}
        self.domains = {d.lower(): federated for d, federated in (domains or {"ght-test.fr": False}).items()}
        self.write_quota = write_quota
        self.faults = faults or Faults()
        self.token_lifetime = token_lifetime
        self.stats = FakeStats()
        self.users: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, None]] = {}  # group id -> ordered member ids
        self.passwords: list[str] = []  # every password received, for tests that look for leaks
        self._upn: dict[str, str] = {}
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._writes: deque[float] = deque()
        self._key = uuid.uuid4().hex + uuid.uuid4().hex
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.ca_file: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, workdir: Path) -> GraphFake:
        """Serve on a random 127.0.0.1 port over HTTPS (a fresh test CA in `workdir`)."""
        pki = make_test_pki(workdir / "graph-pki", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        server.ssl_context = context
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        self.ca_file = pki.ca_cert
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="graph-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GraphFake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- seeding and inspecting the tenant (tests) -------------------------------------------------

    def add_user(self, **properties: Any) -> dict[str, Any]:
        """Put a user in the tenant directly (a user made by hand before ght came)."""
        with self._lock:
            user = self._new_user(properties)
            self.users[user["id"]] = user
            self._upn[user["userPrincipalName"].lower()] = user["id"]
            return user

    def add_group(
        self, display_name: str, mail_nickname: str, members: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        with self._lock:
            group = self._new_group(
                {
                    "displayName": display_name,
                    "mailNickname": mail_nickname,
                    "mailEnabled": False,
                    "securityEnabled": True,
                }
            )
            self.members[group["id"]] = dict.fromkeys(members)
            return group

    def user_by_upn(self, upn: str) -> dict[str, Any] | None:
        with self._lock:
            user_id = self._upn.get(upn.lower())
            return self.users.get(user_id) if user_id else None

    def users_by_employee_id(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            index: dict[str, list[dict[str, Any]]] = {}
            for user in self.users.values():
                index.setdefault(user.get("employeeId") or "", []).append(user)
            return index

    def group_by_nickname(self, nickname: str) -> dict[str, Any] | None:
        with self._lock:
            found = [g for g in self.groups.values() if g["mailNickname"].lower() == nickname.lower()]
            assert len(found) <= 1, f"{len(found)} groups share the mailNickname {nickname}"
            return found[0] if found else None

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (as a key rollover or a revoked consent would)."""
        with self._lock:
            self._key = uuid.uuid4().hex + uuid.uuid4().hex

    def member_ids(self, group_id: str) -> set[str]:
        with self._lock:
            return set(self.members.get(group_id, {}))

    # -- HTTP entry point --------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> None:
        """Serve one HTTP request (called in the connection's thread)."""
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        with self._lock:
            self.stats.http_requests += 1
        if path.startswith("/_fake/"):
            handler.respond(*self._admin(path))
            return
        if not path.startswith("/v1.0/"):
            handler.respond_form(*self._identity(handler.command, path, raw))
            return
        with self._lock:
            self.stats.graph_requests += 1
            fault = None
            calls, rate = self.stats.graph_requests, self.faults.rate
            if rate and int(calls * rate) != int((calls - 1) * rate):
                # Exactly `rate` of the calls fail, evenly spread; the kinds take turns.
                done = sum(self.stats.faults.get(k, 0) for k in self.faults.kinds)
                fault = self.faults.kinds[done % len(self.faults.kinds)]
                self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        if fault == "429":
            handler.respond(
                *_error(
                    429,
                    "TooManyRequests",
                    "Too many requests.",
                    {"Retry-After": str(self.faults.retry_after)},
                )
            )
            return
        if fault == "503":
            handler.respond(
                *_error(
                    503,
                    "serviceNotAvailable",
                    "Service unavailable.",
                    {"Retry-After": str(self.faults.retry_after)},
                )
            )
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            answer = _error(400, "BadRequest", "Unable to read JSON request payload.")
        else:
            answer = self._graph(
                handler.command, path[len("/v1.0") :], parts.query, body, handler.headers.get("Authorization")
            )
        if fault == "timeout":
            time.sleep(self.faults.timeout_delay)
        if fault == "drop":
            handler.drop()
            return
        handler.respond(*answer)

    def _admin(self, path: str) -> Answer:
        with self._lock:
            if path == "/_fake/stats":
                return 200, {}, self.stats.as_dict()
            if path == "/_fake/summary":
                return (
                    200,
                    {},
                    {
                        "users": len(self.users),
                        "enabled": sum(1 for u in self.users.values() if u["accountEnabled"]),
                        "deleted": len(self.deleted),
                        "groups": len(self.groups),
                        "memberships": sum(len(m) for m in self.members.values()),
                        "duplicate_employee_ids": sum(
                            len(us) - 1
                            for eid, us in self.users_by_employee_id().items()
                            if eid and len(us) > 1
                        ),
                    },
                )
        return _error(404, "NotFound", path)

    # -- the identity platform ---------------------------------------------------------------------

    def _identity(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        segments = [s for s in path.split("/") if s]
        tenant = segments[0] if segments else ""
        known = tenant.lower() == self.tenant_id.lower()
        if method == "GET" and segments[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            if not known:
                return _aad_error(
                    400,
                    "invalid_tenant",
                    90002,
                    f"Tenant '{tenant}' not found. Check to make "
                    "sure you have the correct tenant ID and are signing into the correct cloud.",
                    tenant,
                )
            base = f"{self.url}/{self.tenant_id}"
            return 200, {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "EU",
            }
        if method == "POST" and segments[1:] == ["oauth2", "v2.0", "token"]:
            with self._lock:
                self.stats.token_requests += 1
            return self._token(tenant, known, {k: v[0] for k, v in parse_qs(raw.decode()).items()})
        return 404, {"error": "not_found", "error_description": path}

    def _token(self, tenant: str, known: bool, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not known:
            return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.", tenant)
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.", tenant
            )
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{self.tenant_id}'.",
                tenant,
            )
        if form.get("scope") != GRAPH_SCOPE:
            return _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')} is not valid. Client credential "
                "flows must have a scope value with /.default suffixed to the resource identifier.",
                tenant,
            )
        if "client_secret" in form:
            if app.secret is None or form["client_secret"] != app.secret:
                return _aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is "
                    f"the client secret value, not the client secret ID, for a secret added to app "
                    f"'{app.client_id}'.",
                    tenant,
                )
        elif "client_assertion" in form:
            problem = self._check_assertion(app, form)
            if problem:
                return _aad_error(401, "invalid_client", 700027, problem, tenant)
        else:
            return _aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following "
                "parameter: 'client_assertion' or 'client_secret'.",
                tenant,
            )
        now = int(time.time())
        claims = {
            "aud": GRAPH_AUDIENCE,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "tid": self.tenant_id,
            "appid": app.client_id,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "roles": list(app.roles),
        }
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return 200, {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }

    def _check_assertion(self, app: FakeApp, form: dict[str, str]) -> str | None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return "The client_assertion_type is not supported."
        if app.certificate_pem is None:
            return _UNREGISTERED
        cert = x509.load_pem_x509_certificate(app.certificate_pem)
        der = cert.public_bytes(Encoding.DER)
        try:
            header = jwt.get_unverified_header(form["client_assertion"])
        except jwt.PyJWTError:
            return "Client assertion failed signature validation."
        if not (
            _same_thumbprint(header.get("x5t#S256"), der, "sha256")
            or _same_thumbprint(header.get("x5t"), der, "sha1")
        ):
            return _UNREGISTERED
        try:
            claims = jwt.decode(
                form["client_assertion"],
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                audience=f"{self.url}/{self.tenant_id}/oauth2/v2.0/token",
            )
        except jwt.PyJWTError as exc:
            return f"Client assertion failed signature validation. ({exc})"
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return "The client assertion's issuer and subject must be the client id."
        return None

    # -- Graph -------------------------------------------------------------------------------------

    def _authorize(self, authorization: str | None) -> dict[str, Any]:
        if not authorization or not authorization.startswith("Bearer ") or len(authorization) < 10:
            raise _Error(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            return dict(
                jwt.decode(authorization[7:], self._key, algorithms=["HS256"], audience=GRAPH_AUDIENCE)
            )
        except jwt.ExpiredSignatureError:
            raise _Error(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            ) from None
        except jwt.PyJWTError:
            raise _Error(401, "InvalidAuthenticationToken", "Access token validation failure.") from None

    def _graph(self, method: str, path: str, query: str, body: Any, authorization: str | None) -> Answer:
        try:
            claims = self._authorize(authorization)
        except _Error as exc:
            return exc.answer
        if path == "/$batch" and method == "POST":
            return self._batch(body, claims)
        return self._dispatch(method, path, query, body, claims)

    def _batch(self, body: Any, claims: dict[str, Any]) -> Answer:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "BadRequest", "Invalid batch payload format.")
        if len(requests) > MAX_BATCH:
            return _error(400, "BadRequest", f"The number of requests in a batch cannot exceed {MAX_BATCH}.")
        ids = [str(r.get("id")) for r in requests if isinstance(r, dict)]
        if len(ids) != len(requests) or len(set(ids)) != len(ids) or "None" in ids:
            return _error(400, "BadRequest", "Every request in a batch must have a unique id.")
        with self._lock:
            self.stats.batches += 1
            self.stats.batch_requests += len(requests)
            self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        statuses: dict[str, int] = {}
        responses = []
        for request in requests:
            rid = str(request["id"])
            depends = request.get("dependsOn") or []
            if any(statuses.get(str(d), 424) >= 400 for d in depends):
                answer = _error(
                    424, "FailedDependency", "The request was not executed: a request it depends on failed."
                )
            else:
                answer = self._inner(request, claims)
            statuses[rid] = answer[0]
            response: dict[str, Any] = {"id": rid, "status": answer[0], "headers": answer[1]}
            if answer[2] is not None:
                response["body"] = answer[2]
                response["headers"] = {"Content-Type": "application/json", **answer[1]}
            responses.append(response)
        with self._lock:
            self._rng.shuffle(responses)
        return 200, {}, {"responses": responses}

    def _inner(self, request: dict[str, Any], claims: dict[str, Any]) -> Answer:
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", ""))
        if not method or not url or url.startswith("http"):
            return _error(400, "BadRequest", "A batch request needs a method and a relative url.")
        headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
        if "body" in request and "content-type" not in headers:
            return _error(
                400,
                "BadRequest",
                f"Write request id : {request['id']} does not contain Content-Type header or body.",
            )
        with self._lock:
            if self.faults.inner_rate and self._rng.random() < self.faults.inner_rate:
                kind = self._rng.choice(("429", "503"))
                self.stats.faults[f"inner-{kind}"] = self.stats.faults.get(f"inner-{kind}", 0) + 1
                retry = {"Retry-After": str(self.faults.retry_after)}
                if kind == "429":
                    return _error(429, "TooManyRequests", "Too many requests.", retry)
                return _error(503, "serviceNotAvailable", "Service unavailable.", retry)
        parts = urlsplit(url if url.startswith("/") else "/" + url)
        return self._dispatch(method, unquote(parts.path), parts.query, request.get("body"), claims)

    def _take_write(self) -> tuple[dict[str, str], Answer | None]:
        """Count a write against the quota: (headers for the answer, or a 429 when over it)."""
        if self.write_quota is None:
            self.stats.writes += 1
            return {}, None
        quota, window = self.write_quota
        now = time.monotonic()
        while self._writes and self._writes[0] <= now - window:
            self._writes.popleft()
        if len(self._writes) >= quota:
            self.stats.throttled += 1
            wait = max(1, math.ceil(self._writes[0] + window - now))
            return {}, _error(
                429,
                "Request_ThrottledTemporarily",
                f"Your request is throttled temporarily. Please try after {wait} seconds.",
                {"Retry-After": str(wait), "x-ms-throttle-limit-percentage": "1.0"},
            )
        self._writes.append(now)
        self.stats.writes += 1
        usage = len(self._writes) / quota
        headers = {"x-ms-resource-unit": "1"}
        if usage >= 0.8:
            headers["x-ms-throttle-limit-percentage"] = f"{usage:.2f}"
        return headers, None

    def _dispatch(self, method: str, path: str, query: str, body: Any, claims: dict[str, Any]) -> Answer:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        segments = [s for s in path.split("/") if s]
        with self._lock:
            try:
                self._check_roles(method, segments, claims)
                extra: dict[str, str] = {}
                if method in _WRITE_METHODS:
                    extra, refused = self._take_write()
                    if refused is not None:
                        return refused
                status, headers, payload = self._route(method, segments, params, body)
                return status, {**headers, **extra}, payload
            except _Error as exc:
                return exc.answer

    def _check_roles(self, method: str, segments: list[str], claims: dict[str, Any]) -> None:
        roles = set(claims.get("roles") or ())
        write = method in _WRITE_METHODS
        resource = segments[0] if segments else ""
        if resource == "groups" and "members" in segments:
            needed = {"GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"}
            if not write:
                needed |= {"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"}
        elif resource == "groups":
            needed = {"Group.ReadWrite.All", "Directory.ReadWrite.All"}
            if not write:
                needed |= {"Group.Read.All", "Directory.Read.All"}
        else:
            needed = {"User.ReadWrite.All", "Directory.ReadWrite.All"}
            if not write:
                needed |= {"User.Read.All", "Directory.Read.All"}
        if not roles & needed:
            raise _Error(
                403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )

    def _route(self, method: str, seg: list[str], params: dict[str, str], body: Any) -> Answer:
        n = len(seg)
        if seg[:1] == ["users"]:
            if n == 1 and method == "GET":
                return self._list(
                    list(self.users.values()), params, _USER_FILTERABLE, self._project_user, "/users"
                )
            if n == 1 and method == "POST":
                return self._create_user(body)
            if n == 2 and method == "GET":
                return 200, {}, self._project_user(self._user(seg[1]), params.get("$select"))
            if n == 2 and method == "PATCH":
                self._update_user(self._user(seg[1]), body)
                return 204, {}, None
            if n == 2 and method == "DELETE":
                self._delete_user(self._user(seg[1]))
                return 204, {}, None
        if seg[:1] == ["groups"]:
            if n == 1 and method == "GET":
                return self._list(
                    list(self.groups.values()), params, _GROUP_FILTERABLE, self._project_group, "/groups"
                )
            if n == 1 and method == "POST":
                return 201, {}, self._project_group(self._create_group(body), None)
            group = self._group(seg[1])
            if n == 2 and method == "GET":
                return 200, {}, self._project_group(group, params.get("$select"))
            if n == 2 and method == "PATCH":
                self._update_group(group, body)
                return 204, {}, None
            if n == 2 and method == "DELETE":
                del self.groups[group["id"]]
                self.members.pop(group["id"], None)
                return 204, {}, None
            if n == 3 and seg[2] == "members" and method == "GET":
                members = [self.users[m] for m in self.members[group["id"]] if m in self.users]
                return self._list(
                    members, params, _USER_FILTERABLE, self._project_member, f"/groups/{group['id']}/members"
                )
            if n == 4 and seg[2:] == ["members", "$ref"] and method == "POST":
                reference = (body or {}).get("@odata.id") if isinstance(body, dict) else None
                self._add_members(group, [reference])
                return 204, {}, None
            if n == 5 and seg[2] == "members" and seg[4] == "$ref" and method == "DELETE":
                if seg[3] not in self.members[group["id"]]:
                    raise _not_found(seg[3])
                del self.members[group["id"]][seg[3]]
                return 204, {}, None
        if seg[:2] == ["directory", "deletedItems"]:
            if n == 3 and seg[2] == "microsoft.graph.user" and method == "GET":
                return self._list(
                    list(self.deleted.values()),
                    params,
                    _USER_FILTERABLE,
                    self._project_user,
                    "/directory/deletedItems/microsoft.graph.user",
                )
            if n == 4 and seg[3] == "restore" and method == "POST":
                return 200, {}, self._project_user(self._restore(seg[2]), None)
        if seg == ["domains"] and method == "GET":
            return (
                200,
                {},
                {
                    "value": [
                        {"id": d, "isVerified": True, "authenticationType": "Federated" if f else "Managed"}
                        for d, f in self.domains.items()
                    ]
                },
            )
        raise _Error(400, "BadRequest", f"Resource not found for the segment '{seg[0] if seg else ''}'.")

    # -- listing -----------------------------------------------------------------------------------

    def _list(
        self,
        items: list[dict[str, Any]],
        params: dict[str, str],
        filterable: set[str],
        project: Any,
        path: str,
    ) -> Answer:
        top_text = params.get("$top", str(DEFAULT_TOP))
        if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
            raise _bad(
                f"Invalid page size specified: '{top_text}'. Must be between 1 and {MAX_TOP} inclusive."
            )
        top = int(top_text)
        if "$filter" in params:
            predicate = compile_filter(params["$filter"], filterable)
            items = [i for i in items if predicate(i)]
        offset = 0
        if "$skiptoken" in params:
            try:
                offset = int(base64.urlsafe_b64decode(params["$skiptoken"].encode()).decode().split(":")[1])
            except (ValueError, IndexError):
                raise _bad("Invalid $skiptoken.") from None
        page = items[offset : offset + top]
        select = params.get("$select")
        result: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#{path.strip('/')}",
            "value": [project(i, select) for i in page],
        }
        if offset + top < len(items):
            token = base64.urlsafe_b64encode(f"offset:{offset + top}".encode()).decode()
            kept = "&".join(f"{k}={quote(v, safe=',()$')}" for k, v in params.items() if k != "$skiptoken")
            result["@odata.nextLink"] = f"{self.url}/v1.0{path}?{kept}&$skiptoken={token}"
        return 200, {}, result

    @staticmethod
    def _selected(
        obj: dict[str, Any], select: str | None, known: set[str], default: tuple[str, ...]
    ) -> dict[str, Any]:
        if select:
            names = [s.strip() for s in select.split(",") if s.strip()]
            for name in names:
                if name not in known:
                    raise _bad(
                        f"Could not find a property named '{name}' on type 'microsoft.graph.directoryObject'."
                    )
            names = ["id", *[n for n in names if n != "id"]]
        else:
            names = list(default)
        return {name: obj.get(name) for name in names}

    def _project_user(self, user: dict[str, Any], select: str | None) -> dict[str, Any]:
        selected = self._selected(user, select, _USER_PROPERTIES - {"passwordProfile"}, _USER_DEFAULT_SELECT)
        if "onPremisesExtensionAttributes" in selected:
            selected["onPremisesExtensionAttributes"] = dict(user["onPremisesExtensionAttributes"])
        return selected

    def _project_group(self, group: dict[str, Any], select: str | None) -> dict[str, Any]:
        return self._selected(group, select, _GROUP_PROPERTIES, tuple(sorted(_GROUP_PROPERTIES)))

    def _project_member(self, user: dict[str, Any], select: str | None) -> dict[str, Any]:
        return {"@odata.type": "#microsoft.graph.user", **self._project_user(user, select)}

    # -- users -------------------------------------------------------------------------------------

    def _user(self, key: str) -> dict[str, Any]:
        user = self.users.get(key) or self.users.get(self._upn.get(key.lower(), ""))
        if user is None:
            raise _not_found(key)
        return user

    def _validate_user(self, values: dict[str, Any], *, creating: bool) -> None:
        for name in values:
            if name not in _USER_WRITABLE:
                raise _bad(f"Invalid property '{name}'.")
        for name, limit in _USER_LIMITS.items():
            value = values.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise _bad(f"Invalid value specified for property '{name}' of resource 'User'.")
        if "accountEnabled" in values and not isinstance(values["accountEnabled"], bool):
            raise _bad("Invalid value specified for property 'accountEnabled' of resource 'User'.")
        for name in ("displayName", "mailNickname", "userPrincipalName"):
            if name in values and not values[name]:
                raise _bad(f"Invalid value specified for property '{name}' of resource 'User'.")
        nickname = values.get("mailNickname")
        if nickname is not None and not _NICKNAME.match(nickname):
            raise _bad("Invalid value specified for property 'mailNickname' of resource 'User'.")
        location = values.get("usageLocation")
        if location is not None and not re.fullmatch(r"[A-Z]{2}", str(location)):
            raise _bad("Invalid value specified for property 'usageLocation' of resource 'User'.")
        extensions = values.get("onPremisesExtensionAttributes")
        if extensions is not None:
            if not isinstance(extensions, dict):
                raise _bad(
                    "Invalid value specified for property 'onPremisesExtensionAttributes' of resource 'User'."
                )
            for slot, value in extensions.items():
                if slot not in {f"extensionAttribute{i}" for i in range(1, 16)}:
                    raise _bad(f"Invalid property '{slot}'.")
                if value is not None and (not isinstance(value, str) or len(value) > 1024):
                    raise _bad(
                        f"Invalid value specified for property '{slot}' of resource "
                        "'OnPremisesExtensionAttributes'."
                    )
        upn = values.get("userPrincipalName")
        if upn is not None:
            local, _, domain = upn.rpartition("@")
            if not local or len(local) > 64 or not _NICKNAME.match(local):
                raise _bad("Invalid value specified for property 'userPrincipalName' of resource 'User'.")
            if domain.lower() not in self.domains:
                raise _bad(
                    "The domain portion of the userPrincipalName property is invalid. You must use one of "
                    "the verified domain names in your organization."
                )
        profile = values.get("passwordProfile")
        if profile is not None:
            if not isinstance(profile, dict):
                raise _bad("Invalid value specified for property 'passwordProfile' of resource 'User'.")
            if "password" in profile:
                self.passwords.append(str(profile["password"]))
                if not _strong_password(profile["password"]):
                    raise _bad(
                        "The specified password does not comply with password complexity requirements. "
                        "Please provide a different password."
                    )

    def _new_user(self, values: dict[str, Any]) -> dict[str, Any]:
        extensions = {f"extensionAttribute{i}": None for i in range(1, 16)}
        extensions.update(values.get("onPremisesExtensionAttributes") or {})
        user: dict[str, Any] = dict.fromkeys(_USER_PROPERTIES)
        user.update(
            {k: v for k, v in values.items() if k not in ("passwordProfile", "onPremisesExtensionAttributes")}
        )
        user.update(
            id=str(uuid.uuid4()),
            accountEnabled=values.get("accountEnabled", True),
            onPremisesExtensionAttributes=extensions,
            businessPhones=[],
            otherMails=values.get("otherMails") or [],
            userType="Member",
            createdDateTime=_now_iso(),
            passwordProfile={
                "forceChangePasswordNextSignIn": bool(
                    (values.get("passwordProfile") or {}).get("forceChangePasswordNextSignIn")
                )
            },
        )
        return user

    def _create_user(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            raise _bad("Empty Payload. JSON content expected.")
        self._validate_user(body, creating=True)
        for name in ("accountEnabled", "displayName", "mailNickname", "userPrincipalName"):
            if name not in body:
                raise _bad(f"A value is required for property '{name}' of resource 'User'.")
        domain = body["userPrincipalName"].rpartition("@")[2].lower()
        if self.domains[domain]:
            if not body.get("onPremisesImmutableId"):
                raise _bad(
                    "Property 'onPremisesImmutableId' is required when creating a user in a federated domain."
                )
        elif not (body.get("passwordProfile") or {}).get("password"):
            raise _bad("A value is required for property 'passwordProfile' of resource 'User'.")
        if body["userPrincipalName"].lower() in self._upn:
            raise _Error(
                400,
                "Request_BadRequest",
                "Another object with the same value for property userPrincipalName already exists.",
            )
        user = self._new_user(body)
        self.users[user["id"]] = user
        self._upn[user["userPrincipalName"].lower()] = user["id"]
        projected = {k: v for k, v in user.items() if k != "passwordProfile"}
        return 201, {"Location": f"{self.url}/v1.0/users/{user['id']}"}, projected

    def _update_user(self, user: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict):
            raise _bad("Empty Payload. JSON content expected.")
        self._validate_user(body, creating=False)
        upn = body.get("userPrincipalName")
        if upn and upn.lower() != user["userPrincipalName"].lower() and upn.lower() in self._upn:
            raise _bad("Another object with the same value for property userPrincipalName already exists.")
        for name, value in body.items():
            if name == "onPremisesExtensionAttributes":
                user[name].update(value)
            elif name == "passwordProfile":
                user[name] = {
                    "forceChangePasswordNextSignIn": bool(value.get("forceChangePasswordNextSignIn"))
                }
            else:
                user[name] = value
        if upn:
            self._upn = {k: v for k, v in self._upn.items() if v != user["id"]}
            self._upn[upn.lower()] = user["id"]

    def _delete_user(self, user: dict[str, Any]) -> None:
        del self.users[user["id"]]
        self._upn.pop(user["userPrincipalName"].lower(), None)
        for members in self.members.values():
            members.pop(user["id"], None)
        user["deletedDateTime"] = _now_iso()
        self.deleted[user["id"]] = user

    def _restore(self, object_id: str) -> dict[str, Any]:
        user = self.deleted.get(object_id)
        if user is None:
            raise _not_found(object_id)
        if user["userPrincipalName"].lower() in self._upn:
            raise _bad("Another object with the same value for property userPrincipalName already exists.")
        del self.deleted[object_id]
        user["deletedDateTime"] = None
        self.users[object_id] = user
        self._upn[user["userPrincipalName"].lower()] = object_id
        return user

    # -- groups ------------------------------------------------------------------------------------

    def _group(self, key: str) -> dict[str, Any]:
        group = self.groups.get(key)
        if group is None:
            raise _not_found(key)
        return group

    def _new_group(self, body: dict[str, Any]) -> dict[str, Any]:
        group: dict[str, Any] = dict.fromkeys(_GROUP_PROPERTIES)
        group.update({k: v for k, v in body.items() if k in _GROUP_PROPERTIES})
        group.update(id=str(uuid.uuid4()), groupTypes=[], createdDateTime=_now_iso())
        self.groups[group["id"]] = group
        self.members[group["id"]] = {}
        return group

    def _create_group(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad("Empty Payload. JSON content expected.")
        for name in body:
            if name not in _GROUP_PROPERTIES | {"members@odata.bind", "owners@odata.bind"}:
                raise _bad(f"Invalid property '{name}'.")
        for name in ("displayName", "mailEnabled", "mailNickname", "securityEnabled"):
            if name not in body:
                raise _bad(f"A value is required for property '{name}' of resource 'Group'.")
        if not _NICKNAME.match(str(body["mailNickname"])):
            raise _bad("Invalid value specified for property 'mailNickname' of resource 'Group'.")
        if body["mailEnabled"] and body["securityEnabled"]:
            raise _bad("Mail-enabled security groups can't be created through Microsoft Graph.")
        references = body.get("members@odata.bind") or []
        self._check_references(references)
        group = self._new_group(body)
        self._add_members(group, references)
        return group

    def _update_group(self, group: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict):
            raise _bad("Empty Payload. JSON content expected.")
        for name in body:
            if name not in {"displayName", "description", "members@odata.bind"}:
                raise _bad(f"Invalid property '{name}'.")
        if "members@odata.bind" in body:
            self._add_members(group, body["members@odata.bind"])
        for name in ("displayName", "description"):
            if name in body:
                group[name] = body[name]

    def _check_references(self, references: list[Any]) -> list[str]:
        if not isinstance(references, list):
            raise _bad("Invalid value specified for property 'members@odata.bind'.")
        if len(references) > MAX_BATCH:
            raise _bad(
                f"The request has exceeded the maximum number of {MAX_BATCH} references in one request."
            )
        ids = []
        for reference in references:
            found = _REFERENCE.search(str(reference or ""))
            if not found:
                raise _bad(f"Invalid object identifier '{reference}'.")
            object_id = found.group(1).lower()
            if object_id not in self.users and object_id not in self.groups:
                raise _not_found(object_id)
            ids.append(object_id)
        return ids

    def _add_members(self, group: dict[str, Any], references: list[Any]) -> None:
        ids = self._check_references(references)
        members = self.members[group["id"]]
        if any(i in members for i in ids):
            raise _bad(
                "One or more added object references already exist for the following modified "
                "properties: 'members'."
            )
        for i in ids:
            members[i] = None


# --------------------------------------------------------------------------------------------------
# HTTPS plumbing.


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: GraphFake
    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the connection's own thread, so a slow client never blocks accept()."""
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            request.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: the test output is for the tests."""

    def _serve(self) -> None:
        try:
            self.server.fake.handle(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    def respond(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json;odata.metadata=minimal;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def respond_form(self, status: int, body: dict[str, Any]) -> None:
        self.respond(status, {"Cache-Control": "no-store"}, body)

    def drop(self) -> None:
        """Close the connection without answering (the request was processed)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def running_fake(workdir: Path, **options: Any) -> Iterator[GraphFake]:
    """A started fake, stopped on exit."""
    fake = GraphFake(**options).start(workdir)
    try:
        yield fake
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the fake in its own process (the benchmark): prints {"url", "ca_file", "tenant_id"} as one
    JSON line, then serves until SIGTERM. The app's secret is read from the variable --secret-env."""
    import argparse
    import os
    import signal

    parser = argparse.ArgumentParser(description="A fake of Entra ID and Microsoft Graph over HTTPS.")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--secret-env", required=True, help="environment variable holding the app's secret")
    parser.add_argument("--domain", default="ght-test.fr")
    parser.add_argument("--quota", type=int, help="writes allowed per window (default: no quota)")
    parser.add_argument("--window", type=float, default=15.0, help="the quota's sliding window, seconds")
    args = parser.parse_args(argv)
    fake = GraphFake(
        apps=[FakeApp(args.client_id, secret=os.environ[args.secret_env])],
        domains={args.domain: False},
        write_quota=(args.quota, args.window) if args.quota else None,
    ).start(args.workdir)
    print(
        json.dumps({"url": fake.url, "ca_file": str(fake.ca_file), "tenant_id": fake.tenant_id}), flush=True
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
