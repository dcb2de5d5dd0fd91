"""Pushing the plan to Entra ID, phase after phase, so that a push killed anywhere resumes cleanly.

1. **Lost creates** (a create was sent, no answer came back: the row is `pending`) are looked up by
   employeeId: found, the user is linked; not found, it is created again below.
2. **The plan** is computed; if it deletes more users than the threshold allows, the push stops here,
   having changed nothing (`DeletionThresholdExceeded`).
3. **Groups** missing in the state are looked up by mailNickname (linked, and their members read page
   by page) or created; renamed sites rename their groups.
4. **Users**: restores, then creates, then updates, enables and disables, in `$batch` envelopes. Each
   create is journalled as `pending` (committed) before it is sent, so it can never be made twice: the
   next push looks it up first, and a create that meets its own UPN ("Another object with the same
   value for property userPrincipalName already exists") is linked when that user carries our
   employeeId. A user Graph rejects (400) is recorded with Graph's message and skipped.
5. **Memberships**: adds (20 per request with `members@odata.bind`), then removes.
6. **Deletions** (soft) of users disabled for longer than the grace period.

The export state is committed after every envelope: it always says what Entra holds, as far as known.
New users get a random password that satisfies Entra's complexity rules and must be changed at first
sign-in; it is sent once and is never logged nor stored. A federated domain gets no password.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ..config import AzureSettings, Settings
from ..errors import GhtError
from ..store import Person, PersonStatus, RunStatus, Store, utcnow
from ..store.models import ExportGroup, ExportMembership, ExportRun, ExportState, ExportStatus
from .auth import TokenProvider
from .errors import DeletionThresholdExceeded, GraphError
from .graph import MAX_BATCH, MAX_PAGE, GraphClient, GraphResponse, GraphStats, SubRequest, TransportUncertain
from .mapping import DesiredUser, GroupSpec, UserMapper, fields_hash, flatten_user, graph_body
from .plan import (
    ExportPlan,
    GroupAction,
    UserAction,
    UserActionKind,
    build_plan,
    membership_diff,
    require_azure,
    wanted_members,
)

log = logging.getLogger(__name__)

#: Called as progress(phase, done, total) while a push runs.
Progress = Callable[[str, int, int], None]
STOPPED = "stopped"  # a run status: the deletion threshold stopped it before any change
_DUPLICATE_UPN = "userPrincipalName already exists"
_ALREADY_MEMBER = "already exist"
_PASSWORD_SYMBOLS = "!#$%&*+-=?@^_"


def open_client(settings: Settings) -> GraphClient:
    """A Graph client for the configured tenant (the token is asked for on first use)."""
    azure = require_azure(settings)
    config_dir = settings.config_file.parent if settings.config_file else None
    return GraphClient(azure, TokenProvider(azure, config_dir=config_dir))


def new_password(length: int = 24) -> str:
    """A random password meeting Entra's complexity rules (8-256 characters, 4 kinds of character)."""
    kinds = (string.ascii_uppercase, string.ascii_lowercase, string.digits, _PASSWORD_SYMBOLS)
    chars = [secrets.choice(kind) for kind in kinds]
    alphabet = "".join(kinds)
    chars += [secrets.choice(alphabet) for _ in range(length - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def odata_quote(value: str) -> str:
    """A string literal for `$filter`: quotes doubled, then percent-encoded for the URL."""
    return quote("'" + value.replace("'", "''") + "'", safe="")


def user_select(mapper: UserMapper) -> str:
    """`$select` for reading users: the managed attributes, and what adoption matches on."""
    names = {name.split(".", 1)[0] for name in mapper.managed_fields}
    names |= {
        "id",
        "userPrincipalName",
        "mail",
        "employeeId",
        "accountEnabled",
        "mailNickname",
        "displayName",
    }
    return ",".join(sorted(names))


@dataclass(slots=True)
class Rejection:
    """A user or membership that Graph refused, with Graph's own message."""

    person_id: str
    upn: str
    action: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"person": self.person_id, "upn": self.upn, "action": self.action, "message": self.message}


@dataclass
class PushResult:
    run_id: int | None
    status: str = RunStatus.RUNNING
    created: int = 0
    updated: int = 0
    disabled: int = 0
    enabled: int = 0
    restored: int = 0
    deleted: int = 0
    found: int = 0  # lost creates found by employeeId or UPN, and linked
    groups_created: int = 0
    members_added: int = 0
    members_removed: int = 0
    unfinished: int = 0  # requests given up after every retry: done on the next push
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: GraphStats = field(default_factory=GraphStats)
    seconds: float = 0.0
    error: str | None = None

    COUNTS = (
        "created",
        "updated",
        "disabled",
        "enabled",
        "restored",
        "deleted",
        "found",
        "groups_created",
        "members_added",
        "members_removed",
        "unfinished",
    )

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED and not self.rejected and not self.unfinished

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            **{name: getattr(self, name) for name in self.COUNTS},
            "rejected": [r.as_dict() for r in self.rejected],
            "notes": self.notes,
            "requests": self.stats.requests,
            "writes": self.stats.writes,
            "throttled": self.stats.throttled,
            "retries": self.stats.retries,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


# --------------------------------------------------------------------------------------------------
# Run bookkeeping (shared with adoption).


def start_run(store: Store, mode: str) -> int:
    """Record a new run; a run still marked running was interrupted (killed, host down): say so."""
    with store.session() as session:
        session.execute(
            update(ExportRun)
            .where(col(ExportRun.status) == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, error="interrupted before it finished", finished_at=utcnow())
        )
        run = ExportRun(mode=mode)
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def finish_run(
    store: Store, run_id: int, status: str, counts: dict[str, int | float | None], error: str | None
) -> None:
    with store.session() as session:
        run = session.get(ExportRun, run_id)
        assert run is not None
        for name, value in counts.items():
            if hasattr(run, name):
                setattr(run, name, value)
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        session.commit()


# --------------------------------------------------------------------------------------------------
# The push.


def push(
    settings: Settings,
    store: Store,
    *,
    client: GraphClient | None = None,
    allow_deletes: int | None = None,
    full: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> PushResult:
    """Bring the tenant in step with the directory. Raises `DeletionThresholdExceeded` before any
    change when the plan deletes too many users, and `GhtError`s that stop the push (token refused,
    permission missing, Graph unreachable); Graph's rejections of single users are in the result."""
    azure = require_azure(settings)
    own_client = client is None
    graph = client or open_client(settings)
    try:
        return _Push(settings, azure, store, graph, allow_deletes, full, progress, now).run()
    finally:
        if own_client:
            graph.close()


class _Push:
    def __init__(
        self,
        settings: Settings,
        azure: AzureSettings,
        store: Store,
        client: GraphClient,
        allow_deletes: int | None,
        full: bool,
        progress: Progress | None,
        now: datetime | None,
    ) -> None:
        self.settings = settings
        self.azure = azure
        self.store = store
        self.client = client
        self.allow_deletes = allow_deletes
        self.full = full
        self.progress = progress or (lambda phase, done, total: None)
        self.now = now or utcnow()
        self.mapper = UserMapper(azure, settings.professions)
        self.select = user_select(self.mapper)
        self.result = PushResult(run_id=None)
        self.blocked: set[str] = set()  # people not to create in this push (outcome of a lookup unknown)
        self.ref_base = f"{azure.graph_url}/v1.0/directoryObjects/"

    # -- driver ------------------------------------------------------------------------------------

    def run(self) -> PushResult:
        started = time.monotonic()
        result = self.result
        result.run_id = start_run(self.store, "push")
        stats_before = GraphStats(**vars(self.client.stats))
        try:
            with self.store.session() as session:
                self._prime_rate(session)
                self._resolve_pending(session)
                plan = self._plan(session)
                limit = (
                    self.allow_deletes if self.allow_deletes is not None else self.azure.deletion_threshold
                )
                if plan.deletes > limit:
                    raise DeletionThresholdExceeded(plan.deletes, limit)
                self._groups(session, plan)
                if plan.of(UserActionKind.RESTORE):
                    self._restores(session, plan.of(UserActionKind.RESTORE))
                    plan = self._plan(session)
                found = result.found
                self._creates(session, plan.of(UserActionKind.CREATE))
                if result.found > found:  # users linked after a lost answer may need their values
                    plan = self._plan(session)
                updates = (UserActionKind.UPDATE, UserActionKind.ENABLE, UserActionKind.DISABLE)
                self._updates(session, [a for a in plan.users if a.kind in updates])
                self._memberships(session, plan)
                self._deletes(session, plan.of(UserActionKind.DELETE))
            result.status = RunStatus.SUCCEEDED
        except DeletionThresholdExceeded as exc:
            result.status, result.error = STOPPED, str(exc)
            raise
        except GhtError as exc:
            result.status, result.error = RunStatus.FAILED, str(exc)
            raise
        except BaseException:
            result.status, result.error = RunStatus.FAILED, "interrupted before it finished"
            raise
        finally:
            stats = self.client.stats
            result.stats = GraphStats(
                **{name: getattr(stats, name) - getattr(stats_before, name) for name in vars(stats)}
            )
            result.seconds = time.monotonic() - started
            counts = {name: getattr(result, name) for name in PushResult.COUNTS}
            limiter = self.client.limiter
            counts.update(
                write_rate=round(limiter.rate, 3) if limiter.signalled else None,
                rejected=len(result.rejected),
                requests=result.stats.requests,
                writes=result.stats.writes,
                throttled=result.stats.throttled,
                retries=result.stats.retries,
            )
            finish_run(self.store, result.run_id, result.status, counts, result.error)
        return result

    def _prime_rate(self, session: Session) -> None:
        """Start at the write rate the last push learned from the tenant, rather than from scratch."""
        learned = session.execute(
            select(col(ExportRun.write_rate))
            .where(col(ExportRun.mode) == "push", col(ExportRun.write_rate).is_not(None))
            .order_by(col(ExportRun.started_at).desc(), col(ExportRun.id).desc())
            .limit(1)
        ).scalar_one_or_none()
        if learned:
            self.client.limiter.prime(0.9 * learned)

    def _plan(self, session: Session) -> ExportPlan:
        return build_plan(session, self.azure, self.settings.professions, now=self.now)

    def _reject(self, state: ExportState | None, person_id: str, upn: str, action: str, message: str) -> None:
        self.result.rejected.append(Rejection(person_id, upn, action, message))
        log.warning("Graph rejected %s of %s: %s", action, upn, message)
        if state is not None:
            state.error = message

    # -- 1. lost creates ----------------------------------------------------------------------------

    def _resolve_pending(self, session: Session) -> None:
        pending = list(
            session.execute(
                select(ExportState).where(col(ExportState.status) == ExportStatus.PENDING)
            ).scalars()
        )
        if not pending:
            return
        requests = (
            SubRequest(
                "GET",
                f"/users?$filter=employeeId%20eq%20{odata_quote(s.employee_id)}&$select={self.select}",
                tag=s,
            )
            for s in pending
        )
        done = 0
        missed: list[ExportState] = []
        for envelope in self.client.batch(requests):
            for sub, answer in envelope:
                state: ExportState = sub.tag
                if not answer.ok:
                    self.blocked.add(state.person_id)
                    continue
                ours = [u for u in answer.body.get("value", []) if u.get("employeeId") == state.employee_id]
                if not ours:
                    missed.append(state)
                elif len(ours) == 1:
                    self._link(state, ours[0], origin="found")
                    self.result.found += 1
                elif len(ours) > 1:
                    self.blocked.add(state.person_id)
                    self._reject(
                        state,
                        state.person_id,
                        state.upn or "",
                        "create",
                        f"{len(ours)} cloud users carry employeeId {state.employee_id}: "
                        "delete the duplicates in the tenant, then push again",
                    )
            session.commit()
            done += len(envelope)
            self.progress("looking up lost creates", done, len(pending))
        # The create never happened. Someone who no longer needs a cloud user is forgotten; the others
        # stay pending and are created below.
        working = set(
            session.execute(
                select(col(Person.id)).where(
                    col(Person.id).in_([s.person_id for s in missed]),
                    col(Person.status) == PersonStatus.ACTIVE,
                )
            ).scalars()
        )
        for state in missed:
            if state.person_id not in working:
                session.delete(state)
        session.commit()

    def _link(self, state: ExportState, user: dict[str, Any], *, origin: str) -> None:
        """Record that `state`'s person has the cloud user `user` (as Graph returned it)."""
        sent = flatten_user(user, self.mapper.managed_fields)
        state.object_id = str(user["id"])
        state.upn = str(user.get("userPrincipalName") or state.upn)
        state.status = ExportStatus.EXPORTED
        state.origin = origin
        state.sent = sent
        state.sent_hash = fields_hash(sent)
        state.enabled = bool(user.get("accountEnabled"))
        state.error = None
        state.deleted_at = None
        state.exported_at = self.now
        if not state.enabled and state.disabled_at is None:
            state.disabled_at = self.now

    # -- 3. groups ---------------------------------------------------------------------------------

    def _groups(self, session: Session, plan: ExportPlan) -> None:
        creates = [g for g in plan.groups if g.kind == "create"]
        renames = [g for g in plan.groups if g.kind == "rename"]
        rows = {g.key: g for g in session.execute(select(ExportGroup)).scalars()}
        total, done = len(creates) + len(renames), 0
        if creates:
            prefix = f"{self.mapper.prefix_slug}-"
            existing = self._managed_groups(prefix)
            for action in creates:
                spec = action.spec
                found = existing.get(spec.mail_nickname.lower())
                row = rows.get(spec.key) or ExportGroup(
                    key=spec.key, display_name=spec.display_name, mail_nickname=spec.mail_nickname
                )
                if found is None:
                    found = self._create_group(spec)
                    self.result.groups_created += 1
                    members: set[str] = set()
                else:
                    members = self._read_members(str(found["id"]))
                row.object_id = str(found["id"])
                row.display_name = str(found.get("displayName") or spec.display_name)
                if row.display_name != spec.display_name:  # found under another name: ours now
                    renames.append(GroupAction("rename", spec, "found under another name", row.object_id))
                    total += 1
                row.mail_nickname = spec.mail_nickname
                session.add(row)
                session.execute(delete(ExportMembership).where(col(ExportMembership.group_key) == spec.key))
                session.add_all(ExportMembership(group_key=spec.key, member_id=m) for m in members)
                session.commit()
                rows[spec.key] = row
                done += 1
                self.progress("groups", done, total)
        for action in renames:
            row = rows[action.spec.key]
            answer = self.client.request(
                "PATCH",
                f"/groups/{row.object_id}",
                {"displayName": action.spec.display_name, "description": action.spec.description},
            )
            if answer.ok:
                row.display_name = action.spec.display_name
            elif answer.status == 404:
                self._forget_group(session, row)
            else:
                self._reject(None, "", action.spec.display_name, "rename group", answer.error_message)
            session.commit()
            done += 1
            self.progress("groups", done, total)
        if self.full:
            for row in list(rows.values()):
                if row.object_id and row.key not in {a.spec.key for a in creates}:
                    members = self._read_members(row.object_id)
                    session.execute(
                        delete(ExportMembership).where(col(ExportMembership.group_key) == row.key)
                    )
                    session.add_all(ExportMembership(group_key=row.key, member_id=m) for m in members)
                    session.commit()

    def _managed_groups(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The tenant's groups whose mailNickname starts with our prefix, by lower-cased nickname."""
        url = (
            f"/groups?$filter=startswith(mailNickname,{odata_quote(prefix)})"
            f"&$select=id,displayName,mailNickname&$top={MAX_PAGE}"
        )
        return {str(g["mailNickname"]).lower(): g for g in self.client.pages(url, what="listing groups")}

    def _create_group(self, spec: GroupSpec) -> dict[str, Any]:
        """Create one security group. A create whose answer was lost is looked up before trying again
        (groups, unlike UPNs, may share a mailNickname: a blind retry could make two)."""
        body = {
            "displayName": spec.display_name,
            "description": spec.description,
            "mailEnabled": False,
            "mailNickname": spec.mail_nickname,
            "securityEnabled": True,
        }
        for attempt in range(self.client.max_retries + 1):
            if attempt:
                found = self._managed_groups(spec.mail_nickname).get(spec.mail_nickname.lower())
                if found is not None:
                    return found
            try:
                answer = self.client.request("POST", "/groups", body, retry_transport=False)
            except TransportUncertain:
                continue
            if answer.status == 201:
                return dict(answer.body)
            raise GraphError(
                answer.status,
                answer.error_code,
                answer.error_message,
                f"creating group {spec.display_name!r}",
            )
        raise GraphError(0, None, "no answer after every retry", f"creating group {spec.display_name!r}")

    def _read_members(self, group_id: str) -> set[str]:
        url = f"/groups/{group_id}/members?$select=id&$top={MAX_PAGE}"
        return {str(m["id"]) for m in self.client.pages(url, what="reading group members")}

    def _forget_group(self, session: Session, row: ExportGroup) -> None:
        self.result.notes.append(f"group {row.display_name} was deleted in the tenant: it is created again")
        session.execute(delete(ExportMembership).where(col(ExportMembership.group_key) == row.key))
        row.object_id = None

    # -- 4. users ----------------------------------------------------------------------------------

    def _states(self, session: Session, actions: Sequence[UserAction]) -> dict[str, ExportState]:
        ids = [a.person_id for a in actions]
        states: dict[str, ExportState] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for s in session.execute(
                select(ExportState).where(col(ExportState.person_id).in_(chunk))
            ).scalars():
                states[s.person_id] = s
        return states

    def _restores(self, session: Session, actions: list[UserAction]) -> None:
        if not actions:
            return
        states = self._states(session, actions)
        requests = (
            SubRequest("POST", f"/directory/deletedItems/{a.object_id}/restore", {}, tag=a) for a in actions
        )
        done = 0
        for envelope in self.client.batch(requests):
            for sub, answer in envelope:
                action: UserAction = sub.tag
                state = states[action.person_id]
                if answer.ok:
                    self._link(state, answer.body or {}, origin=state.origin)
                    self.result.restored += 1
                elif answer.status == 404:  # purged (more than 30 days), or deleted for good by hand
                    state.object_id, state.status = None, ExportStatus.REJECTED
                    state.error = "the deleted cloud user could no longer be restored: created again"
                    self.result.notes.append(f"{action.upn}: {state.error}")
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(state, action.person_id, action.upn, "restore", answer.error_message)
            session.commit()
            done += len(envelope)
            self.progress("restoring users", done, len(actions))

    def _create_body(self, desired: DesiredUser) -> dict[str, Any]:
        body = graph_body(desired.fields, for_create=True)
        if not self.azure.federated:
            body["passwordProfile"] = {"password": new_password(), "forceChangePasswordNextSignIn": True}
        return body

    def _creates(self, session: Session, actions: list[UserAction]) -> None:
        actions = [a for a in actions if a.person_id not in self.blocked and a.desired is not None]
        if not actions:
            return
        states = self._states(session, actions)

        def journalled() -> Iterator[SubRequest]:
            for start in range(0, len(actions), MAX_BATCH):
                chunk = actions[start : start + MAX_BATCH]
                for action in chunk:
                    desired = action.desired
                    assert desired is not None
                    state = states.get(action.person_id)
                    if state is None:
                        state = ExportState(person_id=action.person_id, employee_id=desired.employee_id)
                        session.add(state)
                        states[action.person_id] = state
                    state.status, state.object_id, state.upn = ExportStatus.PENDING, None, desired.upn
                    state.sent, state.sent_hash, state.error = dict(desired.fields), None, None
                    state.enabled, state.origin = desired.active, "created"
                session.commit()  # the journal: from here on, these creates may have happened
                for action in chunk:
                    assert action.desired is not None
                    yield SubRequest("POST", "/users", self._create_body(action.desired), tag=action)

        conflicts: list[UserAction] = []
        done = 0
        for envelope in self.client.batch(journalled()):
            for sub, answer in envelope:
                action = sub.tag
                state = states[action.person_id]
                if answer.status == 201:
                    state.object_id = str(answer.body["id"])
                    state.status = ExportStatus.EXPORTED
                    state.sent_hash = fields_hash(state.sent)
                    state.exported_at = self.now
                    state.disabled_at = None if state.enabled else self.now
                    self.result.created += 1
                elif answer.status == 400 and _DUPLICATE_UPN in answer.error_message:
                    conflicts.append(action)
                elif _given_up(answer):
                    self.result.unfinished += 1  # stays pending: looked up next time
                else:
                    state.status = ExportStatus.REJECTED
                    self._reject(state, action.person_id, action.upn, "create", answer.error_message)
            session.commit()
            done += len(envelope)
            self.progress("creating users", done, len(actions))
        if conflicts:
            self._resolve_conflicts(session, conflicts, states)

    def _resolve_conflicts(
        self, session: Session, conflicts: list[UserAction], states: dict[str, ExportState]
    ) -> None:
        """A create met an existing UPN: our own user (an earlier create whose answer was lost) is
        linked; anyone else's is reported."""
        requests = (
            SubRequest("GET", f"/users/{quote(a.upn, safe='@')}?$select={self.select}", tag=a)
            for a in conflicts
        )
        for envelope in self.client.batch(requests):
            for sub, answer in envelope:
                action: UserAction = sub.tag
                state = states[action.person_id]
                if answer.ok and answer.body.get("employeeId") == state.employee_id:
                    self._link(state, answer.body, origin="found")
                    self.result.found += 1
                    continue
                if _given_up(answer):
                    self.result.unfinished += 1
                    continue
                holder = answer.body.get("employeeId") if answer.ok else None
                state.status = ExportStatus.REJECTED
                self._reject(
                    state,
                    action.person_id,
                    action.upn,
                    "create",
                    f"Another object with the same value for property userPrincipalName already exists. "
                    f"{action.upn} belongs to a cloud user not exported by ght (employeeId "
                    f"{holder or 'empty'}): link it with `ght azure adopt --match upn`, or rename one",
                )
            session.commit()

    def _updates(self, session: Session, actions: list[UserAction]) -> None:
        if not actions:
            return
        states = self._states(session, actions)

        def body(action: UserAction) -> dict[str, Any]:
            return graph_body({name: new for name, (_, new) in action.changes.items()})

        requests = (SubRequest("PATCH", f"/users/{a.object_id}", body(a), tag=a) for a in actions)
        done = 0
        for envelope in self.client.batch(requests):
            for sub, answer in envelope:
                action = sub.tag
                state = states[action.person_id]
                if answer.ok:
                    sent = {**state.sent, **{name: new for name, (_, new) in action.changes.items()}}
                    state.sent, state.sent_hash, state.error = sent, fields_hash(sent), None
                    state.upn = str(sent.get("userPrincipalName") or state.upn)
                    state.exported_at = self.now
                    if action.kind is UserActionKind.DISABLE:
                        state.enabled, state.disabled_at = False, self.now
                        self.result.disabled += 1
                    elif action.kind is UserActionKind.ENABLE:
                        state.enabled, state.disabled_at = True, None
                        self.result.enabled += 1
                    else:
                        self.result.updated += 1
                elif answer.status == 404:
                    self._lost_user(session, state, action.upn)
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(state, action.person_id, action.upn, action.kind.value, answer.error_message)
            session.commit()
            done += len(envelope)
            self.progress("updating users", done, len(actions))

    def _lost_user(self, session: Session, state: ExportState, upn: str) -> None:
        """The cloud user was deleted outside ght: forget it; it is looked up, then created, next push."""
        if state.object_id:
            session.execute(
                delete(ExportMembership).where(col(ExportMembership.member_id) == state.object_id)
            )
        state.object_id, state.status = None, ExportStatus.PENDING
        self.result.notes.append(f"{upn} was deleted in the tenant outside ght: it will be created again")

    # -- 5. memberships ----------------------------------------------------------------------------

    def _memberships(self, session: Session, plan: ExportPlan) -> None:
        groups = {g.key: g for g in session.execute(select(ExportGroup)).scalars() if g.object_id}
        object_ids = {
            person_id: object_id
            for person_id, object_id in session.execute(
                select(col(ExportState.person_id), col(ExportState.object_id)).where(
                    col(ExportState.status) == ExportStatus.EXPORTED
                )
            )
            if object_id
        }
        exported: dict[str, set[str]] = defaultdict(set)
        for key, member in session.execute(
            select(col(ExportMembership.group_key), col(ExportMembership.member_id))
        ):
            exported[key].add(member)
        add, remove = membership_diff(wanted_members(plan.desired), object_ids, exported)
        adds: list[SubRequest] = []
        for key, people in sorted(add.items()):
            group = groups.get(key)
            members = sorted(object_ids[p] for p in people if p in object_ids)
            if group is None or not members:
                continue
            for start in range(0, len(members), MAX_BATCH):
                chunk = members[start : start + MAX_BATCH]
                adds.append(
                    SubRequest(
                        "PATCH",
                        f"/groups/{group.object_id}",
                        {"members@odata.bind": [self.ref_base + m for m in chunk]},
                        tag=(key, chunk),
                    )
                )
        removes = [
            SubRequest(
                "DELETE", f"/groups/{groups[key].object_id}/members/{member}/$ref", tag=(key, [member])
            )
            for key, members in sorted(remove.items())
            if key in groups
            for member in sorted(members)
        ]
        total = len(adds) + len(removes)
        done = 0
        one_by_one: list[SubRequest] = []
        for envelope in self.client.batch(adds):
            for sub, answer in envelope:
                key, chunk = sub.tag
                if answer.ok:
                    self._members_added(session, key, chunk)
                elif answer.status == 400 and _ALREADY_MEMBER in answer.error_message:
                    # One of the 20 is already a member (a lost answer, or added by hand): Graph added
                    # none of them. Add them one by one, where "already a member" is success.
                    gid = groups[key].object_id
                    one_by_one += [
                        SubRequest(
                            "POST",
                            f"/groups/{gid}/members/$ref",
                            {"@odata.id": self.ref_base + m},
                            tag=(key, [m]),
                        )
                        for m in chunk
                    ]
                elif answer.status == 404:
                    self._forget_group(session, groups[key])
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(None, "", groups[key].display_name, "add members", answer.error_message)
            session.commit()
            done += len(envelope)
            self.progress("group members", done, total)
        for envelope in self.client.batch(one_by_one):
            for sub, answer in envelope:
                key, chunk = sub.tag
                if answer.ok or (answer.status == 400 and _ALREADY_MEMBER in answer.error_message):
                    self._members_added(session, key, chunk)
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(
                        None, "", groups[key].display_name, f"add member {chunk[0]}", answer.error_message
                    )
            session.commit()
        for envelope in self.client.batch(removes):
            for sub, answer in envelope:
                key, (member,) = sub.tag
                if answer.ok or answer.status == 404:  # 404: not (or no longer) a member
                    session.execute(
                        delete(ExportMembership).where(
                            col(ExportMembership.group_key) == key, col(ExportMembership.member_id) == member
                        )
                    )
                    self.result.members_removed += 1
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(
                        None, "", groups[key].display_name, f"remove member {member}", answer.error_message
                    )
            session.commit()
            done += len(envelope)
            self.progress("group members", done, total)

    def _members_added(self, session: Session, key: str, members: list[str]) -> None:
        session.add_all(ExportMembership(group_key=key, member_id=m) for m in members)
        self.result.members_added += len(members)

    # -- 6. deletions --------------------------------------------------------------------------------

    def _deletes(self, session: Session, actions: list[UserAction]) -> None:
        if not actions:
            return
        states = self._states(session, actions)
        requests = (SubRequest("DELETE", f"/users/{a.object_id}", tag=a) for a in actions)
        done = 0
        for envelope in self.client.batch(requests):
            for sub, answer in envelope:
                action = sub.tag
                state = states[action.person_id]
                if answer.ok or answer.status == 404:
                    session.execute(
                        delete(ExportMembership).where(col(ExportMembership.member_id) == state.object_id)
                    )
                    state.status, state.enabled, state.deleted_at = ExportStatus.DELETED, False, self.now
                    self.result.deleted += 1
                elif _given_up(answer):
                    self.result.unfinished += 1
                else:
                    self._reject(state, action.person_id, action.upn, "delete", answer.error_message)
            session.commit()
            done += len(envelope)
            self.progress("deleting users", done, len(actions))


def _given_up(answer: GraphResponse) -> bool:
    """No final answer after every retry (throttled or failing throughout): try again next push."""
    return answer.status == 0 or answer.status == 429 or answer.status >= 500
