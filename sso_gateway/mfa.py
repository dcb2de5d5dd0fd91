"""Second factors: TOTP (RFC 6238), WebAuthn / FIDO2 keys, single-use recovery codes.

A person enrols them after a password sign-in (`web/app.py`: the security pages), lists and removes
them; IT staff list and reset them (`ght people mfa list|reset`, audited). What is stored:

- TOTP: the seed, sealed with AES-256-GCM under the key-encryption key (`keys.KeyEncryption`, the
  credential id bound as associated data), and the last time step accepted: a code is accepted once
  (a replay in the same step is refused), for the current step or the one before or after (clock
  drift), never older.
- WebAuthn: the credential id, its COSE public key and signature counter (the `webauthn` library runs
  the ceremonies; challenges are single use, bound to the browser session, valid 5 minutes).
- Recovery codes: ten, shown once, each stored as an HMAC keyed from the key-encryption key (a copy of
  the database alone cannot be searched for them), each usable once.

Wrong codes are throttled per person (the sign-in throttle: delays, then a lock). Every enrolment,
use, failure and removal is in the audit trail; no secret or code ever is.
"""

from __future__ import annotations

import hmac
import io
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pyotp
import segno
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session
from sqlmodel import col
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.base64url_to_bytes import base64url_to_bytes
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from directory_sync.config import GatewaySettings
from directory_sync.store import Person, Store, utcnow

from .audit import record_event
from .errors import GatewayError
from .keys import KeyEncryption
from .models import MfaChallenge, MfaCredential, RecoveryCode
from .sessions import aware
from .throttle import Throttle

TOTP = "totp"
WEBAUTHN = "webauthn"
RECOVERY = "recovery"
TOTP_PERIOD = 30
TOTP_DIGITS = 6
RECOVERY_CODES = 10
CHALLENGE_LIFETIME = 300
UNCONFIRMED_LIFETIME = 900  # an enrolment page left open: its seed is forgotten after this
_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


@dataclass(frozen=True)
class Factor:
    """A second factor as the person's page and `ght people mfa list` show it (never its secret)."""

    id: str
    kind: str
    label: str
    created_at: datetime
    last_used_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class TotpEnrolment:
    """What the enrolment page shows: the seed (for typing), the otpauth URI and its QR code (SVG)."""

    credential_id: str
    secret: str
    uri: str
    qr_svg: str


@dataclass(frozen=True)
class Verified:
    """The outcome of a second-factor check: the amr value it adds, or why it failed."""

    amr: str | None = None
    method: str | None = None
    retry_after: int = 0

    @property
    def ok(self) -> bool:
        return self.amr is not None


def _factor(record: MfaCredential) -> Factor:
    return Factor(
        record.id,
        record.kind,
        record.label,
        aware(record.created_at),
        aware(record.last_used_at) if record.last_used_at else None,
    )


