"""The export plan: what a push would change in Entra ID, from the directory and the export state alone.

Planning reads the database and nothing else (no token, no network): like Entra Connect's export
preview, it compares what each person's cloud user should be with what was last sent to it, and
lists, each with its reason:

- users to create (never exported, or rejected last time), update (attribute: old -> new), disable
  (no active affiliation left), enable (working again), restore (working again after a deletion) and
  delete (disabled for longer than the grace period; soft: recoverable in Entra for 30 days);
- groups to create or rename, and group members to add or remove.

The same functions decide what `push` sends, phase after phase, so the plan printed is the push done.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ..config import AzureSettings, Settings
from ..store import Store, sa_table, utcnow
from ..store.models import ExportGroup, ExportMembership, ExportState, ExportStatus
from .errors import AzureNotConfigured
from .mapping import (
    AffiliationView,
    DesiredUser,
    GroupSpec,
    PersonView,
    UserMapper,
    assign_logins,
    load_people,
)


class ExportedUser(Protocol):
    """What the plan reads of a person's export state (an `ExportState` row, or a `StateView`)."""

    person_id: str
    object_id: str | None
    upn: str | None
    status: str
    origin: str
    sent: dict[str, Any]
    sent_hash: str | None
    enabled: bool | None
    error: str | None
    disabled_at: datetime | None


@dataclass(slots=True)
class StateView:
    """An export state read as a plain row: planning 20,000 people must not build 20,000 ORM objects."""

    person_id: str
    object_id: str | None
    upn: str | None
    status: str
    origin: str
    sent: dict[str, Any]
    sent_hash: str | None
    enabled: bool | None
    error: str | None
    disabled_at: datetime | None


def load_states(session: Session) -> dict[str, StateView]:
    names = [f.name for f in fields(StateView)]
    table = sa_table(ExportState)
    rows = session.execute(select(*(table.c[n] for n in names)))
    return {row.person_id: StateView(*row) for row in rows}


class UserActionKind(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DISABLE = "disable"
    ENABLE = "enable"
    RESTORE = "restore"
    DELETE = "delete"


@dataclass(slots=True)
class UserAction:
    kind: UserActionKind
    person_id: str
    upn: str
    display_name: str
    reason: str
    object_id: str | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    desired: DesiredUser | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.kind.value,
            "person": self.person_id,
            "upn": self.upn,
            "display_name": self.display_name,
            "object_id": self.object_id,
            "reason": self.reason,
            "changes": {k: {"from": old, "to": new} for k, (old, new) in self.changes.items()},
        }
        if self.kind is UserActionKind.CREATE and self.desired is not None:
            data["attributes"] = {k: v for k, v in self.desired.fields.items() if v is not None}
        return data


@dataclass(slots=True)
class GroupAction:
    kind: str  # "create" or "rename"
    spec: GroupSpec
    reason: str
    object_id: str | None = None
    old_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind,
            "group": self.spec.key,
            "display_name": self.spec.display_name,
            "mail_nickname": self.spec.mail_nickname,
            "object_id": self.object_id,
            "reason": self.reason,
            **(
                {"changes": {"displayName": {"from": self.old_name, "to": self.spec.display_name}}}
                if self.kind == "rename"
                else {}
            ),
        }


@dataclass
class ExportPlan:
    """What a push would change, user by user and group by group."""

    generated_at: datetime
    deletion_threshold: int
    users: list[UserAction] = field(default_factory=list)
    groups: list[GroupAction] = field(default_factory=list)
    add: dict[str, set[str]] = field(default_factory=dict)  # group key -> person ids to add
    remove: dict[str, set[str]] = field(default_factory=dict)  # group key -> member object ids to remove
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (person id, why no cloud user)
    desired: dict[str, DesiredUser] = field(default_factory=dict)
    specs: dict[str, GroupSpec] = field(default_factory=dict)
    upn_of_member: dict[str, str] = field(default_factory=dict)  # object id -> UPN, for the reader

    def of(self, kind: UserActionKind) -> list[UserAction]:
        return [a for a in self.users if a.kind is kind]

    def count(self, kind: UserActionKind) -> int:
        return sum(1 for a in self.users if a.kind is kind)

    @property
    def deletes(self) -> int:
        return self.count(UserActionKind.DELETE)

    @property
    def members_added(self) -> int:
        return sum(len(v) for v in self.add.values())

    @property
    def members_removed(self) -> int:
        return sum(len(v) for v in self.remove.values())

    @property
    def empty(self) -> bool:
        return not (self.users or self.groups or self.members_added or self.members_removed)

    def summary(self) -> dict[str, int]:
        counts = {kind.value: self.count(kind) for kind in UserActionKind}
        counts.update(
            unchanged=self.unchanged,
            skipped=len(self.skipped),
            groups_created=sum(1 for g in self.groups if g.kind == "create"),
            groups_renamed=sum(1 for g in self.groups if g.kind == "rename"),
            members_added=self.members_added,
            members_removed=self.members_removed,
        )
        return counts

    def as_dict(self) -> dict[str, Any]:
        def upn(person_id: str) -> str:
            desired = self.desired.get(person_id)
            return desired.upn if desired else person_id

        return {
            "generated_at": self.generated_at.isoformat(),
            "summary": self.summary(),
            "deletion_threshold": self.deletion_threshold,
            "over_deletion_threshold": self.deletes > self.deletion_threshold,
            "users": [a.as_dict() for a in self.users],
            "groups": [g.as_dict() for g in self.groups],
            "memberships": [
                {
                    "group": key,
                    "display_name": self.specs[key].display_name if key in self.specs else key,
                    "add": sorted(upn(p) for p in self.add.get(key, ())),
                    "remove": sorted(self.upn_of_member.get(m, m) for m in self.remove.get(key, ())),
                }
                for key in sorted(set(self.add) | set(self.remove))
                if self.add.get(key) or self.remove.get(key)
            ],
            "skipped": [{"person": p, "reason": r} for p, r in self.skipped],
        }


