"""From the territorial directory to Graph: one cloud user per person, security groups per site,
profession and (when configured) territorial role.

Each person becomes a *desired user*: the flat dict of the Graph attributes the export manages (nested
`onPremisesExtensionAttributes` are flattened as `onPremisesExtensionAttributes.extensionAttributeN` so
that a change is one key), the groups they belong in, and a hash of it all. The plan compares that
hash and those values with what was last sent.

Identity:

- `employeeId` is the join key between a person and their cloud user. Graph caps it at 16 characters
  and the territorial id is 32 hex digits (a uuid4): the first 16 (64 random bits) are used, and a
  clash, however unlikely, is detected by the plan and never merged. The full territorial id goes
  to an extension attribute (`territorial_id`, extensionAttribute3 by default).
- `userPrincipalName` is `login@domain`, with the person's territorial login (`Person.login`, given by
  reconciliation, unique and never reused). For a person the directory has not given one yet,
  `assign_logins` derives `prenom.nom` in ASCII from the names the same way, numbering homonyms in the
  order people entered the directory (`marie.dupont`, `marie.dupont2`) and never taking a login the
  directory holds; a derived login once exported is kept while it still fits the person's names, so a
  newcomer never renames anyone.
- Users adopted from the tenant (`ght azure adopt`) keep their userPrincipalName and mailNickname.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ..config import AzureSettings
from ..mapping import strip_accents
from ..store import Affiliation, Person, PersonStatus, Site

EXTENSIONS = "onPremisesExtensionAttributes"
#: Graph's length limits for the attributes the export sets (characters).
_MAX_LENGTH = {
    "displayName": 256,
    "givenName": 64,
    "surname": 64,
    "jobTitle": 128,
    "department": 64,
    "companyName": 64,
    "officeLocation": 128,
    "employeeType": 64,
    "mailNickname": 64,
}
_LOGIN_MAX = 56  # leaves room for a homonym number within mailNickname's 64 characters
_TRANSLITERATE = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss", "ø": "o", "Ø": "O"})


@dataclass(frozen=True, slots=True)
class AffiliationView:
    site: str
    site_name: str
    finess: str
    profession: str | None
    department: str | None
    title: str | None
    active: bool
    started_at: datetime
    ended_at: datetime | None
    primary: bool = False
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PersonView:
    """What the export needs of one person."""

    id: str
    family_name: str
    given_name: str | None
    email: str | None
    rpps: str | None
    status: str
    created_at: datetime
    affiliations: tuple[AffiliationView, ...]
    login: str | None = None  # the territorial login, when the directory has given one
    merged_into: str | None = None

    @property
    def active(self) -> bool:
        return self.status == PersonStatus.ACTIVE and any(a.active for a in self.affiliations)


def load_people(session: Session) -> list[PersonView]:
    """Every person of the directory with their affiliations, in the order they entered it.

    Plain rows (no ORM objects): a plan reads the whole directory, 20,000 people in about a second.
    """
    sites = {
        row.code: row for row in session.execute(select(col(Site.code), col(Site.name), col(Site.finess)))
    }
    affiliations: dict[str, list[AffiliationView]] = defaultdict(list)
    columns: tuple[Any, ...] = (
        Affiliation.person_id,
        Affiliation.site,
        Affiliation.profession,
        Affiliation.department,
        Affiliation.title,
        Affiliation.active,
        Affiliation.started_at,
        Affiliation.ended_at,
        Affiliation.primary,
        Affiliation.roles,
    )
    for a in session.execute(select(*(col(c) for c in columns))):
        site = sites.get(a.site)
        affiliations[a.person_id].append(
            AffiliationView(
                a.site,
                site.name if site else a.site,
                site.finess if site else "",
                a.profession,
                a.department,
                a.title,
                a.active,
                a.started_at,
                a.ended_at,
                a.primary,
                tuple(r for r in (a.roles or "").split(",") if r),
            )
        )
    person_columns: tuple[Any, ...] = (
        Person.id,
        Person.family_name,
        Person.given_name,
        Person.email,
        Person.rpps,
        Person.status,
        Person.created_at,
        Person.login,
        Person.merged_into,
    )
    people = session.execute(
        select(*(col(c) for c in person_columns)).order_by(col(Person.created_at), col(Person.id))
    )
    return [
        PersonView(
            p.id,
            p.family_name,
            p.given_name,
            p.email,
            p.rpps,
            p.status,
            p.created_at,
            tuple(sorted(affiliations.get(p.id, ()), key=lambda a: (a.started_at, a.site))),
            p.login,
            p.merged_into,
        )
        for p in people
    ]


# --------------------------------------------------------------------------------------------------
# Logins and identifiers.


def employee_id_of(person_id: str) -> str:
    """The Graph `employeeId` of a person: the territorial id, cut to Graph's 16 characters."""
    return person_id[:16]