def normalise_code(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


class SecondFactors:
    """A gateway's second factors: enrolment, verification, listing, removal."""

    def __init__(self, store: Store, settings: GatewaySettings, kek: KeyEncryption | None = None) -> None:
        self.store = store
        self.settings = settings
        self._kek = kek
        self.throttle = Throttle(settings)
        issuer = urlsplit(settings.issuer)
        self.rp_id = settings.webauthn_rp_id or issuer.hostname or "localhost"
        self.origin = f"{issuer.scheme}://{issuer.netloc}"

    @property
    def kek(self) -> KeyEncryption:
        if self._kek is None:
            self._kek = KeyEncryption.from_settings(self.settings)
        return self._kek

    # -- what a person has ----------------------------------------------------------------------

    @staticmethod
    def _confirmed(person_id: str) -> Any:
        return select(MfaCredential).where(
            col(MfaCredential.person_id) == person_id, col(MfaCredential.confirmed_at).is_not(None)
        )

    def factors(self, person_id: str) -> list[Factor]:
        with self.store.session() as session:
            rows = session.execute(self._confirmed(person_id).order_by(col(MfaCredential.created_at)))
            return [_factor(r) for r in rows.scalars()]

    def kinds(self, person_id: str) -> set[str]:
        """The kinds of factor a person can use now ("totp", "webauthn"; "recovery" if codes remain)."""
        kinds = {f.kind for f in self.factors(person_id)}
        if kinds and self.recovery_codes_left(person_id):
            kinds.add(RECOVERY)
        return kinds

    def recovery_codes_left(self, person_id: str) -> int:
        with self.store.session() as session:
            rows = session.execute(
                select(col(RecoveryCode.code_hash)).where(
                    col(RecoveryCode.person_id) == person_id, col(RecoveryCode.used_at).is_(None)
                )
            )
            return len(rows.all())

    def remove(self, person_id: str, factor_id: str, *, address: str | None = None) -> bool:
        """Remove one of the person's factors (the last one takes the recovery codes with it)."""
        with self.store.session() as session:
            record = session.get(MfaCredential, factor_id)
            if record is None or record.person_id != person_id:
                return False
            session.delete(record)
            session.flush()
            left = session.execute(self._confirmed(person_id).limit(1)).first()
            if left is None:
                session.execute(delete(RecoveryCode).where(col(RecoveryCode.person_id) == person_id))
            record_event(
                session,
                "mfa_removed",
                person_id=person_id,
                address=address,
                factor=record.id,
                factor_kind=record.kind,
                label=record.label,
            )
            session.commit()
        return True

    def reset(self, person_id: str, *, by: str, reason: str | None = None) -> int:
        """IT staff: remove every factor and recovery code of a person; returns how many factors."""
        with self.store.session() as session:
            if session.get(Person, person_id) is None:
                raise GatewayError(f"no person {person_id!r}")
            removed = session.execute(
                delete(MfaCredential).where(col(MfaCredential.person_id) == person_id)
            ).rowcount  # type: ignore[attr-defined]
            session.execute(delete(RecoveryCode).where(col(RecoveryCode.person_id) == person_id))
            session.execute(delete(MfaChallenge).where(col(MfaChallenge.person_id) == person_id))
            record_event(session, "mfa_reset", person_id=person_id, by=by, reason=reason, removed=removed)
            session.commit()
        return int(removed)

    # -- TOTP -------------------------------------------------------------------------------------

    def _totp(self, record: MfaCredential) -> pyotp.TOTP:
        assert record.secret is not None and record.kek_id is not None
        seed = self.kek.open(record.secret, f"totp:{record.id}", record.kek_id).decode()
        return pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_PERIOD)

    def begin_totp(self, person_id: str, account_name: str) -> TotpEnrolment:
        """A new, unconfirmed TOTP credential: counts once the person types a first code."""
        credential_id = secrets.token_hex(16)
        seed = pyotp.random_base32()  # 160 bits (RFC 4226 §4 recommends at least 128)
        now = utcnow()
        with self.store.session() as session:
            session.execute(
                delete(MfaCredential).where(
                    col(MfaCredential.person_id) == person_id,
                    col(MfaCredential.confirmed_at).is_(None),
                    col(MfaCredential.created_at) < now - timedelta(seconds=UNCONFIRMED_LIFETIME),
                )
            )
            session.add(
                MfaCredential(
                    id=credential_id,
                    person_id=person_id,
                    kind=TOTP,
                    amr="otp",
                    label="",
                    secret=self.kek.seal(seed.encode(), f"totp:{credential_id}"),
                    kek_id=self.kek.kek_id,
                    created_at=now,
                )
            )
            session.commit()
        return self._enrolment(credential_id, seed, account_name)

    def pending_totp(self, person_id: str, credential_id: str, account_name: str) -> TotpEnrolment | None:
        """An enrolment the person has not confirmed yet (the page again, after a wrong code)."""
        with self.store.session() as session:
            record = session.get(MfaCredential, credential_id)
        if record is None or record.person_id != person_id or record.kind != TOTP or record.confirmed_at:
            return None
        return self._enrolment(credential_id, self._totp(record).secret, account_name)

    def _enrolment(self, credential_id: str, seed: str, account_name: str) -> TotpEnrolment:
        uri = pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
            name=account_name, issuer_name=self.settings.totp_issuer
        )
        svg = io.BytesIO()
        qr = segno.make(uri, error="m")
        qr.save(svg, kind="svg", scale=4, border=4, light="#fff", xmldecl=False, svgns=True)
        return TotpEnrolment(credential_id, seed, uri, svg.getvalue().decode())

    def _check_step(self, session: Session, record: MfaCredential, code: str) -> bool:
        """Is `code` valid now (this step, or one step either side), in a step not used yet?"""
        if len(code) != TOTP_DIGITS or not code.isdigit():
            return False
        totp = self._totp(record)
        now_step = int(time.time()) // TOTP_PERIOD
        for step in (now_step - 1, now_step, now_step + 1):
            if not hmac.compare_digest(totp.at(step * TOTP_PERIOD), code):
                continue
            claimed = session.execute(
                update(MfaCredential)
                .where(
                    col(MfaCredential.id) == record.id,
                    or_(col(MfaCredential.last_step).is_(None), col(MfaCredential.last_step) < step),
                )
                .values(last_step=step, last_used_at=utcnow())
            )
            return claimed.rowcount == 1  # type: ignore[attr-defined]
        return False

    def confirm_totp(
        self, person_id: str, credential_id: str, code: str, label: str, *, address: str | None = None
    ) -> Verified:
        """Confirm an enrolment with the first code the person's app shows."""
        code = normalise_code(code)
        with self.store.session() as session:
            if wait := self._throttled(session, person_id, address):
                return Verified(retry_after=wait)
            record = session.get(MfaCredential, credential_id)
            if (
                record is None
                or record.person_id != person_id
                or record.kind != TOTP
                or record.confirmed_at is not None
            ):
                return Verified()
            if not self._check_step(session, record, code):
                self._failed(session, person_id, address, TOTP)
                session.commit()
                return Verified()
            record.confirmed_at = utcnow()
            record.label = label[:128] or "TOTP"
            session.add(record)
            self.throttle.success(session, f"mfa:{person_id}")
            record_event(session, "mfa_enrolled", person_id=person_id, address=address, factor_kind=TOTP)
            session.commit()
        return Verified(amr="otp", method=TOTP)

    # -- verification -------------------------------------------------------------------------------

    def _throttled(self, session: Session, person_id: str, address: str | None) -> int:
        wait = self.throttle.wait_seconds(session, [f"mfa:{person_id}"])
        if wait:
            record_event(session, "mfa_throttled", person_id=person_id, address=address, retry_after=wait)
            session.commit()
        return wait

    def _failed(self, session: Session, person_id: str, address: str | None, method: str) -> None:
        key = f"mfa:{person_id}"
        locked = self.throttle.failure(session, key, lock_after=self.settings.login_lockout_after)
        record_event(session, "mfa_failed", person_id=person_id, address=address, method=method)
        if locked:
            record_event(session, "mfa_locked", person_id=person_id, address=address)

    def verify_code(self, person_id: str, code: str, *, address: str | None = None) -> Verified:
        """A code typed at the step-up page: a TOTP code of one of the person's apps, or a recovery code."""
        code = normalise_code(code)
        with self.store.session() as session:
            if wait := self._throttled(session, person_id, address):
                return Verified(retry_after=wait)
            method = TOTP if len(code) == TOTP_DIGITS and code.isdigit() else RECOVERY
            ok = False
            if method == TOTP:
                for record in session.execute(
                    self._confirmed(person_id).where(col(MfaCredential.kind) == TOTP)
                ).scalars():
                    if self._check_step(session, record, code):
                        ok = True
                        break
            elif session.execute(self._confirmed(person_id).limit(1)).first() is not None:
                used = session.execute(
                    update(RecoveryCode)
                    .where(
                        col(RecoveryCode.code_hash) == self.kek.mac(code, f"recovery:{person_id}"),
                        col(RecoveryCode.person_id) == person_id,
                        col(RecoveryCode.used_at).is_(None),
                    )
                    .values(used_at=utcnow())
                )
                ok = used.rowcount == 1  # type: ignore[attr-defined]
            if not ok:
                self._failed(session, person_id, address, method)
                session.commit()
                return Verified()
            self.throttle.success(session, f"mfa:{person_id}")
            record_event(session, "mfa_verified", person_id=person_id, address=address, method=method)
            session.commit()
        return Verified(amr="otp", method=method)

    # -- recovery codes -----------------------------------------------------------------------------

    def new_recovery_codes(self, person_id: str, *, address: str | None = None) -> list[str]:
        """Ten new codes (the old ones stop working), to show the person once."""
        codes = ["".join(secrets.choice(_CODE_ALPHABET) for _ in range(10)) for _ in range(RECOVERY_CODES)]
        now = utcnow()
        with self.store.session() as session:
            session.execute(delete(RecoveryCode).where(col(RecoveryCode.person_id) == person_id))
            for code in codes:
                session.add(
                    RecoveryCode(
                        code_hash=self.kek.mac(code, f"recovery:{person_id}"),
                        person_id=person_id,
                        created_at=now,
                    )
                )
            record_event(session, "mfa_recovery_codes", person_id=person_id, address=address)
            session.commit()
        return [f"{c[:5]}-{c[5:]}" for c in codes]

    # -- WebAuthn -----------------------------------------------------------------------------------

    def _challenge(self, sid: str, person_id: str, purpose: str, challenge: bytes) -> str:
        now = utcnow()
        challenge_id = secrets.token_urlsafe(24)
        with self.store.session() as session:
            session.execute(
                delete(MfaChallenge).where(
                    col(MfaChallenge.expires_at) < now - timedelta(seconds=CHALLENGE_LIFETIME)
                )
            )
            session.add(
                MfaChallenge(
                    id=challenge_id,
                    sid=sid,
                    person_id=person_id,
                    purpose=purpose,
                    challenge=bytes_to_base64url(challenge),
                    created_at=now,
                    expires_at=now + timedelta(seconds=CHALLENGE_LIFETIME),
                )
            )
            session.commit()
        return challenge_id

    def _claim_challenge(
        self, session: Session, challenge_id: str, sid: str, person_id: str, purpose: str
    ) -> bytes | None:
        """The challenge, once only, for the session and purpose it was made for, while fresh."""
        record = session.get(MfaChallenge, challenge_id)
        if (
            record is None
            or record.sid != sid
            or record.person_id != person_id
            or record.purpose != purpose
            or aware(record.expires_at) <= utcnow()
        ):
            return None
        claimed = session.execute(
            update(MfaChallenge)
            .where(col(MfaChallenge.id) == challenge_id, col(MfaChallenge.used_at).is_(None))
            .values(used_at=utcnow())
        )
        return base64url_to_bytes(record.challenge) if claimed.rowcount == 1 else None  # type: ignore[attr-defined]

    def _keys(self, session: Session, person_id: str) -> list[MfaCredential]:
        return list(
            session.execute(self._confirmed(person_id).where(col(MfaCredential.kind) == WEBAUTHN)).scalars()
        )

    def registration_options(self, sid: str, person: Person, user_name: str) -> tuple[str, str]:
        """(challenge id, PublicKeyCredentialCreationOptions as JSON) for navigator.credentials.create."""
        with self.store.session() as session:
            existing = self._keys(session, person.id)
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.settings.totp_issuer,
            user_id=person.id.encode(),
            user_name=user_name,
            user_display_name=" ".join(x for x in (person.given_name, person.family_name) if x),
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.DISCOURAGED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.credential_id or "")) for k in existing
            ],
        )
        challenge_id = self._challenge(sid, person.id, "register", options.challenge)
        return challenge_id, options_to_json(options)

    def finish_registration(
        self,
        sid: str,
        person_id: str,
        challenge_id: str,
        credential: str,
        label: str,
        *,
        address: str | None = None,
    ) -> Verified:
        with self.store.session() as session:
            challenge = self._claim_challenge(session, challenge_id, sid, person_id, "register")
            session.commit()
            if challenge is None:
                return Verified()
            try:
                verified = verify_registration_response(
                    credential=json.loads(credential),
                    expected_challenge=challenge,
                    expected_rp_id=self.rp_id,
                    expected_origin=self.origin,
                )
            except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as exc:
                record_event(
                    session, "mfa_enrol_failed", person_id=person_id, address=address, reason=str(exc)[:200]
                )
                session.commit()
                return Verified()
            amr = "swk" if verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE else "hwk"
            transports = json.loads(credential).get("response", {}).get("transports") or []
            now = utcnow()
            session.add(
                MfaCredential(
                    id=secrets.token_hex(16),
                    person_id=person_id,
                    kind=WEBAUTHN,
                    amr=amr,
                    label=label[:128] or "Security key",
                    credential_id=bytes_to_base64url(verified.credential_id),
                    public_key=bytes_to_base64url(verified.credential_public_key),
                    sign_count=verified.sign_count,
                    transports=[str(t) for t in transports][:8],
                    created_at=now,
                    confirmed_at=now,
                )
            )
            record_event(session, "mfa_enrolled", person_id=person_id, address=address, factor_kind=WEBAUTHN)
            session.commit()
        return Verified(amr=amr, method=WEBAUTHN)

    def authentication_options(self, sid: str, person_id: str) -> tuple[str, str] | None:
        """(challenge id, PublicKeyCredentialRequestOptions as JSON); None if the person has no key."""
        with self.store.session() as session:
            keys = self._keys(session, person_id)
        if not keys:
            return None
        options = generate_authentication_options(
            rp_id=self.rp_id,
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.credential_id or "")) for k in keys
            ],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return self._challenge(sid, person_id, "authenticate", options.challenge), options_to_json(options)

    def verify_assertion(
        self, sid: str, person_id: str, challenge_id: str, credential: str, *, address: str | None = None
    ) -> Verified:
        with self.store.session() as session:
            if wait := self._throttled(session, person_id, address):
                return Verified(retry_after=wait)
            challenge = self._claim_challenge(session, challenge_id, sid, person_id, "authenticate")
            session.commit()
            try:
                parsed = json.loads(credential)
                raw_id = bytes_to_base64url(base64url_to_bytes(str(parsed["rawId"])))
            except (ValueError, KeyError, TypeError):
                parsed, raw_id = None, ""
            record = next((k for k in self._keys(session, person_id) if k.credential_id == raw_id), None)
            try:
                if challenge is None or record is None or parsed is None:
                    raise InvalidAuthenticationResponse("unknown challenge or credential")
                verified = verify_authentication_response(
                    credential=parsed,
                    expected_challenge=challenge,
                    expected_rp_id=self.rp_id,
                    expected_origin=self.origin,
                    credential_public_key=base64url_to_bytes(record.public_key or ""),
                    credential_current_sign_count=record.sign_count,
                )
            except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError):
                self._failed(session, person_id, address, WEBAUTHN)
                session.commit()
                return Verified()
            record.sign_count = verified.new_sign_count
            record.last_used_at = utcnow()
            session.add(record)
            self.throttle.success(session, f"mfa:{person_id}")
            record_event(session, "mfa_verified", person_id=person_id, address=address, method=WEBAUTHN)
            session.commit()
            return Verified(amr=record.amr, method=WEBAUTHN)