# --------------------------------------------------------------------------------------------------
# Building it.


def desired_users(
    people: Iterable[PersonView], states: Mapping[str, ExportedUser], mapper: UserMapper
) -> tuple[dict[str, DesiredUser], list[tuple[str, str]]]:
    """Every person's desired cloud user, and the people who cannot have one (with why)."""
    people = list(people)
    domain = "@" + mapper.settings.domain.lower()
    exported: dict[str, str] = {}
    keep: dict[str, tuple[str, str]] = {}
    for pid, state in states.items():
        if not state.upn:
            continue
        if state.origin == "adopted":
            keep[pid] = (state.upn, str(state.sent.get("mailNickname") or state.upn.split("@")[0]))
        if state.upn.lower().endswith(domain):
            exported[pid] = state.upn.split("@")[0].lower()
    logins = assign_logins(people, exported)
    desired: dict[str, DesiredUser] = {}
    skipped: list[tuple[str, str]] = []
    by_employee_id: dict[str, str] = {}
    for person in people:
        user = mapper.desired(person, logins[person.id], keep=keep.get(person.id))
        other = by_employee_id.setdefault(user.employee_id, person.id)
        if other != person.id:
            skipped.append(
                (
                    person.id,
                    f"employeeId {user.employee_id} is already the one of person {other}: not exported",
                )
            )
            continue
        desired[person.id] = user
    return desired, skipped


def user_action(
    desired: DesiredUser | None, state: ExportedUser | None, *, now: datetime, grace_days: float
) -> UserAction | str | None:
    """What to do for one person: an action, a reason why nothing is exported (str), or None
    (in step)."""
    grace = timedelta(days=grace_days)
    if (
        state is None
        or state.status in (ExportStatus.PENDING, ExportStatus.REJECTED)
        or (state.object_id is None and state.status != ExportStatus.DELETED)
    ):
        if desired is None:
            return None
        if not desired.active:
            if state is not None and state.status == ExportStatus.PENDING:
                return None  # the lost create is looked up first; then it is disabled like any other
            return "not working anywhere in the group: no cloud user is created"
        reason = "new in the territorial directory"
        if state is not None and state.status == ExportStatus.PENDING:
            reason = "a create got no answer last time: looked up by employeeId before creating"
        elif state is not None and state.status == ExportStatus.REJECTED:
            reason = f"rejected by Graph last time: {state.error}"
        return UserAction(
            UserActionKind.CREATE,
            desired.person_id,
            desired.upn,
            desired.display_name,
            reason,
            desired=desired,
        )

    sent: dict[str, Any] = dict(state.sent)
    upn = state.upn or str(sent.get("userPrincipalName") or "")
    if state.status == ExportStatus.DELETED:
        if desired is None or not desired.active:
            return None
        changes = _changes(sent, desired.fields)
        return UserAction(
            UserActionKind.RESTORE,
            desired.person_id,
            desired.upn,
            desired.display_name,
            "working again: the soft-deleted cloud user is restored",
            state.object_id,
            changes,
            desired,
        )

    # An exported user. A person gone from the directory keeps their values, disabled.
    if desired is not None and state.sent_hash == desired.hash and desired.active:
        return None
    if desired is None:
        fields = {**sent, "accountEnabled": False}
        name, why_off = str(sent.get("displayName") or upn), "no longer in the territorial directory"
    else:
        fields, name, why_off = desired.fields, desired.display_name, desired.why_inactive
    changes = _changes(sent, fields)
    wanted_on = bool(fields.get("accountEnabled"))
    enabled = bool(state.enabled)
    person_id = state.person_id
    if wanted_on and not enabled:
        return UserAction(
            UserActionKind.ENABLE,
            person_id,
            upn,
            name,
            "working again in the group",
            state.object_id,
            changes,
            desired,
        )
    if not wanted_on:
        if enabled and grace_days > 0:
            return UserAction(
                UserActionKind.DISABLE,
                person_id,
                upn,
                name,
                f"{why_off}: disabled, not deleted",
                state.object_id,
                changes,
                desired,
            )
        since = _aware(state.disabled_at) or now
        if enabled or now - since >= grace:
            reason = (
                f"{why_off}; the deletion grace period is 0 days"
                if enabled
                else f"{why_off}; disabled since {since:%Y-%m-%d}, grace period of {grace_days:g} days over"
            )
            return UserAction(
                UserActionKind.DELETE,
                person_id,
                upn,
                name,
                f"{reason} (soft delete)",
                state.object_id,
                {},
                desired,
            )
        changes.pop("accountEnabled", None)
        if not changes:
            return None
    if not changes:
        return None
    return UserAction(
        UserActionKind.UPDATE,
        person_id,
        upn,
        name,
        "changed in the territorial directory",
        state.object_id,
        changes,
        desired,
    )


