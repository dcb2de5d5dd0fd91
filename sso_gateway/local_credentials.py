"""Local passwords (argon2id) for people no hospital directory holds: temporary staff, students.

Set with `ght people set-password`. A person who has one signs in with it; everyone else is checked
against their hospital's directory (`passthrough.py`).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from directory_sync.store import Person, utcnow

from .errors import GatewayError
from .models import LocalCredential

#: argon2id with OWASP's minimum parameters (Password Storage Cheat Sheet: m=19 MiB, t=2, p=1): about
#: 28 ms of CPU per check here, where argon2-cffi's default (RFC 9106's second recommendation, 64 MiB,
#: t=3, p=4) took about 200 ms and capped local sign-ins at a dozen per second on 2 cores. Hashes made
#: with other parameters are still verified, and rehashed with these at the next successful sign-in.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
MIN_LENGTH = 12


def set_password(session: Session, person_id: str, password: str) -> None:
    """Store (or replace) a person's local password. The caller commits."""
    if len(password) < MIN_LENGTH:
        raise GatewayError(f"the password must have at least {MIN_LENGTH} characters")
    if session.get(Person, person_id) is None:
        raise GatewayError(f"no person {person_id!r}")
    credential = session.get(LocalCredential, person_id) or LocalCredential(
        person_id=person_id, password_hash=""
    )
    credential.password_hash = _hasher.hash(password)
    credential.updated_at = utcnow()
    session.add(credential)


def has_local_password(session: Session, person_id: str) -> bool:
    return session.get(LocalCredential, person_id) is not None


def verify_local_password(session: Session, person_id: str, password: str) -> bool:
    """True if `password` is the person's local password (rehashing it if the parameters changed)."""
    credential = session.get(LocalCredential, person_id)
    if credential is None or not password:
        return False
    try:
        _hasher.verify(credential.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
    if _hasher.check_needs_rehash(credential.password_hash):
        credential.password_hash = _hasher.hash(password)
        session.add(credential)
    return True
