"""Signing a person in: find them in the territorial directory, check the password, throttle, audit.

A person types their territorial login, their email, a hospital login as `SITE\\login`, or a UPN
(`login@domain`: an Active Directory account's userPrincipalName, found among the accounts whose login
is the UPN or its part before the @, the usual convention). The lookup is SQL with bound parameters;
nothing typed reaches an LDAP filter or DN.
The password is checked with the person's local credential if IT set one (`ght people set-password`),
otherwise by an LDAP bind on one of their active accounts: the account named by `SITE\\login` first,
then the home site's (the person's earliest active affiliation), then the others, moving on only when a
directory is down. Every failure (unknown login, wrong password, suspended person, every directory
down) gives the person the same answer; the audit trail says which it was.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.store import Account, AccountState, Affiliation, Person, PersonStatus, Store, sa_table

from .audit import record_event
from .local_credentials import verify_local_password
from .metrics import SIGNINS
from .models import LocalCredential
from .passthrough import BindOutcome, PassThrough
from .throttle import Throttle

MAX_IDENTIFIER = 256


@dataclass(frozen=True)
class Match:
    """The person a typed identifier designates, and the account it named, if it named one."""

    person: Person
    account_id: int | None = None


def _one_person(session: Session, person_ids: set[str]) -> Person | None:
    if len(person_ids) != 1:
        return None  # nobody, or ambiguous: `SITE\login` resolves it
    return session.get(Person, next(iter(person_ids)))


def find_person(session: Session, identifier: str) -> Match | None:
    """The person designated by a territorial login, email, `SITE\\login` or UPN; None if none or several."""
    text = identifier.strip()
    if not text or len(text) > MAX_IDENTIFIER:
        return None
    site, backslash, login = text.rpartition("\\")
    if backslash:  # the account and its person in one query (the usual sign-in: HOSPITAL\login)
        found = session.execute(_BY_SITE_LOGIN, {"site": site.lower(), "login": login.lower()}).all()
        if len({person.id for person, _ in found}) != 1:
            return None  # nobody, or ambiguous
        return Match(found[0][0], found[0][1])
    accounts = select(Account).where(col(Account.state) != AccountState.DELETED)
    if "@" in text:
        people = {
            p
            for p in session.execute(
                select(col(Person.id)).where(func.lower(col(Person.email)) == text.lower())
            ).scalars()
        }
        person = _one_person(session, people)
        if person:
            return Match(person)
        local = text.split("@", 1)[0].lower()
        rows = [
            a
            for a in session.execute(
                accounts.where(func.lower(col(Account.login)).in_([text.lower(), local]))
            ).scalars()
            if a.login.lower() == text.lower()
            or str(a.attributes.get("userprincipalname", "")).lower() == text.lower()
            or str((a.facts or {}).get("upn", "")).lower() == text.lower()  # Active Directory's UPN
        ]
        person = _one_person(session, {a.person_id for a in rows})
        return Match(person, rows[0].id if len(rows) == 1 else None) if person else None
    territorial_login = getattr(Person, "login", None)  # the stored territorial login, once it exists
    if territorial_login is not None:
        people = set(
            session.execute(
                select(col(Person.id)).where(func.lower(territorial_login) == text.lower())
            ).scalars()
        )
        if people:
            return Match(person) if (person := _one_person(session, people)) else None
    rows = list(session.execute(accounts.where(func.lower(col(Account.login)) == text.lower())).scalars())
    person = _one_person(session, {a.person_id for a in rows})
    return Match(person, rows[0].id if len(rows) == 1 else None) if person else None


class Candidate(NamedTuple):
    """An account whose directory may check the password."""

    id: int
    site: str
    dn: str
    anchor: str
    started_at: datetime  # the person's earliest active affiliation at that site


def candidate_accounts(session: Session, match: Match) -> tuple[bool, list[Candidate]]:
    """Whether IT set the person a local password, and the person's enabled accounts at sites where
    they are active: the named one, the home site's, then the others."""
    earliest: dict[int, Candidate] = {}
    local = None
    for row in session.execute(_CANDIDATES, {"person": match.person.id}):
        local = row.local is not None  # read with the accounts: one round trip less per sign-in
        candidate = Candidate(int(row[0] or 0), row[1], row[2], row[3], row[4])
        if candidate.id not in earliest or candidate.started_at < earliest[candidate.id].started_at:
            earliest[candidate.id] = candidate
    if local is None:  # no account: the local password is looked up on its own
        local = session.execute(_HAS_LOCAL_PASSWORD, {"person": match.person.id}).first() is not None
    accounts = sorted(earliest.values(), key=lambda a: (a.id != match.account_id, a.started_at, a.site))
    return local, accounts


# Built once (composing a statement costs more than running it): the sign-in's lookups.
_BY_SITE_LOGIN = (
    select(Person, col(Account.id))
    .join(Account, col(Account.person_id) == col(Person.id))
    .where(
        func.lower(col(Account.site)) == bindparam("site"),
        func.lower(col(Account.login)) == bindparam("login"),
        col(Account.state) != AccountState.DELETED,
    )
    .order_by(col(Account.id))
)
_HAS_LOCAL_PASSWORD = select(sa_table(LocalCredential).c.person_id).where(
    sa_table(LocalCredential).c.person_id == bindparam("person")
)
_CANDIDATES = (
    select(
        col(Account.id),
        col(Account.site),
        col(Account.dn),
        col(Account.anchor),
        col(Affiliation.started_at),
        _HAS_LOCAL_PASSWORD.scalar_subquery().label("local"),
    )
    .join(
        Affiliation,
        (col(Affiliation.person_id) == col(Account.person_id)) & (col(Affiliation.site) == col(Account.site)),
    )
    .where(
        col(Account.person_id) == bindparam("person"),
        col(Account.state) == AccountState.ENABLED,
        col(Affiliation.active).is_(True),
    )
)


