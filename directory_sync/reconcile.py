"""Reconciliation: from one site's mapped accounts to a plan, and from a plan to the directory.

Planning reads the directory and changes nothing; a plan is a value that can be printed (dry run),
tested and applied. Each account read from the source is in one *situation* (midPoint's words):

- linked: its anchor is already linked to a person; the account is *updated* if it changed;
- unlinked: a person is found for it (by a valid RPPS); it is *linked* to that person;
- unmatched: no person is found; a person is *created*;
- deleted: it was linked, and a source that was read completely no longer has it; it is *closed*.

Applying a plan inserts and updates accounts, then recomputes the affiliations and people it touched
from their accounts (so the directory is always derived the same way, whatever the order of events).
A person with no active affiliation left is suspended, never deleted. Applying runs inside the caller's
transaction: the caller commits once per site, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from .mapping import MappedAccount
from .store import Account, AccountState, Affiliation, Person, PersonStatus, Site, new_person_id, sa_table

#: Person attributes, derived from the person's accounts.
PERSON_FIELDS = ("family_name", "given_name", "email", "rpps")
#: Affiliation attributes, derived from the person's accounts at that site.
AFFILIATION_FIELDS = ("profession", "department", "title", "employee_id")
_CHUNK = 500


class ActionKind(enum.StrEnum):
    CREATE = "create"  # unmatched: a new person with this account
    LINK = "link"  # unlinked: the account joins an existing person
    UPDATE = "update"  # linked: the account's values changed
    CLOSE = "close"  # deleted: gone from a completely read source
    REJECT = "reject"  # unusable record (no login, no family name, duplicate anchor)


@dataclass(slots=True)
class AccountAction:
    kind: ActionKind
    anchor: str
    login: str
    reason: str
    person_id: str | None = None
    account: MappedAccount | None = None
    account_id: int | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind.value,
            "anchor": self.anchor,
            "login": self.login,
            "person": self.person_id,
            "reason": self.reason,
            "changes": {k: {"from": old, "to": new} for k, (old, new) in self.changes.items()},
        }


@dataclass
class SitePlan:
    """What one full sync of one site would change."""

    site: str
    complete: bool
    read: int = 0
    unchanged: int = 0
    actions: list[AccountAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind is kind)

    def of(self, kind: ActionKind) -> Iterator[AccountAction]:
        return (a for a in self.actions if a.kind is kind)


@dataclass(slots=True)
class _Known:
    id: int
    fingerprint: str
    person_id: str
    state: str


class SitePlanner:
    """Builds a `SitePlan` from the accounts of one site, streamed in as they are read."""

    def __init__(self, session: Session, site: str) -> None:
        self.session = session
        self.plan = SitePlan(site=site, complete=False)
        self._known: dict[str, _Known] = {
            row.anchor: _Known(row.id, row.fingerprint, row.person_id, row.state)
            for row in session.execute(
                select(
                    col(Account.id),
                    col(Account.anchor),
                    col(Account.fingerprint),
                    col(Account.person_id),
                    col(Account.state),
                ).where(col(Account.site) == site)
            )
        }
        self._people_by_rpps: dict[str, set[str]] = defaultdict(set)
        for rpps, person_id in session.execute(
            select(col(Person.rpps), col(Person.id)).where(col(Person.rpps).is_not(None))
        ):
            if rpps:
                self._people_by_rpps[rpps].add(person_id)
        self._seen: set[str] = set()

    def add(self, account: MappedAccount) -> None:
        plan = self.plan
        plan.read += 1
        if account.deleted:
            self._deleted(account)
            return
        plan.warnings.extend(f"{account.dn}: {w}" for w in account.warnings)
        if account.anchor in self._seen:
            plan.actions.append(
                AccountAction(
                    ActionKind.REJECT, account.anchor, account.login, "the anchor appears twice in the source"
                )
            )
            return
        self._seen.add(account.anchor)
        problem = _unusable(account)
        if problem:
            plan.actions.append(
                AccountAction(
                    ActionKind.REJECT, account.anchor, account.login[:64], f"{problem} ({account.dn[:200]})"
                )
            )
            return
        known = self._known.get(account.anchor)
        if known is not None:
            if known.fingerprint == account.fingerprint and known.state != AccountState.DELETED:
                plan.unchanged += 1
                return
            reason = (
                "reappeared in the source" if known.state == AccountState.DELETED else "changed in the source"
            )
            plan.actions.append(
                AccountAction(
                    ActionKind.UPDATE,
                    account.anchor,
                    account.login,
                    reason,
                    known.person_id,
                    account,
                    known.id,
                )
            )
            return
        rpps = account.get("rpps")
        candidates = self._people_by_rpps.get(rpps, set()) if rpps else set()
        if len(candidates) == 1:
            (person_id,) = candidates
            plan.actions.append(
                AccountAction(
                    ActionKind.LINK, account.anchor, account.login, f"same RPPS {rpps}", person_id, account
                )
            )
            return
        person_id = new_person_id()
        reason = "no person with this RPPS" if rpps else "no national identifier to match on"
        if len(candidates) > 1:
            reason = f"RPPS {rpps} is held by {len(candidates)} people: not linked to any"
        elif rpps:
            self._people_by_rpps[rpps].add(person_id)
        plan.actions.append(
            AccountAction(ActionKind.CREATE, account.anchor, account.login, reason, person_id, account)
        )

    def _deleted(self, account: MappedAccount) -> None:
        """A deletion reported by the source itself (AD tombstone, syncrepl delete notice)."""
        self._seen.add(account.anchor)
        known = self._known.get(account.anchor)
        if known is None or known.state == AccountState.DELETED:
            self.plan.unchanged += 1
            return
        self.plan.actions.append(
            AccountAction(
                ActionKind.CLOSE, account.anchor, "", "deleted in the source", known.person_id, None, known.id
            )
        )

    def finish(self, *, complete: bool) -> SitePlan:
        """Close the accounts not seen, but only if the source was read completely.

        A delta read (only what changed) is not complete: it closes only the deletions it reports.
        """
        plan = self.plan
        plan.complete = complete
        if complete:
            for anchor, known in self._known.items():
                if anchor not in self._seen and known.state != AccountState.DELETED:
                    plan.actions.append(
                        AccountAction(
                            ActionKind.CLOSE,
                            anchor,
                            "",
                            "no longer in the source (read completely)",
                            known.person_id,
                            None,
                            known.id,
                        )
                    )
        self._describe_changes()
        return plan

    def _describe_changes(self) -> None:
        """Fill in what each update and close changes (from -> to), for the plan's reader."""
        actions = [a for a in self.plan.actions if a.kind in (ActionKind.UPDATE, ActionKind.CLOSE)]
        for chunk in _chunks(actions, _CHUNK):
            by_id = {a.account_id: a for a in chunk}
            rows = self.session.execute(
                select(
                    col(Account.id),
                    col(Account.login),
                    col(Account.dn),
                    col(Account.state),
                    col(Account.attributes),
                ).where(col(Account.id).in_(list(by_id)))
            )
            for row in rows:
                action = by_id[row.id]
                action.login = action.login or row.login
                if action.account is None:
                    action.changes["state"] = (row.state, AccountState.DELETED.value)
                    continue
                new = action.account
                old_values: dict[str, str] = row.attributes or {}
                for name in sorted(set(old_values) | set(new.values)):
                    if old_values.get(name) != new.values.get(name):
                        action.changes[name] = (old_values.get(name), new.values.get(name))
                if row.dn != new.dn:
                    action.changes["dn"] = (row.dn, new.dn)
                state = _state(new)
                if row.state != state:
                    action.changes["state"] = (row.state, state)


