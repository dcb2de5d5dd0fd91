"""The gateway's tables: clients, signing keys, browser sessions, codes, tokens, throttles, deliveries.

Every piece of state lives here, in the territorial directory's database, so that several gateway
processes behind a load balancer behave as one. Secrets are never stored in clear: client secrets,
authorization codes, refresh and access tokens and session cookies are stored as SHA-256 digests of
high-entropy random values (a slow hash buys nothing for 256-bit random strings); user passwords as
argon2id; private signing keys encrypted with AES-256-GCM under a key-encryption key from the
environment or a file. The migration is `directory_sync/store/migrations/versions/0003_gateway.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from directory_sync.store import utcnow


def _when(nullable: bool = True, *, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index))


def _now() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


def _json(default: Any = list) -> Any:
    return Field(default_factory=default, sa_column=Column(JSON, nullable=False))


class GatewayClient(SQLModel, table=True):
    """A relying party (the DPI, another shared application, a back-end service)."""

    __tablename__ = "gateway_client"

    client_id: str = Field(primary_key=True, max_length=64)
    name: str
    secret_hash: str | None = Field(default=None, max_length=80)
    public: bool = False
    token_endpoint_auth_method: str = Field(default="client_secret_basic", max_length=32)
    redirect_uris: list[str] = _json()
    post_logout_redirect_uris: list[str] = _json()
    backchannel_logout_uri: str | None = None
    grant_types: list[str] = _json()
    scopes: list[str] = _json()
    jwks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    require_pkce: bool = True
    min_acr: str | None = Field(default=None, max_length=128)  # the lowest level it accepts (assurance.py)
    created_at: datetime = _now()
    secret_rotated_at: datetime | None = _when()


class SigningKey(SQLModel, table=True):
    """A signing key: published from `created_at`, signs from `not_before`, unpublished at `expires_at`."""

    __tablename__ = "gateway_signing_key"

    kid: str = Field(primary_key=True, max_length=64)
    alg: str = Field(max_length=16)
    public_jwk: dict[str, Any] = _json(dict)
    private_key: str = Field(sa_column=Column(Text, nullable=False))  # AES-GCM ciphertext, base64
    kek_id: str = Field(max_length=16)
    created_at: datetime = _now()
    not_before: datetime = _now()
    expires_at: datetime | None = _when()


class BrowserSession(SQLModel, table=True):
    """A person signed in on one browser. `sid` goes into ID tokens; the cookie is stored as a digest."""

    __tablename__ = "gateway_session"

    sid: str = Field(primary_key=True, max_length=64)
    cookie_hash: str = Field(max_length=64, unique=True)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    auth_time: datetime = _now()
    amr: list[str] = _json()
    acr: str | None = Field(default=None, max_length=128)
    current_site: str | None = Field(default=None, max_length=64)
    created_at: datetime = _now()
    expires_at: datetime = _now()
    ended_at: datetime | None = _when()


class SessionClient(SQLModel, table=True):
    """An application that received tokens in a session: it gets a back-channel logout when it ends."""

    __tablename__ = "gateway_session_client"

    sid: str = Field(primary_key=True, max_length=64)
    client_id: str = Field(primary_key=True, max_length=64)


class PendingAuthorization(SQLModel, table=True):
    """An authorization request waiting for the person to sign in or pick a site.

    Bound to the browser that started it (`browser_hash`) and protected by a CSRF token, so that a
    login form cannot be submitted from another site (login CSRF).
    """

    __tablename__ = "gateway_pending_authorization"

    id: str = Field(primary_key=True, max_length=64)
    params: dict[str, str] = _json(dict)
    browser_hash: str = Field(max_length=64)
    csrf: str = Field(max_length=64)
    created_at: datetime = _now()
    expires_at: datetime = _now()


class Grant(SQLModel, table=True):
    """What a person (or a client alone) granted a client: every code and token hangs from one grant."""

    __tablename__ = "gateway_grant"

    id: str = Field(primary_key=True, max_length=32)
    client_id: str = Field(max_length=64, index=True)
    person_id: str | None = Field(default=None, max_length=32, index=True)
    sid: str | None = Field(default=None, max_length=64, index=True)
    scope: str = ""
    current_site: str | None = Field(default=None, max_length=64)
    auth_time: datetime | None = _when()
    amr: list[str] = _json()
    acr: str | None = Field(default=None, max_length=128)
    created_at: datetime = _now()
    revoked_at: datetime | None = _when()
    revoked_reason: str | None = Field(default=None, max_length=64)


class AuthorizationCode(SQLModel, table=True):
    """A single-use authorization code (stored as a digest). `used_at` set on first redemption."""

    __tablename__ = "gateway_authorization_code"
    __table_args__ = (Index("ix_gateway_code_client_nonce", "client_id", "nonce"),)

    code_hash: str = Field(primary_key=True, max_length=64)
    grant_id: str = Field(max_length=32)
    client_id: str = Field(max_length=64)
    redirect_uri: str
    scope: str = ""
    nonce: str | None = Field(default=None, max_length=255)
    code_challenge: str | None = Field(default=None, max_length=128)
    code_challenge_method: str | None = Field(default=None, max_length=8)
    created_at: datetime = _now()
    expires_at: datetime = _now()
    used_at: datetime | None = _when()


class IssuedToken(SQLModel, table=True):
    """An access or refresh token (stored as a digest) and its state: revoked, rotated (refresh)."""

    __tablename__ = "gateway_token"

    token_hash: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # "access_token" | "refresh_token"
    grant_id: str | None = Field(default=None, max_length=32, index=True)
    client_id: str = Field(max_length=64)
    person_id: str | None = Field(default=None, max_length=32)
    scope: str = ""
    jti: str | None = Field(default=None, max_length=64)
    issued_at: datetime = _now()
    expires_at: datetime = _now()
    revoked_at: datetime | None = _when()
    rotated_at: datetime | None = _when()


class LoginThrottle(SQLModel, table=True):
    """Failed sign-ins per account and per client address: progressive delay, then a temporary lock."""

    __tablename__ = "gateway_login_throttle"

    key: str = Field(primary_key=True, max_length=128)
    failures: int = 0
    last_failure_at: datetime | None = _when()
    next_attempt_at: datetime | None = _when()
    locked_until: datetime | None = _when()


class LocalCredential(SQLModel, table=True):
    """An argon2id password for a person no hospital directory holds (temporary staff, students)."""

    __tablename__ = "gateway_local_credential"

    person_id: str = Field(primary_key=True, foreign_key="person.id", max_length=32)
    password_hash: str = Field(max_length=255)
    updated_at: datetime = _now()


class SiteChoice(SQLModel, table=True):
    """The site a person last said they were working at: offered first next time."""

    __tablename__ = "gateway_site_choice"

    person_id: str = Field(primary_key=True, foreign_key="person.id", max_length=32)
    site: str = Field(max_length=64)
    chosen_at: datetime = _now()


class BackchannelDelivery(SQLModel, table=True):
    """A back-channel logout token to deliver to one application, retried until it is acknowledged."""

    __tablename__ = "gateway_backchannel_delivery"

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(max_length=64)
    sid: str = Field(max_length=64)
    person_id: str = Field(max_length=32)
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    claimed_until: datetime | None = _when()
    delivered_at: datetime | None = _when()
    failed_at: datetime | None = _when()
    last_error: str | None = None
    created_at: datetime = _now()


class ClientAssertionUse(SQLModel, table=True):
    """A private_key_jwt assertion already presented (its `jti`): a replay is refused."""

    __tablename__ = "gateway_client_assertion"

    client_id: str = Field(primary_key=True, max_length=64)
    jti: str = Field(primary_key=True, max_length=255)
    expires_at: datetime = _now()


class MfaCredential(SQLModel, table=True):
    """A person's second factor: a TOTP seed (sealed with the key-encryption key) or a WebAuthn key.

    A TOTP credential counts once `confirmed_at` is set (the person typed a first code); `last_step`
    is the last time step accepted, so a code is accepted once only. A WebAuthn credential holds the
    public key and its signature counter. The migration is `0006_mfa.py`.
    """

    __tablename__ = "gateway_mfa_credential"

    id: str = Field(primary_key=True, max_length=32)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    kind: str = Field(max_length=16)  # "totp" | "webauthn"
    label: str = Field(default="", max_length=128)
    amr: str = Field(max_length=8)  # what a sign-in with it adds to `amr`: "otp", "hwk", "swk"
    secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # AES-GCM, base64
    kek_id: str | None = Field(default=None, max_length=16)
    last_step: int | None = None
    credential_id: str | None = Field(default=None, max_length=1400, unique=True)  # base64url
    public_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # COSE, base64url
    sign_count: int = 0
    transports: list[str] = _json()
    created_at: datetime = _now()
    confirmed_at: datetime | None = _when()
    last_used_at: datetime | None = _when()


class RecoveryCode(SQLModel, table=True):
    """A single-use recovery code, stored as an HMAC keyed from the key-encryption key."""

    __tablename__ = "gateway_recovery_code"

    code_hash: str = Field(primary_key=True, max_length=64)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    created_at: datetime = _now()
    used_at: datetime | None = _when()


class MfaChallenge(SQLModel, table=True):
    """A WebAuthn challenge handed to one browser session: single use, short-lived."""

    __tablename__ = "gateway_mfa_challenge"

    id: str = Field(primary_key=True, max_length=64)
    sid: str = Field(max_length=64, index=True)
    person_id: str = Field(max_length=32)
    purpose: str = Field(max_length=16)  # "register" | "authenticate"
    challenge: str = Field(max_length=128)  # base64url
    created_at: datetime = _now()
    expires_at: datetime = _now()
    used_at: datetime | None = _when()


class UpstreamState(SQLModel, table=True):
    """A sign-in sent to an upstream provider (Entra ID, Pro Sante Connect), waiting for its answer.

    Single use (`used_at`), bound to the browser and to the pending authorization it continues. Only
    the SHA-256 digest of `state` is stored: the PKCE verifier and the nonce are derived from the state
    with a key from the key-encryption key (sso_gateway/upstream.py), so this table holds nothing that
    could finish a sign-in. Migration `0007_upstream`.
    """

    __tablename__ = "gateway_upstream_state"

    state_hash: str = Field(primary_key=True, max_length=64)
    provider: str = Field(max_length=32)
    pending_id: str = Field(max_length=64)
    browser_hash: str = Field(max_length=64)
    created_at: datetime = _now()
    expires_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    used_at: datetime | None = _when()


class UpstreamIdentity(SQLModel, table=True):
    """An upstream identity (provider, its `sub`) and the territorial person it signs in as.

    `linked_by` says why: `oid` or `employeeId` (Entra ID, through the export state), `rpps` or `adeli`
    (Pro Sante Connect's idNat_PS), or `external`: a professional the directory does not know, admitted
    by a provider configured with `admit_external`, as a person of status `external` with `role` only.
    """

    __tablename__ = "gateway_upstream_identity"
    __table_args__ = (UniqueConstraint("provider", "subject", name="uq_gateway_upstream_identity"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=32)
    subject: str = Field(max_length=255)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    linked_by: str = Field(max_length=16)
    external: bool = False
    role: str | None = Field(default=None, max_length=64)
    created_at: datetime = _now()
    last_seen_at: datetime = _now()