class Failure(enum.StrEnum):
    UNKNOWN_LOGIN = "unknown_login"
    WRONG_PASSWORD = "wrong_password"
    NOT_ACTIVE = "person_not_active"
    DIRECTORY_DOWN = "directory_unavailable"
    NO_CREDENTIAL = "no_credential"
    THROTTLED = "throttled"


@dataclass
class SignInResult:
    person: Person | None = None
    amr: list[str] = field(default_factory=list)
    failure: Failure | None = None
    retry_after: int = 0
    #: Where the password was checked: the site whose directory answered, or "local" (the gateway's).
    site: str | None = None
    #: What the caller's `on_success` returned (written in the sign-in's own transaction).
    after: Any = None

    @property
    def ok(self) -> bool:
        return self.person is not None


class SignIn:
    """Checks a login and password once, throttled per account and per address, and audits it."""

    def __init__(self, store: Store, settings: GatewaySettings, passthrough: PassThrough) -> None:
        self.store = store
        self.settings = settings
        self.passthrough = passthrough
        self.throttle = Throttle(settings)

    def __call__(
        self,
        identifier: str,
        password: str,
        address: str,
        on_success: Callable[[Session, SignInResult], Any] | None = None,
        session: Session | None = None,
    ) -> SignInResult:
        """`on_success(session, result)`: called on a success, in the transaction that audits it
        (the caller adds the browser session there: one commit per sign-in); kept in `result.after`.
        `session`: the caller's database session to work in (it is committed here), else a new one."""
        with contextlib.nullcontext(session) if session is not None else self.store.session() as session:
            match = find_person(session, identifier)
            digest = hashlib.sha256(identifier.strip().lower().encode()).hexdigest()[:32]
            account_key = f"person:{match.person.id}" if match else f"login:{digest}"
            address_key = f"address:{address}"
            wait = self.throttle.wait_seconds(session, [account_key, address_key])
            if wait:
                record_event(
                    session,
                    "signin_throttled",
                    person_id=match.person.id if match else None,
                    address=address,
                    retry_after=wait,
                )
                session.commit()
                SIGNINS.labels(str(Failure.THROTTLED), "none").inc()
                return SignInResult(failure=Failure.THROTTLED, retry_after=wait)
            result = self._check(session, match, password)
            person_id = match.person.id if match else None
            if result.ok:
                if on_success is not None:  # first: its reads come before this transaction's writes
                    result.after = on_success(session, result)
                self.throttle.success(session, account_key)
                record_event(session, "signin", person_id=person_id, address=address, amr=result.amr)
            else:
                assert result.failure is not None
                counted = result.failure is not Failure.DIRECTORY_DOWN
                locked = counted and self.throttle.failure(
                    session, account_key, lock_after=self.settings.login_lockout_after
                )
                if counted:
                    limit = self.settings.login_ip_lockout_after
                    self.throttle.failure(session, address_key, lock_after=limit, free=limit // 2)
                record_event(
                    session,
                    "signin_failed",
                    person_id=person_id,
                    address=address,
                    reason=str(result.failure),
                    login_digest=None if match else digest,
                )
                if locked:
                    record_event(session, "account_locked", person_id=person_id, address=address)
            session.commit()
            SIGNINS.labels("success" if result.ok else str(result.failure), result.site or "none").inc()
            return result

    def _check(self, session: Session, match: Match | None, password: str) -> SignInResult:
        if match is None:
            return SignInResult(failure=Failure.UNKNOWN_LOGIN)
        person = match.person
        local, accounts = candidate_accounts(session, match)
        if local:
            if not verify_local_password(session, person.id, password):
                return SignInResult(failure=Failure.WRONG_PASSWORD, site="local")
            outcome_ok = True
            amr = ["pwd"]
            checked: str | None = "local"
        else:
            outcome_ok = False
            amr = ["pwd"]
            tried = False
            checked = None
            for account in accounts:
                if not self.passthrough.handles(account.site):
                    continue
                tried, checked = True, account.site
                outcome = self.passthrough.check(account.site, account.dn, account.anchor, password)
                if outcome is BindOutcome.ACCEPTED:
                    outcome_ok = True
                    break
                if outcome is BindOutcome.REJECTED:
                    return SignInResult(failure=Failure.WRONG_PASSWORD, site=checked)
            if not outcome_ok:
                failure = Failure.DIRECTORY_DOWN if tried else Failure.NO_CREDENTIAL
                return SignInResult(failure=failure, site=checked)
        # Checked after the password, so that a suspended person's answer looks like anyone's.
        if person.status != PersonStatus.ACTIVE:
            return SignInResult(failure=Failure.NOT_ACTIVE, site=checked)
        return SignInResult(person=person, amr=amr, site=checked)