def _login_part(text: str) -> str:
    ascii_text = strip_accents(text.translate(_TRANSLITERATE)).lower()
    ascii_text = re.sub(r"['’`]", "", ascii_text)
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


def base_login(given_name: str | None, family_name: str) -> str:
    """`prenom.nom` in lower-case ASCII: `Marie-Hélène N'Diaye` -> `marie-helene.ndiaye`."""
    given, family = _login_part(given_name or ""), _login_part(family_name)
    login = f"{given}.{family}" if given and family else given or family or "user"
    return login[:_LOGIN_MAX].rstrip("-.")


def _fits(login: str, base: str) -> bool:
    return login == base or (login.startswith(base) and login[len(base) :].isdigit())


def assign_logins(people: Iterable[PersonView], exported: Mapping[str, str]) -> dict[str, str]:
    """A unique login per person: their territorial login; else the one already exported when it still
    fits their names; else the first free of `base`, `base2`, `base3`... in the order people entered
    the directory."""
    ordered = list(people)
    bases = {p.id: base_login(p.given_name, p.family_name) for p in ordered}
    logins: dict[str, str] = {p.id: p.login.lower() for p in ordered if p.login}
    taken = set(logins.values())
    taken |= {
        login for pid, login in exported.items() if pid not in bases
    }  # users no longer in the directory
    for p in ordered:
        if p.id in logins:
            continue
        old = exported.get(p.id)
        if old and _fits(old, bases[p.id]) and old not in taken:
            logins[p.id] = old
            taken.add(old)
    for p in ordered:
        if p.id in logins:
            continue
        base, n = bases[p.id], 1
        login = base
        while login in taken:
            n += 1
            login = f"{base}{n}"
        logins[p.id] = login
        taken.add(login)
    return logins


# --------------------------------------------------------------------------------------------------
# Groups.


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A managed security group: a stable key, and how it is named in the tenant."""

    key: str  # "site:ch-avignon", "profession:60", "role:prescripteurs"
    display_name: str
    mail_nickname: str
    description: str


def _slug(text: str) -> str:
    return _login_part(text) or "x"


# --------------------------------------------------------------------------------------------------
# Users.


def fields_hash(fields: Mapping[str, Any]) -> str:
    """A stable hash of a user's managed attribute values (what the plan compares)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(slots=True)
class DesiredUser:
    """The cloud user a person should have, and the groups they should be in."""

    person_id: str
    employee_id: str
    display_name: str
    active: bool
    fields: dict[str, Any]
    groups: frozenset[str] = field(default_factory=frozenset)
    status: str = PersonStatus.ACTIVE
    merged_into: str | None = None

    @property
    def why_inactive(self) -> str:
        """Why the person should have no working cloud user (for the plan's reader)."""
        if self.status == "merged":
            return f"merged into person {self.merged_into}"
        if self.status == PersonStatus.DEPROVISIONED:
            return "deprovisioned in the territorial directory"
        return "no active affiliation left"

    @property
    def upn(self) -> str:
        return str(self.fields["userPrincipalName"])

    @property
    def hash(self) -> str:
        return fields_hash(self.fields)


def graph_body(fields: Mapping[str, Any], *, for_create: bool = False) -> dict[str, Any]:
    """The JSON body Graph expects: extension attributes nested again; on create, no empty values."""
    body: dict[str, Any] = {}
    for name, value in fields.items():
        if for_create and value is None:
            continue
        if name.startswith(EXTENSIONS + "."):
            body.setdefault(EXTENSIONS, {})[name.split(".", 1)[1]] = value
        else:
            body[name] = value
    return body


