"""The review queue: humans decide what correlation could not, and their decisions are remembered.

- link: the disputed account joins the chosen candidate; its provisional person, left without
  accounts, is marked merged into the candidate (kept, with its login, never reused).
- new: the account stays a person of its own; correlation never asks again for it.
- split: undo a link made earlier (by a rule or a human): the account leaves the person for a new
  person of its own, both people are recomputed from their remaining accounts, and correlation never
  proposes that person for that account again.

Every decision is an audit event naming the administrator. A decided case is never reopened: the
decision is stored per source account (site and anchor) and consulted before any rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from .config import CorrelationConfig
from .errors import GhtError, NotFound
from .reconcile import Actor, LoginAllocator, refresh_people, write_audit
from .store import (
    Account,
    AccountState,
    Affiliation,
    LinkDecision,
    Person,
    PersonStatus,
    ReviewCase,
    ReviewStatus,
    new_person_id,
    sa_table,
    utcnow,
)

_PERSON = sa_table(Person)


class ReviewError(GhtError):
    """A review decision that cannot be made as asked."""


@dataclass
class CaseView:
    case: ReviewCase
    account: Account
    candidates: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.id,
            "status": c.status,
            "site": c.site,
            "login": self.account.login,
            "dn": self.account.dn,
            "account": dict(self.account.attributes),
            "provisional_person": c.person_id,
            "reason": c.reason,
            "opened_at": c.opened_at.isoformat(),
            "candidates": self.candidates,
            "decided_by": c.decided_by,
            "decided_at": c.decided_at.isoformat() if c.decided_at else None,
            "decision_note": c.decision_note,
        }


def list_cases(
    session: Session, *, status: str | None = ReviewStatus.OPEN, site: str | None = None
) -> list[CaseView]:
    query = select(ReviewCase).order_by(col(ReviewCase.opened_at), col(ReviewCase.id))
    if status:
        query = query.where(col(ReviewCase.status) == status)
    if site:
        query = query.where(col(ReviewCase.site) == site)
    return [_view(session, case) for case in session.execute(query).scalars()]


def get_case(session: Session, case_id: int) -> CaseView:
    case = session.get(ReviewCase, case_id)
    if case is None:
        raise NotFound(f"no review case {case_id}: see `ght review list`")
    return _view(session, case)


def _view(session: Session, case: ReviewCase) -> CaseView:
    account = session.get(Account, case.account_id)
    assert account is not None
    candidates = []
    for candidate in case.candidates:
        person = session.get(Person, candidate["person"])
        sites = (
            session.execute(
                select(col(Affiliation.site)).where(col(Affiliation.person_id) == candidate["person"])
            )
            .scalars()
            .all()
        )
        candidates.append(
            {
                **candidate,
                "name": f"{person.given_name or ''} {person.family_name}".strip() if person else None,
                "login": person.login if person else None,
                "status": person.status if person else None,
                "sites": sorted(sites),
            }
        )
    return CaseView(case, account, candidates)


def _open_case(session: Session, case_id: int) -> ReviewCase:
    case = session.get(ReviewCase, case_id)
    if case is None:
        raise NotFound(f"no review case {case_id}: see `ght review list`")
    if case.status != ReviewStatus.OPEN:
        raise ReviewError(f"review case {case_id} was already decided ({case.status}) by {case.decided_by}")
    return case


def _remember(session: Session, site: str, anchor: str, kind: str, person_id: str | None, admin: str) -> None:
    session.add(LinkDecision(site=site, anchor=anchor, kind=kind, person_id=person_id, decided_by=admin))


def link(
    session: Session,
    case_id: int,
    person_id: str,
    admin: str,
    config: CorrelationConfig,
    note: str | None = None,
) -> None:
    """Link the disputed account to `person_id` (one of the candidates, or any person by id)."""
    case = _open_case(session, case_id)
    target = session.get(Person, person_id)
    if target is None or target.status == PersonStatus.MERGED:
        raise ReviewError(f"no person {person_id} to link to (or it was merged into another)")
    now, actor = utcnow(), Actor(f"admin:{admin}")
    account = session.get(Account, case.account_id)
    assert account is not None
    provisional = case.person_id
    account.person_id, account.linked_by = person_id, f"admin:{admin}"
    session.flush()
    _merge_if_empty(session, provisional, person_id, now)
    case.status, case.decided_by, case.decided_at, case.decision_note = ReviewStatus.LINKED, admin, now, note
    _remember(session, case.site, case.anchor, "link", person_id, admin)
    refreshed = refresh_people(session, {person_id, provisional}, now, config, actor)
    write_audit(
        session,
        [
            actor.event(
                now,
                "review.linked",
                person_id=person_id,
                site=case.site,
                reason=note or f"review case {case_id}",
                changes={"account": {"from": provisional, "to": person_id}},
            ),
            *refreshed.audit,
        ],
    )
    session.commit()


def keep_new(session: Session, case_id: int, admin: str, note: str | None = None) -> None:
    """Keep the disputed account as a person of its own."""
    case = _open_case(session, case_id)
    now, actor = utcnow(), Actor(f"admin:{admin}")
    case.status, case.decided_by, case.decided_at, case.decision_note = ReviewStatus.NEW, admin, now, note
    _remember(session, case.site, case.anchor, "new", None, admin)
    write_audit(
        session,
        [
            actor.event(
                now,
                "review.kept_apart",
                person_id=case.person_id,
                site=case.site,
                reason=note or f"review case {case_id}",
            )
        ],
    )
    session.commit()


def split(
    session: Session,
    person_id: str,
    site: str,
    login: str,
    admin: str,
    config: CorrelationConfig,
    logins: LoginAllocator,
    note: str | None = None,
) -> str:
    """Take the account SITE\\login away from `person_id` into a new person. Returns the new person's id."""
    accounts = session.execute(select(Account).where(col(Account.person_id) == person_id)).scalars().all()
    account = next((a for a in accounts if a.site == site and a.login.lower() == login.lower()), None)
    if account is None:
        raise NotFound(f"person {person_id} has no account {site}\\{login}")
    if len(accounts) < 2:
        raise ReviewError(f"{site}\\{login} is the only account of person {person_id}: nothing to split")
    now, actor = utcnow(), Actor(f"admin:{admin}")
    values = account.attributes or {}
    new_id = new_person_id()
    session.add(
        Person(
            id=new_id,
            login=logins.allocate(values.get("given_name"), values.get("family_name") or account.login),
            family_name=values.get("family_name") or account.login,
            created_at=now,
            updated_at=now,
            status=PersonStatus.ACTIVE if account.state == AccountState.ENABLED else PersonStatus.SUSPENDED,
            suspended_at=None if account.state == AccountState.ENABLED else now,
        )
    )
    session.flush()
    # The affiliation at that site goes with the account unless the person keeps another account there.
    account.person_id, account.linked_by = new_id, f"admin:{admin} (split)"
    session.flush()
    still_there = any(a.site == site and a.id != account.id for a in accounts)
    if not still_there:
        session.execute(
            update(Affiliation)
            .where(
                col(Affiliation.person_id) == person_id,
                col(Affiliation.site) == site,
            )
            .values(person_id=new_id)
        )
    _remember(session, site, account.anchor, "not", person_id, admin)
    refreshed = refresh_people(session, {person_id, new_id}, now, config, actor)
    write_audit(
        session,
        [
            actor.event(
                now,
                "account.split",
                person_id=person_id,
                site=site,
                reason=note or "split by a reviewer",
                changes={"account": {"from": person_id, "to": new_id}, "login": {"from": None, "to": login}},
            ),
            actor.event(now, "person.created", person_id=new_id, site=site, reason=f"split from {person_id}"),
            *refreshed.audit,
        ],
    )
    session.commit()
    return new_id


def _merge_if_empty(session: Session, person_id: str, into: str, now: Any) -> None:
    """A person left without accounts by a review link is kept, marked merged into the survivor."""
    left = session.execute(
        select(col(Account.id)).where(col(Account.person_id) == person_id).limit(1)
    ).first()
    if left is None:
        session.execute(
            update(Affiliation)
            .where(col(Affiliation.person_id) == person_id)
            .values(active=False, primary=False, ended_at=now)
        )
        session.execute(
            update(_PERSON)
            .where(_PERSON.c.id == person_id)
            .values(status=PersonStatus.MERGED, merged_into=into, updated_at=now)
        )
