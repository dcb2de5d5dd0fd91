"""Token-signing keys: held in the database, private halves sealed with a key-encryption key (KEK).

The KEK comes from the environment or a file (`[gateway] key_encryption_key`), never from the database:
a copy of the database alone signs nothing. Each private key is sealed with AES-256-GCM under a key
derived from the KEK (HKDF-SHA256), the key id bound as associated data.

Rotation (`ght keys rotate`) follows the published-before-signing rule: a new key appears in the JWKS at
once but signs only from `not_before` (now + `key_publish_delay`), so relying parties that cache the
JWKS already know it when the first token it signed reaches them. The key it replaces stays published
until every token it signed has expired. Every process reads the keys from the database (cached for a
few seconds), so all processes switch together.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import select
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Store, utcnow

from .errors import KeyStoreError
from .models import SigningKey

SigningJwk = RSAKey | ECKey
_CACHE_SECONDS = 5.0
_SEALED_PREFIX = "aesgcm1:"


class KeyEncryption:
    """Seals and opens private keys with a key derived from the key-encryption key."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise KeyStoreError("the key-encryption key is too short: use at least 32 random characters")
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"ght-gateway/kek", info=b"signing-keys"
        ).derive(secret.encode())
        self._aead = AESGCM(key)
        self._mac_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"ght-gateway/kek", info=b"digests"
        ).derive(secret.encode())
        #: A fingerprint of the KEK (not the KEK): says which KEK sealed a key, without revealing it.
        self.kek_id = hashlib.sha256(b"kek-id" + key).hexdigest()[:16]

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> KeyEncryption:
        try:
            return cls(settings.key_encryption_key.read())
        except ValueError as exc:
            raise KeyStoreError(f"key-encryption key: {exc}") from None

    def seal(self, plaintext: bytes, kid: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, kid.encode())
        return _SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def mac(self, value: str, purpose: str) -> str:
        """A keyed digest (HMAC-SHA256 under a key derived from the KEK): for low-entropy secrets such
        as recovery codes, which a copy of the database alone must not let anyone guess offline."""
        return hmac.new(self._mac_key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def open(self, sealed: str, kid: str, kek_id: str) -> bytes:
        if kek_id != self.kek_id:
            raise KeyStoreError(
                f"signing key {kid} was sealed with another key-encryption key (fingerprint {kek_id}, "
                f"this one is {self.kek_id}): restore the original key_encryption_key"
            )
        raw = base64.b64decode(sealed.removeprefix(_SEALED_PREFIX))
        try:
            return self._aead.decrypt(raw[:12], raw[12:], kid.encode())
        except InvalidTag:
            raise KeyStoreError(f"signing key {kid} cannot be opened: it was altered") from None


@dataclass(frozen=True)
class KeyInfo:
    """What `ght keys list` shows of a key (never the private half)."""

    kid: str
    alg: str
    state: str  # "next" (published, not signing yet), "signing", "retiring" (verifies only), "expired"
    created_at: datetime
    not_before: datetime
    expires_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "signs_from": self.not_before.isoformat(),
            "unpublished_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def _generate(alg: str, kid: str) -> SigningJwk:
    parameters: Any = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters, private=True)
    return RSAKey.generate_key(2048, parameters=parameters, private=True)


def sign_jwt(header: dict[str, Any], claims: dict[str, Any], key: SigningJwk) -> str:
    """The compact JWS (RFC 7515) of a JWT's `claims`, signed with `key` by `header["alg"]` (RS256 or
    ES256), byte for byte what joserfc's `jwt.encode` makes (same JSON, same encoding), without its
    header and claim checks on our own values: those were a fifth of a token grant's CPU besides the
    signature itself (py-spy, benchmarks/README.md)."""
    alg = header["alg"]
    payload = json.dumps(claims, ensure_ascii=False, separators=(",", ":")).encode()  # as joserfc's
    signing_input = _encoded_header(tuple(header.items())) + b"." + _b64(payload)
    private = key.private_key
    if alg == "RS256" and isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256" and isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: R || S (RFC 7518 section 3.4)
    else:
        raise KeyStoreError(f"cannot sign with {alg} and a {type(key).__name__}")
    return (signing_input + b"." + _b64(signature)).decode("ascii")


def _b64(octets: bytes) -> bytes:
    return base64.urlsafe_b64encode(octets).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _encoded_header(items: tuple[tuple[str, Any], ...]) -> bytes:
    return _b64(json.dumps(dict(items), ensure_ascii=True, separators=(",", ":")).encode())


def _aware(when: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=utcnow().tzinfo)