def _unusable(account: MappedAccount) -> str | None:
    """Why an account cannot be stored, or None."""
    for name in ("login", "family_name"):
        if not account.get(name):
            return f"no {name} after mapping"
    if len(account.anchor) > 255:
        return "anchor longer than 255 characters"
    if len(account.login) > 255:
        return "login longer than 255 characters"
    return None


def _state(account: MappedAccount) -> str:
    return AccountState.ENABLED if account.enabled else AccountState.DISABLED


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------------
# Deriving people and affiliations from accounts (the same rule wherever a person is touched).


@dataclass(slots=True)
class _AccountView:
    id: int
    site: str
    state: str
    attributes: dict[str, str]
    first_seen_at: datetime


def _precedence(account: _AccountView) -> tuple[int, datetime, int]:
    # Active accounts first, then the oldest: the site where the person was first known keeps
    # authority on their names, so a new site does not rename anyone.
    return (0 if account.state == AccountState.ENABLED else 1, account.first_seen_at, account.id)


def derive_person(accounts: Iterable[_AccountView]) -> dict[str, str | None]:
    ordered = sorted((a for a in accounts if a.state != AccountState.DELETED), key=_precedence)
    if not ordered:
        return {}
    values: dict[str, str | None] = {}
    for name in PERSON_FIELDS:
        values[name] = next((a.attributes[name] for a in ordered if a.attributes.get(name)), None)
    return values


