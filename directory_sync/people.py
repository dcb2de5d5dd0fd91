"""Looking people up in the territorial directory (what `ght people` shows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from .config import CorrelationConfig
from .errors import NotFound
from .identifiers import normalize_rpps
from .mapping import strip_accents
from .reconcile import Actor, refresh_people, write_audit
from .store import Account, AccountState, Affiliation, Person, PersonStatus, Site, utcnow


@dataclass
class PersonView:
    person: Person
    accounts: list[Account]
    affiliations: list[tuple[Affiliation, Site | None]]

    def as_dict(self) -> dict[str, Any]:
        p = self.person
        return {
            "id": p.id,
            "login": p.login,
            "family_name": p.family_name,
            "given_name": p.given_name,
            "email": p.email,
            "rpps": p.rpps,
            "birth_date": p.birth_date,
            "status": p.status,
            "merged_into": p.merged_into,
            "provenance": p.provenance,
            "created_at": p.created_at.isoformat(),
            "updated_at": p.updated_at.isoformat(),
            "suspended_at": p.suspended_at.isoformat() if p.suspended_at else None,
            "affiliations": [
                {
                    "site": a.site,
                    "site_name": s.name if s else None,
                    "finess": s.finess if s else None,
                    "profession": a.profession,
                    "department": a.department,
                    "title": a.title,
                    "employee_id": a.employee_id,
                    "roles": a.roles,
                    "active": a.active,
                    "primary": a.primary,
                    "started_at": a.started_at.isoformat(),
                    "ended_at": a.ended_at.isoformat() if a.ended_at else None,
                }
                for a, s in self.affiliations
            ],
            "accounts": [
                {
                    "site": a.site,
                    "login": a.login,
                    "dn": a.dn,
                    "anchor": a.anchor,
                    "state": a.state,
                    "linked_by": a.linked_by,
                    "facts": a.facts,
                }
                for a in self.accounts
            ],
        }


def _fold(text: str) -> str:
    return strip_accents(text).lower()


def search_people(
    session: Session,
    text: str | None = None,
    *,
    site: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[PersonView]:
    """People whose name, login, email, RPPS or territorial id contains `text` (accent- and case-blind)."""
    query = select(Person).order_by(col(Person.family_name), col(Person.given_name), col(Person.id))
    if status:
        query = query.where(col(Person.status) == status)
    if site:
        query = query.where(
            col(Person.id).in_(select(col(Affiliation.person_id)).where(col(Affiliation.site) == site))
        )
    if text:
        like = f"%{text.lower()}%"
        conditions = [
            func.lower(col(Person.family_name)).like(like),
            func.lower(col(Person.given_name)).like(like),
            func.lower(col(Person.family_name) + " " + col(Person.given_name)).like(like),
            func.lower(col(Person.given_name) + " " + col(Person.family_name)).like(like),
            func.lower(col(Person.email)).like(like),
            col(Person.id) == text,
            col(Person.login) == text.lower(),
            col(Person.id).in_(
                select(col(Account.person_id)).where(func.lower(col(Account.login)) == text.lower())
            ),
        ]
        rpps = normalize_rpps(text) if text.isdigit() else None
        if rpps:
            conditions.append(col(Person.rpps) == rpps)
        query = query.where(or_(*conditions))
        # SQL LIKE is accent-sensitive: fold accents on the Python side for the names.
        people = list(session.execute(query).scalars())
        if not people:
            folded = _fold(text)
            every = select(Person).order_by(col(Person.family_name), col(Person.given_name), col(Person.id))
            if status:
                every = every.where(col(Person.status) == status)
            people = [
                p
                for p in session.execute(every).scalars()
                if folded
                in _fold(f"{p.given_name or ''} {p.family_name} {p.family_name} {p.given_name or ''}")
            ]
        people = people[:limit]
    else:
        people = list(session.execute(query.limit(limit)).scalars())
    return [_view(session, p) for p in people]


def _view(session: Session, person: Person) -> PersonView:
    accounts = list(
        session.execute(
            select(Account)
            .where(col(Account.person_id) == person.id)
            .order_by(col(Account.site), col(Account.id))
        ).scalars()
    )
    affiliations: list[tuple[Affiliation, Site | None]] = [
        (a, s)
        for a, s in session.execute(
            select(Affiliation, Site)
            .join(Site, col(Site.code) == col(Affiliation.site), isouter=True)
            .where(col(Affiliation.person_id) == person.id)
            .order_by(col(Affiliation.site))
        )
    ]
    return PersonView(person, accounts, affiliations)


def get_person(session: Session, key: str) -> PersonView:
    """One person by territorial id, RPPS, a source login (`login` or `SITE\\login`), or email."""
    person = session.get(Person, key)
    if person is None:
        site, _, login = key.rpartition("\\")
        rpps = normalize_rpps(key) if key.isdigit() else None
        candidates: list[Person] = list(
            session.execute(select(Person).where(col(Person.login) == key.lower())).scalars()
        )
        if rpps and not candidates:
            candidates = list(session.execute(select(Person).where(col(Person.rpps) == rpps)).scalars())
        if not candidates:
            accounts = select(col(Account.person_id)).where(func.lower(col(Account.login)) == login.lower())
            if site:
                accounts = accounts.where(col(Account.site) == site)
            candidates = list(session.execute(select(Person).where(col(Person.id).in_(accounts))).scalars())
        if not candidates:
            candidates = list(
                session.execute(select(Person).where(func.lower(col(Person.email)) == key.lower())).scalars()
            )
        if len(candidates) > 1:
            raise NotFound(f"{key!r} matches {len(candidates)} people: use a territorial id or SITE\\login")
        if not candidates:
            raise NotFound(
                f"no person matches {key!r} "
                "(territorial id or login, RPPS, SITE\\login, source login or email)"
            )
        person = candidates[0]
    return _view(session, person)


def restore_person(session: Session, key: str, admin: str, config: CorrelationConfig) -> PersonView:
    """Undo a bad sync for one person: reopen the accounts sync closed, recompute, lift deprovisioning.

    If a source really lost the account, the next sync closes it again (within the safety threshold).
    """
    view = get_person(session, key)
    person = view.person
    now, actor = utcnow(), Actor(f"admin:{admin}")
    closed = [a for a in view.accounts if a.state == AccountState.DELETED]
    if not closed and person.status not in (PersonStatus.SUSPENDED, PersonStatus.DEPROVISIONED):
        raise NotFound(f"{key!r} is {person.status} with no closed account: nothing to restore")
    for account in closed:
        account.state, account.deleted_at = AccountState.ENABLED, None
    if person.status == PersonStatus.DEPROVISIONED:
        person.status, person.deprovisioned_at, person.suspended_at = PersonStatus.SUSPENDED, None, now
    session.flush()
    refreshed = refresh_people(session, {person.id}, now, config, actor)
    write_audit(
        session,
        [
            actor.event(
                now,
                "person.restored",
                person_id=person.id,
                reason="restored by an administrator",
                changes={"accounts": {"from": "deleted", "to": [f"{a.site}\\{a.login}" for a in closed]}},
            ),
            *refreshed.audit,
        ],
    )
    session.commit()
    session.expire_all()  # refresh_people wrote through Core: reload what the session holds
    return get_person(session, person.id)