class KeyStore:
    """The signing keys of one gateway (every process shares them through the database)."""

    def __init__(self, store: Store, settings: GatewaySettings) -> None:
        self.store = store
        self.settings = settings
        self._kek: KeyEncryption | None = None
        self._lock = threading.Lock()
        self._loaded_at = -1.0
        self._signing: tuple[str, str, SigningJwk] | None = None
        self._public: dict[str, Any] = {"keys": []}
        self._keyset = KeySet([])

    @property
    def kek(self) -> KeyEncryption:
        if self._kek is None:
            self._kek = KeyEncryption.from_settings(self.settings)
        return self._kek

    # -- administration --------------------------------------------------------------------------

    def rotate(self, publish_delay: int | None = None) -> KeyInfo:
        """Create a key: published now, signing after `publish_delay` (default: the configured delay)."""
        delay = self.settings.key_publish_delay if publish_delay is None else publish_delay
        now = utcnow()
        not_before = now + timedelta(seconds=delay)
        kid = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
        jwk = _generate(self.settings.signing_alg, kid)
        sealed = self.kek.seal(jwk.as_pem(private=True), kid)
        # Tokens signed by the keys this one replaces stay verifiable until they have all expired.
        longest = max(self.settings.access_token_lifetime, self.settings.id_token_lifetime)
        retire_at = not_before + timedelta(seconds=longest + 60)
        with self.store.session() as session:
            foreign = session.execute(
                select(col(SigningKey.kid)).where(col(SigningKey.kek_id) != self.kek.kek_id).limit(1)
            ).first()
            if foreign is not None:
                raise KeyStoreError(
                    f"signing key {foreign[0]} was sealed with another key-encryption key: "
                    "restore the original key_encryption_key before rotating"
                )
            for key in session.execute(
                select(SigningKey).where(col(SigningKey.expires_at).is_(None))
            ).scalars():
                key.expires_at = retire_at
            session.add(
                SigningKey(
                    kid=kid,
                    alg=self.settings.signing_alg,
                    public_jwk=jwk.as_dict(private=False),
                    private_key=sealed,
                    kek_id=self.kek.kek_id,
                    created_at=now,
                    not_before=not_before,
                )
            )
            session.commit()
        self._loaded_at = -1.0
        return self._info(kid)

    def ensure_key(self) -> None:
        """Create a first key (signing at once) in a gateway that has none."""
        with self.store.session() as session:
            if session.execute(select(col(SigningKey.kid)).limit(1)).first() is None:
                session.close()
                self.rotate(publish_delay=0)

    def all(self) -> list[KeyInfo]:
        with self.store.session() as session:
            keys = list(session.execute(select(SigningKey).order_by(col(SigningKey.created_at))).scalars())
        now = utcnow()
        signing = self._pick_signing(keys, now)
        infos = []
        for key in keys:
            expires = _aware(key.expires_at) if key.expires_at else None
            if signing is not None and key.kid == signing.kid:
                state = "signing"
            elif _aware(key.not_before) > now:
                state = "next"
            elif expires is not None and expires <= now:
                state = "expired"
            else:
                state = "retiring"
            infos.append(
                KeyInfo(key.kid, key.alg, state, _aware(key.created_at), _aware(key.not_before), expires)
            )
        return infos

    def _info(self, kid: str) -> KeyInfo:
        return next(k for k in self.all() if k.kid == kid)

    @staticmethod
    def _pick_signing(keys: list[SigningKey], now: datetime) -> SigningKey | None:
        ready = [k for k in keys if _aware(k.not_before) <= now]
        return max(ready, key=lambda k: _aware(k.not_before)) if ready else None

    # -- use --------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < _CACHE_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._loaded_at < _CACHE_SECONDS:
                return
            now = utcnow()
            with self.store.session() as session:
                keys = list(session.execute(select(SigningKey)).scalars())
            published = [k for k in keys if k.expires_at is None or _aware(k.expires_at) > now]
            signing = self._pick_signing(published, now)
            if signing is not None and (self._signing is None or self._signing[0] != signing.kid):
                pem = self.kek.open(signing.private_key, signing.kid, signing.kek_id)
                parameters: Any = {"kid": signing.kid, "alg": signing.alg, "use": "sig"}
                jwk: SigningJwk = (
                    ECKey.import_key(pem, parameters)
                    if signing.alg == "ES256"
                    else RSAKey.import_key(pem, parameters)
                )
                self._signing = (signing.kid, signing.alg, jwk)
            elif signing is None:
                self._signing = None
            self._public = {"keys": [dict(k.public_jwk) for k in published]}
            self._keyset = KeySet.import_key_set(self._public)  # type: ignore[arg-type]
            self._loaded_at = time.monotonic()

    def fresh(self) -> bool:
        """True while the cached keys are recent enough to sign without reading the database."""
        return self._signing is not None and time.monotonic() - self._loaded_at < _CACHE_SECONDS

    def signing_key(self) -> tuple[str, str, SigningJwk]:
        """(kid, alg, private key) of the key that signs now. Raises KeyStoreError when there is none."""
        self._refresh()
        if self._signing is None:
            raise KeyStoreError("no signing key is ready: run `ght keys rotate`")
        return self._signing

    def jwks(self) -> dict[str, Any]:
        """The public keys relying parties verify tokens with (RFC 7517), next and retiring ones included."""
        self._refresh()
        return self._public

    def verification_keys(self) -> KeySet:
        self._refresh()
        return self._keyset

    @property
    def algorithms(self) -> list[str]:
        """The only algorithms the gateway accepts on its own tokens: never `none`, never HS*."""
        return sorted({str(k["alg"]) for k in self.jwks()["keys"]} | {self.settings.signing_alg})