def _belong(count: int) -> str:
    return "1 person belongs in it" if count == 1 else f"{count} people belong in it"


def _aware(when: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the store writes UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _changes(sent: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        name: (sent.get(name), wanted.get(name))
        for name in sorted(set(sent) | set(wanted))
        if sent.get(name) != wanted.get(name) and name in wanted
    }


def wanted_members(desired: Mapping[str, DesiredUser]) -> dict[str, set[str]]:
    """Group key -> the people who should be in it."""
    members: dict[str, set[str]] = defaultdict(set)
    for user in desired.values():
        for key in user.groups:
            members[key].add(user.person_id)
    return members


def membership_diff(
    wanted: Mapping[str, set[str]],
    object_ids: Mapping[str, str],
    exported: Mapping[str, set[str]],
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(person ids to add, member object ids to remove) per group key.

    `object_ids` maps person id -> their cloud user; a person without one yet is added once created.
    Members of a group that are nobody's cloud user (added by hand) are removed: groups are managed.
    """
    add: dict[str, set[str]] = {}
    remove: dict[str, set[str]] = {}
    for key in set(wanted) | set(exported):
        present = exported.get(key, set())
        want = wanted.get(key, set())
        want_ids = {object_ids[p] for p in want if p in object_ids}
        missing = {p for p in want if object_ids.get(p) not in present}
        extra = present - want_ids
        if missing:
            add[key] = missing
        if extra:
            remove[key] = extra
    return add, remove


def build_plan(
    session: Session, settings: AzureSettings, professions: Mapping[str, str], *, now: datetime
) -> ExportPlan:
    """The plan of a push now: read the directory and the export state, change nothing."""
    mapper = UserMapper(settings, professions)
    people = load_people(session)
    states = load_states(session)
    desired, skipped = desired_users(people, states, mapper)
    plan = ExportPlan(generated_at=now, deletion_threshold=settings.deletion_threshold, desired=desired)
    plan.skipped = skipped
    skipped_ids = {p for p, _ in skipped}
    for person_id in list(desired) + [p for p in states if p not in desired and p not in skipped_ids]:
        outcome = user_action(
            desired.get(person_id), states.get(person_id), now=now, grace_days=settings.deletion_grace_days
        )
        if isinstance(outcome, UserAction):
            plan.users.append(outcome)
        elif isinstance(outcome, str):
            plan.skipped.append((person_id, outcome))
        elif person_id in desired:
            plan.unchanged += 1

    # Groups: those someone belongs in, created or renamed as needed.
    wanted = wanted_members(desired)
    sites: dict[str, AffiliationView] = {}
    for person in people:
        for a in person.affiliations:
            sites.setdefault(a.site, a)
    groups = {g.key: g for g in session.execute(select(ExportGroup)).scalars()}
    for key in sorted(wanted):
        spec = mapper.group_spec(key, sites)
        plan.specs[key] = spec
        row = groups.get(key)
        if row is None or row.object_id is None:
            plan.groups.append(GroupAction("create", spec, _belong(len(wanted[key]))))
        elif row.display_name != spec.display_name:
            plan.groups.append(
                GroupAction(
                    "rename",
                    spec,
                    f"named {row.display_name!r} in the tenant",
                    row.object_id,
                    row.display_name,
                )
            )
    for key, row in groups.items():
        plan.specs.setdefault(key, GroupSpec(key, row.display_name, row.mail_nickname, ""))

    object_ids = {
        s.person_id: s.object_id for s in states.values() if s.object_id and s.status == ExportStatus.EXPORTED
    }
    exported: dict[str, set[str]] = defaultdict(set)
    for key, member in session.execute(
        select(col(ExportMembership.group_key), col(ExportMembership.member_id))
    ):
        exported[key].add(member)
    plan.add, plan.remove = membership_diff(wanted, object_ids, exported)
    plan.upn_of_member = {s.object_id: s.upn or s.person_id for s in states.values() if s.object_id}
    return plan


def require_azure(settings: Settings) -> AzureSettings:
    """The `[azure]` settings, or a configuration error saying they are missing."""
    if settings.azure is None:
        raise AzureNotConfigured(str(settings.config_file or "ght.toml (absent)"))
    return settings.azure


def plan_export(settings: Settings, store: Store, *, now: datetime | None = None) -> ExportPlan:
    """What `ght azure push` would do now (`ght azure plan`): database only, no network."""
    azure = require_azure(settings)
    with store.session() as session:
        return build_plan(session, azure, settings.professions, now=now or utcnow())