def derive_affiliation(accounts: Iterable[_AccountView]) -> dict[str, Any] | None:
    ordered = sorted((a for a in accounts if a.state != AccountState.DELETED), key=_precedence)
    if not ordered:
        return None
    values: dict[str, Any] = {name: ordered[0].attributes.get(name) for name in AFFILIATION_FIELDS}
    values["active"] = ordered[0].state == AccountState.ENABLED
    return values


@dataclass
class ApplyResult:
    suspended: int = 0
    reactivated: int = 0


# Core tables: bulk statements go straight to executemany, without the ORM's unit of work.
_PERSON = sa_table(Person)
_ACCOUNT = sa_table(Account)
_AFFILIATION = sa_table(Affiliation)


def apply_plan(session: Session, plan: SitePlan, site: Site, now: datetime) -> ApplyResult:
    """Write `plan` into the directory, inside the caller's transaction."""
    session.merge(site)
    session.flush()

    # Unmatched accounts: a new person each, whose data is derived from that one account.
    creates = list(plan.of(ActionKind.CREATE))
    for chunk in _chunks(creates, _CHUNK):
        people, affiliations = [], []
        for action in chunk:
            view = _view_of(action, now)
            people.append(
                {
                    "id": action.person_id,
                    **derive_person([view]),
                    "status": PersonStatus.ACTIVE,
                    "created_at": now,
                    "updated_at": now,
                    "suspended_at": None,
                }
            )
            wanted = derive_affiliation([view]) or {"active": False}
            affiliations.append(
                {
                    "person_id": action.person_id,
                    "site": plan.site,
                    "started_at": now,
                    "ended_at": None if wanted["active"] else now,
                    **wanted,
                }
            )
        session.execute(insert(_PERSON), people)
        session.execute(
            insert(_ACCOUNT), [_account_row(a, plan.site, now) | {"first_seen_at": now} for a in chunk]
        )
        session.execute(insert(_AFFILIATION), affiliations)

    # Linked, unlinked and deleted accounts change people who have other accounts: recompute them.
    links = list(plan.of(ActionKind.LINK))
    for chunk in _chunks(links, _CHUNK):
        session.execute(
            insert(_ACCOUNT), [_account_row(a, plan.site, now) | {"first_seen_at": now} for a in chunk]
        )
    updates = list(plan.of(ActionKind.UPDATE))
    for chunk in _chunks(updates, _CHUNK):
        session.execute(
            update(_ACCOUNT).where(_ACCOUNT.c.id == bindparam("account_id")),
            [
                _account_row(a, plan.site, now) | {"account_id": a.account_id, "deleted_at": None}
                for a in chunk
            ],
        )
    closes = list(plan.of(ActionKind.CLOSE))
    for chunk in _chunks(closes, _CHUNK):
        session.execute(
            update(_ACCOUNT).where(_ACCOUNT.c.id == bindparam("account_id")),
            [
                {
                    "account_id": a.account_id,
                    "state": AccountState.DELETED,
                    "deleted_at": now,
                    "last_changed_at": now,
                }
                for a in chunk
            ],
        )
    touched = {a.person_id for a in links + updates + closes if a.person_id}
    return refresh_people(session, touched, now)


def _view_of(action: AccountAction, now: datetime) -> _AccountView:
    account = action.account
    assert account is not None
    return _AccountView(0, account.site, _state(account), dict(account.values), now)