def flatten_user(user: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A Graph user's values for the managed attributes `names`, flattened like a desired user's."""
    extensions = user.get(EXTENSIONS) or {}
    values: dict[str, Any] = {}
    for name in names:
        if name.startswith(EXTENSIONS + "."):
            values[name] = extensions.get(name.split(".", 1)[1])
        else:
            values[name] = user.get(name)
    return values


def _cut(name: str, value: str | None) -> str | None:
    if not value:
        return None
    limit = _MAX_LENGTH.get(name)
    return value[:limit].rstrip() if limit else value


class UserMapper:
    """Builds desired users and groups from the directory, as `[azure]` configures."""

    def __init__(self, settings: AzureSettings, professions: Mapping[str, str]) -> None:
        self.settings = settings
        self.professions = professions
        self.prefix = settings.group_prefix
        self.prefix_slug = _slug(settings.group_prefix)

    @property
    def managed_fields(self) -> list[str]:
        """Every attribute the export sets and compares."""
        names = [
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
        ]
        if self.settings.federated:
            names.append("onPremisesImmutableId")
        names += [f"{EXTENSIONS}.{slot}" for slot in sorted(self.settings.extension_attributes)]
        return names

    @staticmethod
    def primary(person: PersonView) -> AffiliationView | None:
        """The affiliation that names the person's employer and job: the one the directory marks
        primary, else the oldest active one, else the one that ended last."""
        active = [a for a in person.affiliations if a.active]
        if active:
            return min(active, key=lambda a: (not a.primary, a.started_at, a.site))
        if person.affiliations:
            return max(person.affiliations, key=lambda a: (a.ended_at or a.started_at, a.site))
        return None

    def desired(self, person: PersonView, login: str, *, keep: tuple[str, str] | None = None) -> DesiredUser:
        """The cloud user of `person`. `keep` is (userPrincipalName, mailNickname) of an adopted user."""
        settings = self.settings
        primary = self.primary(person)
        active_sites = sorted({a.site for a in person.affiliations if a.active})
        given = person.given_name or None
        display = " ".join(x for x in (given, person.family_name) if x) or person.family_name
        upn, nickname = keep if keep else (f"{login}@{settings.domain}", login)
        profession = primary.profession if primary else None
        sources: dict[str, str | None] = {
            "rpps": person.rpps,
            "profession": profession,
            "territorial_id": person.id,
            "sites": ",".join(active_sites) or None,
            "email": person.email,
            "department": primary.department if primary else None,
            "title": primary.title if primary else None,
        }
        # Where they work; for someone who left, where they worked last (a disabled account says it).
        site_names = [a.site_name for a in person.affiliations if a.active] or (
            [primary.site_name] if primary else []
        )
        fields: dict[str, Any] = {
            "accountEnabled": person.active,
            "displayName": _cut("displayName", display),
            "givenName": _cut("givenName", given),
            "surname": _cut("surname", person.family_name),
            "mailNickname": nickname,
            "userPrincipalName": upn,
            "employeeId": employee_id_of(person.id),
            "jobTitle": _cut("jobTitle", primary.title if primary else None),
            "department": _cut("department", primary.department if primary else None),
            "companyName": _cut("companyName", primary.site_name if primary else None),
            "officeLocation": _cut("officeLocation", ", ".join(site_names)),
            "usageLocation": settings.usage_location,
            "employeeType": _cut("employeeType", self.professions.get(profession or "", profession)),
        }
        if settings.federated:
            fields["onPremisesImmutableId"] = person.id
        for slot, source in sorted(settings.extension_attributes.items()):
            value = sources.get(source)
            fields[f"{EXTENSIONS}.{slot}"] = value[:1024] if value else None
        groups = frozenset(self.group_keys(person)) if person.active else frozenset()
        return DesiredUser(
            person.id,
            employee_id_of(person.id),
            display,
            person.active,
            fields,
            groups,
            person.status,
            person.merged_into,
        )

    def group_keys(self, person: PersonView) -> set[str]:
        """The managed groups a working person belongs in: their active sites, professions, roles."""
        keys: set[str] = set()
        for a in person.affiliations:
            if not a.active:
                continue
            keys.add(f"site:{a.site}")
            if a.profession and self.settings.profession_groups:
                keys.add(f"profession:{a.profession}")
            wanted_roles = self.settings.role_groups
            keys.update(f"role:{role}" for role in a.roles if "*" in wanted_roles or role in wanted_roles)
        return keys

    def group_spec(self, key: str, sites: Mapping[str, AffiliationView]) -> GroupSpec:
        """How the group `key` is named in the tenant."""
        kind, _, value = key.partition(":")
        prefix, slug = self.prefix, self.prefix_slug
        if kind == "site":
            site = sites.get(value)
            name = site.site_name if site else value
            finess = f" (FINESS {site.finess})" if site and site.finess else ""
            return GroupSpec(
                key,
                f"{prefix} - {name}"[:256],
                f"{slug}-site-{value}"[:64],
                f"Staff working at {name}{finess}. Managed by ght: changes made by hand are undone.",
            )
        if kind == "profession":
            label = self.professions.get(value, value)
            return GroupSpec(
                key,
                f"{prefix} - {label}"[:256],
                f"{slug}-prof-{value}"[:64],
                f"Staff whose profession is {label} (G15 {value}). Managed by ght.",
            )
        return GroupSpec(
            key,
            f"{prefix} - {value}"[:256],
            f"{slug}-role-{_slug(value)}"[:64],
            f"Territorial role {value}. Managed by ght.",
        )
