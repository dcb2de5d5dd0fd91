"""Territorial claims, by scope: what the DPI and the other applications learn about a person.

See CLAIMS.md for the integrators' description. `sub` is the territorial id (stable, opaque, the same
for every application); `preferred_username` the territorial login; the `health` scope carries the
national professional identifiers, the G15 profession, every active affiliation and `current_site`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from sqlmodel import col

from directory_sync.store import Account, AccountState, Affiliation, Person, PersonStatus, Site, sa_table

from .models import SiteChoice, UpstreamIdentity


def idnat_ps(rpps: str | None) -> str | None:
    """The national health-professional id (ANS): "8" followed by the RPPS number."""
    return f"8{rpps}" if rpps else None


#: Built once (composing it cost more than running it).
_ACTIVE_AFFILIATIONS = (
    select(Affiliation, Site)
    .join(Site, col(Site.code) == col(Affiliation.site), isouter=True)
    .where(col(Affiliation.person_id) == bindparam("person"), col(Affiliation.active).is_(True))
    .order_by(col(Affiliation.started_at), col(Affiliation.site))
)


_person, _affiliation, _site = sa_table(Person), sa_table(Affiliation), sa_table(Site)
#: What `claims` reads, as Core rows (no ORM entities, no unit of work), built once.
#: The person's columns the claims are made of (the code grant reads them with the code: grants.py).
CLAIMS_PERSON_COLUMNS = (
    _person.c.id,
    _person.c.status,
    _person.c.login,
    _person.c.given_name,
    _person.c.family_name,
    _person.c.email,
    _person.c.rpps,
    _person.c.updated_at,
)
_CLAIMS_PERSON = select(*CLAIMS_PERSON_COLUMNS).where(_person.c.id == bindparam("person"))
_CLAIMS_AFFILIATIONS = (
    select(
        _affiliation.c.site,
        _affiliation.c.profession,
        _affiliation.c.department,
        _affiliation.c.title,
        _site.c.name.label("site_name"),
        _site.c.finess,
    )
    .select_from(_affiliation.outerjoin(_site, _site.c.code == _affiliation.c.site))
    .where(_affiliation.c.person_id == bindparam("person"), _affiliation.c.active.is_(True))
    .order_by(_affiliation.c.started_at, _affiliation.c.site)
)


class ClaimsBuilder:
    """Builds the claims of a person for a set of scopes."""

    def __init__(self, professions: dict[str, str]) -> None:
        self.professions = professions

    def active_affiliations(self, session: Session, person_id: str) -> list[tuple[Affiliation, Site | None]]:
        """Active affiliations, the home site (earliest) first."""
        rows = session.execute(_ACTIVE_AFFILIATIONS, {"person": person_id})
        return [(affiliation, site) for affiliation, site in rows]

    def sites_offered(self, session: Session, person_id: str) -> list[tuple[Affiliation, Site | None]]:
        """Active affiliations with the last chosen site first (the site picker's order)."""
        affiliations = self.active_affiliations(session, person_id)
        choice = session.get(SiteChoice, person_id)
        if choice is not None:
            affiliations.sort(key=lambda pair: pair[0].site != choice.site)
        return affiliations

    def preferred_username(self, session: Session, person: Any, home_site: str | None) -> str | None:
        login = getattr(person, "login", None)  # the stored territorial login, once the directory has it
        if login:
            return str(login)
        accounts = list(
            session.execute(
                select(Account)
                .where(col(Account.person_id) == person.id, col(Account.state) == AccountState.ENABLED)
                .order_by(col(Account.id))
            ).scalars()
        )
        for account in sorted(accounts, key=lambda a: a.site != home_site):
            return account.login
        return None

    def claims(
        self,
        session: Session,
        person_id: str,
        scopes: set[str],
        current_site: str | None,
        person: Any = None,
    ) -> dict[str, Any]:
        """`person`: the person's `CLAIMS_PERSON_COLUMNS` as attributes, if the caller read them."""
        if person is None:
            person = session.execute(_CLAIMS_PERSON, {"person": person_id}).first()
        if person is None:
            return {"sub": person_id}
        claims: dict[str, Any] = {"sub": person.id}
        if person.status == PersonStatus.EXTERNAL:  # admitted from Pro Sante Connect (upstream.py)
            claims.update(external=True, roles=external_roles(session, person.id))
        # Only the profile (the home site's login) and health claims need the affiliations.
        needed = "profile" in scopes or "health" in scopes
        affiliations = session.execute(_CLAIMS_AFFILIATIONS, {"person": person.id}).all() if needed else []
        home = affiliations[0].site if affiliations else None
        if "profile" in scopes:
            name = " ".join(p for p in (person.given_name, person.family_name) if p)
            claims.update(
                name=name,
                family_name=person.family_name,
                given_name=person.given_name,
                preferred_username=self.preferred_username(session, person, home),
                updated_at=int(person.updated_at.timestamp()),
            )
        if "email" in scopes and person.email:
            claims["email"] = person.email
        if "health" in scopes:
            current = next((a for a in affiliations if a.site == current_site), None)
            with_profession = current if current and current.profession else None
            with_profession = with_profession or next((a for a in affiliations if a.profession), None)
            code = with_profession.profession if with_profession else None
            claims.update(
                rpps=person.rpps,
                idnat_ps=idnat_ps(person.rpps),
                profession={"code": code, "label": self.professions.get(code)} if code else None,
                affiliations=[
                    {
                        "site": a.site,
                        "site_name": a.site_name,
                        "finess": a.finess,
                        "profession": a.profession,
                        "department": a.department,
                        "title": a.title,
                        "primary": a.site == home,
                    }
                    for a in affiliations
                ],
                current_site=current_site,
            )
        return {k: v for k, v in claims.items() if v is not None}


def external_roles(session: Session, person_id: str) -> list[str]:
    """The roles an external professional was admitted with (`UpstreamIdentity.role`)."""
    rows = session.execute(
        select(col(UpstreamIdentity.role)).where(
            col(UpstreamIdentity.person_id) == person_id, col(UpstreamIdentity.external).is_(True)
        )
    ).scalars()
    return sorted({r for r in rows if r})