def _account_row(action: AccountAction, site: str, now: datetime) -> dict[str, Any]:
    account = action.account
    assert account is not None
    return {
        "site": site,
        "anchor": account.anchor,
        "dn": account.dn,
        "login": account.login,
        "state": _state(account),
        "person_id": action.person_id,
        "attributes": dict(account.values),
        "fingerprint": account.fingerprint,
        "last_changed_at": now,
    }


def refresh_people(session: Session, person_ids: Iterable[str], now: datetime) -> ApplyResult:
    """Recompute the affiliations and attributes of these people from their accounts."""
    result = ApplyResult()
    ids = sorted(person_ids)
    for chunk in _chunks(ids, _CHUNK):
        accounts: dict[str, list[_AccountView]] = defaultdict(list)
        for row in session.execute(
            select(
                _ACCOUNT.c.id,
                _ACCOUNT.c.person_id,
                _ACCOUNT.c.site,
                _ACCOUNT.c.state,
                _ACCOUNT.c.attributes,
                _ACCOUNT.c.first_seen_at,
            ).where(_ACCOUNT.c.person_id.in_(chunk))
        ):
            accounts[row.person_id].append(
                _AccountView(row.id, row.site, row.state, row.attributes or {}, row.first_seen_at)
            )
        affiliations = {
            (row.person_id, row.site): row
            for row in session.execute(select(_AFFILIATION).where(_AFFILIATION.c.person_id.in_(chunk)))
        }
        people = {row.id: row for row in session.execute(select(_PERSON).where(_PERSON.c.id.in_(chunk)))}
        new_affiliations: list[dict[str, Any]] = []
        changed_affiliations: list[dict[str, Any]] = []
        changed_people: list[dict[str, Any]] = []
        for person_id in chunk:
            by_site: dict[str, list[_AccountView]] = defaultdict(list)
            for account in accounts[person_id]:
                by_site[account.site].append(account)
            any_active = False
            for site_code, site_accounts in by_site.items():
                wanted = derive_affiliation(site_accounts) or {"active": False}
                any_active = any_active or wanted["active"]
                existing = affiliations.get((person_id, site_code))
                if existing is None:
                    new_affiliations.append(
                        {
                            "person_id": person_id,
                            "site": site_code,
                            "started_at": now,
                            "ended_at": None if wanted["active"] else now,
                            **wanted,
                        }
                    )
                    continue
                if existing.active and not wanted["active"]:
                    wanted["ended_at"] = now
                elif wanted["active"] and not existing.active:
                    wanted["started_at"], wanted["ended_at"] = now, None
                changes = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
                if changes:
                    changed_affiliations.append(
                        {"affiliation_id": existing.id, **_full(existing, changes, _AFFILIATION_COLUMNS)}
                    )
            person = people[person_id]
            changes = {
                name: value
                for name, value in derive_person(accounts[person_id]).items()
                if getattr(person, name) != value and not (name == "family_name" and not value)
            }
            status = PersonStatus.ACTIVE if any_active else PersonStatus.SUSPENDED
            if person.status == PersonStatus.ACTIVE and status == PersonStatus.SUSPENDED:
                changes.update(status=status, suspended_at=now)
                result.suspended += 1
            elif person.status != PersonStatus.ACTIVE and status == PersonStatus.ACTIVE:
                changes.update(status=status, suspended_at=None)
                result.reactivated += 1
            if changes:
                changed_people.append(
                    {"person_id": person_id, **_full(person, changes, _PERSON_COLUMNS), "updated_at": now}
                )
        if new_affiliations:
            session.execute(insert(_AFFILIATION), new_affiliations)
        if changed_affiliations:
            session.execute(
                update(_AFFILIATION).where(_AFFILIATION.c.id == bindparam("affiliation_id")),
                changed_affiliations,
            )
        if changed_people:
            session.execute(update(_PERSON).where(_PERSON.c.id == bindparam("person_id")), changed_people)
    return result


_PERSON_COLUMNS = (*PERSON_FIELDS, "status", "suspended_at")
_AFFILIATION_COLUMNS = (*AFFILIATION_FIELDS, "active", "started_at", "ended_at")


def _full(row: Any, changes: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """Every updatable column of `row`, with `changes` applied: executemany needs the same keys in
    every parameter set."""
    return {name: changes.get(name, getattr(row, name)) for name in columns}
