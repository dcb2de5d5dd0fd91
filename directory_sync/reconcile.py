"""Reconciliation: from one site's mapped accounts to a plan, and from a plan to the directory.

Planning reads the directory and changes nothing; a plan is a value that can be printed (dry run),
tested and applied. Each account read from the source is in one *situation* (midPoint's words):

- linked: its anchor is already linked to a person; the account is *updated* if it changed;
- unlinked: correlation (`correlate.py`) finds its person above the auto-link threshold: *link*;
- disputed: candidates score between the thresholds: a person is created for it (so nobody is locked
  out) and a *review case* is opened for a human to link, keep or reject;
- unmatched: no candidate: a person is *created*, with a new territorial login;
- deleted: it was linked, and the source reported it deleted or a complete read no longer has it:
  it is *closed*.

Applying a plan inserts and updates accounts, then recomputes the affiliations and people it touched
from their accounts with the configured survivorship, recording where each value came from. A person
with no active affiliation is suspended, never deleted; after the grace period, deprovisioned. Every
change to a person or a link is an audit event. Applying runs inside the caller's transaction: the
caller commits once per site, so a failure or a kill leaves nothing half-written.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections import defaultdict
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .config import CorrelationConfig, Safety, SiteInfo, Survivorship
from .correlate import Candidate, Correlator, Found, PersonIndex, Probe, Verdict, key_hash
from .mapping import MappedAccount, to_ascii
from .store import (
    Account,
    AccountState,
    Affiliation,
    AuditEvent,
    CorrelationKey,
    LinkDecision,
    Person,
    PersonStatus,
    ReviewCase,
    Site,
    new_person_id,
    sa_table,
)
from .store.bulk import insert_rows, select_rows, update_rows

#: Person attributes, derived from the person's accounts by survivorship.
PERSON_FIELDS = ("family_name", "given_name", "birth_name", "birth_date", "email", "rpps", "adeli")
#: Affiliation attributes, derived from the person's accounts at that site.
AFFILIATION_FIELDS = ("profession", "department", "title", "employee_id", "roles")
_CHUNK = 500

_PERSON = sa_table(Person)
_ACCOUNT = sa_table(Account)
_AFFILIATION = sa_table(Affiliation)
_AUDIT = sa_table(AuditEvent)
_REVIEW = sa_table(ReviewCase)
_KEY = sa_table(CorrelationKey)


class ActionKind(enum.StrEnum):
    CREATE = "create"  # unmatched (or disputed: with a review case): a new person with this account
    LINK = "link"  # unlinked: the account joins an existing person
    UPDATE = "update"  # linked: the account's values changed
    CLOSE = "close"  # deleted: gone from the source
    REJECT = "reject"  # unusable record (no login, no family name, duplicate anchor)


@dataclass(slots=True)
class AccountAction:
    kind: ActionKind
    anchor: str
    login: str
    reason: str
    person_id: str | None = None
    account: MappedAccount | None = None
    account_id: int | None = None  # the known account (update, close); a new one's once applied
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    rule: str | None = None
    score: float = 0.0
    territorial_login: str | None = None  # for a new person
    review: list[Candidate] | None = None  # a disputed account: the candidates a human will choose from
    probe: Probe | None = None  # its values normalised for correlation (created, linked, updated)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.kind.value,
            "anchor": self.anchor,
            "login": self.login,
            "person": self.person_id,
            "reason": self.reason,
            "changes": {k: {"from": old, "to": new} for k, (old, new) in self.changes.items()},
        }
        if self.rule:
            data["rule"], data["score"] = self.rule, round(self.score, 3)
        if self.territorial_login:
            data["territorial_login"] = self.territorial_login
        if self.review is not None:
            data["review"] = [c.as_dict() for c in self.review]
        return data


@dataclass
class SitePlan:
    """What one sync of one site would change."""

    site: str
    complete: bool
    read: int = 0
    unchanged: int = 0
    # Accounts of the site in the directory, not closed, before this run (a delta's: counted only when
    # it closes some, and only as far as the closure threshold needs).
    known_accounts: int = 0
    actions: list[AccountAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, kind: ActionKind) -> int:
        return sum(1 for a in self.actions if a.kind is kind)

    def of(self, kind: ActionKind) -> Iterator[AccountAction]:
        return (a for a in self.actions if a.kind is kind)

    @property
    def reviews(self) -> int:
        return sum(1 for a in self.actions if a.review is not None)


# --------------------------------------------------------------------------------------------------
# What a run knows before planning: people, logins, human decisions.


_NOT_LOGIN = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=1 << 16)
def _login_part(text: str) -> str:
    """A name as it goes into a login: ASCII, lower case, words joined by hyphens (names repeat a lot
    across a territory: each is worked out once)."""
    ascii_text = to_ascii(text).lower().replace("'", "")
    return "-".join(w for w in _NOT_LOGIN.split(ascii_text) if w)


def _login_base(given: str | None, family: str) -> str:
    given_part, family_part = _login_part(given or ""), _login_part(family) or "x"
    return f"{given_part}.{family_part}" if given_part else family_part


class RunReads:
    """Where a run's lookups (candidates, taken logins) read the directory: through the session of the
    site being synchronised while there is one, else through a session of their own.

    One connection for a site's reads keeps SQLite's page cache warm: a connection drops its whole cache
    whenever another one has committed since its last read, so lookups on a second connection started
    cold after every site's commit."""

    def __init__(self, engine: Any, session: Session | None = None) -> None:
        self.engine = engine
        self.session = session  # the site's, while it is synchronised

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        if self.session is not None:
            yield self.session
            return
        with Session(self.engine) as session:
            yield session


#: The logins in any of _RANGES ranges [from_i, to_i): those a batch of new people's logins may take.
_RANGES = 16
_LOGINS_IN_RANGES = select(_PERSON.c.login).where(
    or_(
        *(
            and_(_PERSON.c.login >= bindparam(f"from_{i}"), _PERSON.c.login < bindparam(f"to_{i}"))
            for i in range(_RANGES)
        )
    )
)


class LoginAllocator:
    """Territorial logins: `prenom.nom`, ASCII; collisions get 2, 3...; a login is never reused, because
    people are never deleted and every login ever given stays taken.

    With `reads` (a `RunReads`), the taken logins are read from the directory as needed: those that
    start with the login about to be given (one indexed range read), until reading them all is cheaper.
    """

    #: After this many lookups, every taken login is read at once.
    BULK_AFTER = 200

    def __init__(
        self, taken: Iterable[str] = (), max_length: int = 64, reads: RunReads | None = None
    ) -> None:
        self.taken = set(taken)
        self.max_length = max_length
        self._reads = reads
        self._read: set[str] = set()  # bases whose taken logins have been read
        self._complete = reads is None
        self._lookups = 0

    def allocate(self, given: str | None, family: str) -> str:
        base = self._base(given, family)
        self._read_taken([base])
        login, n = base, 1
        while login in self.taken:
            n += 1
            login = f"{base}{n}"
        self.taken.add(login)
        return login

    def prepare(self, names: Iterable[tuple[str | None, str]]) -> None:
        """Read at once the taken logins that the people about to be created (given, family) may
        collide with: one query for a batch instead of one per person."""
        if not self._complete:
            self._read_taken([self._base(given, family) for given, family in names])

    def _base(self, given: str | None, family: str) -> str:
        return _login_base(given, family)[: self.max_length - 3].rstrip(".-")

    def _read_taken(self, bases: list[str]) -> None:
        if self._complete:
            return
        wanted = sorted(set(bases) - self._read)
        if not wanted:
            return
        self._lookups += len(wanted)
        assert self._reads is not None
        with self._reads() as session:
            if self._lookups > self.BULK_AFTER:  # a large arrival: read every login once
                self.taken.update(
                    session.execute(select(_PERSON.c.login).where(_PERSON.c.login.is_not(None))).scalars()
                )
                self._complete = True
                return
            # Logins that start with a base (base2, base3...; others too), one statement compiled once.
            for chunk in _chunks(wanted, _RANGES):
                padded = [*chunk, *[chunk[-1]] * (_RANGES - len(chunk))]
                ranges = {f"from_{i}": base for i, base in enumerate(padded)}
                ranges.update((f"to_{i}", base + "\x7f") for i, base in enumerate(padded))
                self.taken.update(row[0] for row in select_rows(session, _LOGINS_IN_RANGES, ranges))
            self._read.update(wanted)


_PEOPLE_WITH_KEYS = (
    select(_KEY.c.key_hash, _ACCOUNT.c.person_id)
    .join(_KEY, _KEY.c.account_id == _ACCOUNT.c.id)
    .where(_KEY.c.key_hash.in_(bindparam("hashes", expanding=True)))
)
_ACCOUNT_VALUES = select(_ACCOUNT.c.person_id, _ACCOUNT.c.site, _ACCOUNT.c.attributes)
_ACCOUNT_VALUES_OF = _ACCOUNT_VALUES.where(_ACCOUNT.c.person_id.in_(bindparam("ids", expanding=True)))


class _StoredPeople:
    """The directory, as a `correlate.StoredPeople`: candidates by key (`correlation_key`), accounts by
    person. Closed accounts too: a person who left a site and joins another must be found again."""

    def __init__(self, reads: RunReads) -> None:
        self._reads = reads

    def size(self) -> int:
        # The highest account id: accounts are never deleted, so it is their number (give or take the
        # ids of rolled-back inserts), read from the end of the primary key instead of counting 100,000.
        with self._reads() as session:
            return int(session.execute(select(func.max(_ACCOUNT.c.id))).scalar_one() or 0)

    def people_with(self, keys: Collection[str]) -> list[tuple[str, str]]:
        by_hash: dict[int, list[str]] = defaultdict(list)
        for key in keys:
            by_hash[key_hash(key)].append(key)
        with self._reads() as session:
            rows = select_rows(session, _PEOPLE_WITH_KEYS, {"hashes": sorted(by_hash)})
        return [(key, person_id) for hashed, person_id in rows for key in by_hash[hashed]]

    def accounts_of(self, person_ids: Collection[str] | None) -> Iterator[tuple[str, str, Mapping[str, str]]]:
        with self._reads() as session:
            if person_ids is None:
                for person_id, site, attributes in session.execute(_ACCOUNT_VALUES):
                    yield person_id, site, attributes or {}
                return
            for chunk in _chunks(sorted(person_ids), _CHUNK):
                for person_id, site, attributes in select_rows(session, _ACCOUNT_VALUES_OF, {"ids": chunk}):
                    yield person_id, site, attributes or {}


#: Read ahead for no more new accounts than this in one read (beyond, the index reads everyone anyway).
_LOOKUPS_AHEAD = 2_000


@dataclass(slots=True)
class Lookups:
    """`read_lookups`' answer for a batch: the anchors looked up and the known accounts among them (as
    `_KNOWN` reads them), how many accounts were new, and what their candidates' lookups found."""

    site: str
    anchors: list[str]
    known: list[tuple[Any, ...]]
    new: int
    found: Found


def read_lookups(engine: Any, site: str, accounts: Sequence[MappedAccount], new_so_far: int = 0) -> Lookups:
    """What a batch of a site's delta will look up in the directory, read on `engine` by the reading
    process while this one applies the sites before (`pipeline`): the known accounts among them, and
    the new ones' candidates (`PersonIndex.absorb` says why a read made earlier is safe to use).
    `new_so_far`: new accounts read ahead already in this read (past `_LOOKUPS_AHEAD`, their
    candidates are left to the run, whose index will have read everyone)."""
    anchors = sorted({a.anchor for a in accounts})
    with Session(engine) as session:
        known = _known_by_anchor(session, site, anchors)
        found = Found(set(), [], [])
        new = _new_accounts(accounts, {row[1] for row in known})
        if new and new_so_far + len(new) <= _LOOKUPS_AHEAD:
            for account in new:
                found.keys |= Probe.of(account.values, site).lookup_keys()
            stored = _StoredPeople(RunReads(engine, session))
            found.filed = stored.people_with(found.keys)
            found.accounts = [
                (person_id, account_site, Probe.of(values, account_site).as_row())
                for person_id, account_site, values in stored.accounts_of({p for _, p in found.filed})
            ]
    return Lookups(site, anchors, known, len(new), found)


def file_correlation_keys(connection: Any, accounts: Iterable[tuple[int, str, Mapping[str, str]]]) -> None:
    """File accounts (id, site, values) under their correlation keys; keys already filed are kept."""
    rows = [
        (key_hash(k), account_id)
        for account_id, site, values in accounts
        for k in Probe.of(values, site).index_keys()
    ]
    _file_keys(connection, rows)


def _file_keys(connection: Any, rows: list[tuple[int, int]]) -> None:
    """Insert (key hash, account id) rows, keeping those already there. Plain DB-API executemany: at
    six or so keys per account, SQLAlchemy's per-row parameter handling would cost more than SQLite."""
    if connection.dialect.name == "postgresql":
        statement = (
            "INSERT INTO correlation_key (key_hash, account_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        )
    else:
        statement = "INSERT OR IGNORE INTO correlation_key (key_hash, account_id) VALUES (?, ?)"
    for chunk in _chunks(rows, 10 * _CHUNK):
        connection.exec_driver_sql(statement, list(chunk))


_DECISION = sa_table(LinkDecision)
_DECISIONS = select(
    _DECISION.c.site,
    _DECISION.c.anchor,
    _DECISION.c.kind,
    _DECISION.c.person_id,
    _DECISION.c.decided_by,
    _DECISION.c.decided_at,
).order_by(_DECISION.c.id)


class RunContext:
    """Loaded once per run and kept in step as sites are planned and applied.

    People and taken logins are read from the directory as the run needs them (see `PersonIndex` and
    `LoginAllocator`): a delta that brings a few new accounts reads their candidates, not everyone.
    """

    def __init__(self, config: CorrelationConfig, engine: Any, decisions: dict[tuple[str, str], list[Any]]):
        """`decisions`: the `link_decision` rows (site, anchor, kind, person_id, decided_by, decided_at)
        by site and anchor."""
        self.config = config
        self.decisions = decisions
        self.closures = 0  # accounts closed so far in this run (for the run-wide threshold)
        self.reads = RunReads(engine)  # `sync` points it at each site's session in turn
        self.index = PersonIndex(_StoredPeople(self.reads))
        self.logins = LoginAllocator((), config.territorial_login.max_length, self.reads)
        self.correlator = Correlator(config, self.index)

    @classmethod
    def load(cls, session: Session, config: CorrelationConfig) -> RunContext:
        # Rows, not ORM objects: a run that loads no ORM entity never pays for configuring the mappers.
        decisions: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for decision in session.execute(_DECISIONS):
            decisions[(decision.site, decision.anchor)].append(decision)
        return cls(config, session.get_bind(), decisions)


#: A site's known accounts: all of them (a full read), or by anchor (a delta looks up every batch it
#: reads).
_KNOWN = select(
    _ACCOUNT.c.id, _ACCOUNT.c.anchor, _ACCOUNT.c.fingerprint, _ACCOUNT.c.person_id, _ACCOUNT.c.state
).where(_ACCOUNT.c.site == bindparam("site"))
_KNOWN_BY_ANCHOR = _KNOWN.where(_ACCOUNT.c.anchor.in_(bindparam("anchors", expanding=True)))
_IDS_BY_ANCHOR = select(_ACCOUNT.c.anchor, _ACCOUNT.c.id).where(
    _ACCOUNT.c.site == bindparam("site"), _ACCOUNT.c.anchor.in_(bindparam("anchors", expanding=True))
)


#: How many of a site's accounts are open, counting no further than `enough` (ix_account_site_state).
_OPEN_ACCOUNTS = select(func.count()).select_from(
    select(_ACCOUNT.c.id)
    .where(_ACCOUNT.c.site == bindparam("site"), _ACCOUNT.c.state != AccountState.DELETED.value)
    .limit(bindparam("enough"))
    .subquery()
)


def _known_by_anchor(session: Session, site: str, anchors: Sequence[str]) -> list[tuple[Any, ...]]:
    """The site's known accounts among `anchors`, as `_KNOWN` reads them."""
    return [
        row
        for chunk in _chunks(anchors, _CHUNK)
        for row in select_rows(session, _KNOWN_BY_ANCHOR, {"site": site, "anchors": list(chunk)})
    ]


def _new_accounts(accounts: Iterable[MappedAccount], known: Container[str]) -> list[MappedAccount]:
    """The accounts to correlate: neither deleted nor known (by anchor)."""
    return [a for a in accounts if not a.deleted and a.anchor not in known]


@dataclass(slots=True)
class _Known:
    id: int
    fingerprint: str
    person_id: str
    state: str


class SitePlanner:
    """Builds a `SitePlan` from the accounts of one site, streamed in as they are read."""

    def __init__(self, session: Session, site: str, context: RunContext, *, delta: bool = False) -> None:
        """`delta`: the read brings only what changed, so the site's known accounts are looked up one
        by one as they come instead of all read first (a delta costs what it changes)."""
        self.session = session
        self.context = context
        self.site = site
        self.plan = SitePlan(site=site, complete=False)
        self._known: dict[str, _Known] = {}
        self._probes: dict[str, Probe] = {}  # new accounts' probes, worked out by `look_up`
        self._looked_up: set[str] | None = None  # None: every known account is in _known
        if delta:
            self._looked_up = set()  # and known_accounts is counted at the end, only if needed
        else:
            self.load_all()
        self._seen: set[str] = set()

    def _remember(self, known: Iterable[tuple[Any, ...]]) -> None:
        """Keep known accounts, as `_KNOWN` reads them."""
        for account_id, anchor, fingerprint, person_id, state in known:
            self._known[anchor] = _Known(account_id, fingerprint, person_id, state)

    def load_all(self) -> None:
        """Read every known account of the site (a full read needs them all, to see who is gone)."""
        self._known = {}
        self._remember(select_rows(self.session, _KNOWN, {"site": self.site}))
        self._looked_up = None
        self.plan.known_accounts = sum(1 for k in self._known.values() if k.state != AccountState.DELETED)

    def look_up(self, accounts: Sequence[MappedAccount], ahead: Sequence[Lookups] = ()) -> None:
        """Before a batch of accounts is added: read the known ones in one query (a delta; a full read
        has them all), then the candidates of the new ones, for all of them at once. `ahead`: lookups
        the reading process made already (`read_lookups`), for this batch or others of the site."""
        for lookups in ahead:
            if self._looked_up is not None and lookups.site == self.site:
                self._remember(lookups.known)
                self._looked_up.update(lookups.anchors)
                self.context.index.absorb(lookups.found)
        if self._looked_up is not None:
            wanted = sorted({a.anchor for a in accounts} - self._looked_up)
            self._remember(_known_by_anchor(self.session, self.site, wanted))
            self._looked_up.update(wanted)
        new = _new_accounts(accounts, self._known)
        for account in new:
            self._probes[account.anchor] = Probe.of(account.values, self.plan.site)
        self.context.index.prepare([self._probes[a.anchor] for a in new])
        self.context.logins.prepare((a.get("given_name"), a.values.get("family_name") or "") for a in new)

    def _lookup(self, anchor: str) -> _Known | None:
        if self._looked_up is not None and anchor not in self._looked_up:
            self._looked_up.add(anchor)
            self._remember(_known_by_anchor(self.session, self.site, [anchor]))
        return self._known.get(anchor)

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
        known = self._lookup(account.anchor)
        if known is not None:
            if known.fingerprint == account.fingerprint and known.state != AccountState.DELETED:
                plan.unchanged += 1
                return
            reason = (
                "reappeared in the source" if known.state == AccountState.DELETED else "changed in the source"
            )
            probe = Probe.of(account.values, self.plan.site)
            plan.actions.append(
                AccountAction(
                    ActionKind.UPDATE,
                    account.anchor,
                    account.login,
                    reason,
                    known.person_id,
                    account,
                    known.id,
                    probe=probe,
                )
            )
            self.context.index.add(known.person_id, account.values, self.plan.site, probe)
            return
        plan.actions.append(self._correlate(account))

    def _correlate(self, account: MappedAccount) -> AccountAction:
        """A new account: a human's remembered decision first, then the correlation rules."""
        prepared = self._probes.pop(account.anchor, None)
        excluded: set[str] = set()
        for decision in self.context.decisions.get((self.plan.site, account.anchor), []):
            if decision.kind == "link" and decision.person_id:
                return self._link(
                    account,
                    decision.person_id,
                    f"admin:{decision.decided_by}",
                    1.0,
                    f"linked by {decision.decided_by} on {decision.decided_at:%Y-%m-%d}",
                )
            if decision.kind == "new":
                return self._create(account, f"kept apart by {decision.decided_by}", None)
            if decision.kind == "not" and decision.person_id:
                excluded.add(decision.person_id)
        probe = prepared or Probe.of(account.values, self.plan.site)
        verdict = self.context.correlator.decide(probe, excluded=excluded)
        if verdict.verdict is Verdict.LINK and verdict.person_id:
            return self._link(
                account, verdict.person_id, verdict.rule or "", verdict.score, verdict.reason, probe
            )
        if verdict.verdict is Verdict.REVIEW:
            return self._create(account, f"disputed: {verdict.reason}", verdict.candidates, probe)
        return self._create(account, verdict.reason, None, probe)

    def _link(
        self,
        account: MappedAccount,
        person_id: str,
        rule: str,
        score: float,
        reason: str,
        probe: Probe | None = None,
    ) -> AccountAction:
        probe = probe or Probe.of(account.values, self.plan.site)
        self.context.index.add(person_id, account.values, self.plan.site, probe)
        return AccountAction(
            ActionKind.LINK,
            account.anchor,
            account.login,
            reason,
            person_id,
            account,
            rule=rule,
            score=score,
            probe=probe,
        )

    def _create(
        self, account: MappedAccount, reason: str, review: list[Candidate] | None, probe: Probe | None = None
    ) -> AccountAction:
        person_id = new_person_id()
        probe = probe or Probe.of(account.values, self.plan.site)
        self.context.index.add(person_id, account.values, self.plan.site, probe, new=True)
        login = self.context.logins.allocate(account.get("given_name"), account.values["family_name"])
        return AccountAction(
            ActionKind.CREATE,
            account.anchor,
            account.login,
            reason,
            person_id,
            account,
            territorial_login=login,
            review=review,
            probe=probe,
        )

    def _deleted(self, account: MappedAccount) -> None:
        """A deletion reported by the source itself (AD tombstone, syncrepl delete notice)."""
        self._seen.add(account.anchor)
        known = self._lookup(account.anchor)
        if known is None or known.state == AccountState.DELETED:
            self.plan.unchanged += 1
            return
        self.plan.actions.append(
            AccountAction(
                ActionKind.CLOSE, account.anchor, "", "deleted in the source", known.person_id, None, known.id
            )
        )

    def finish(self, *, complete: bool, describe: bool = True) -> SitePlan:
        """Close the accounts not seen, but only if the source was read completely.

        A delta read (only what changed) is not complete: it closes only the deletions it reports.
        `describe`: work out what each update changes, from what to what, for a reader of the plan
        (a run that applies it straight away needs no such detail: its audit trail has it).
        """
        plan = self.plan
        plan.complete = complete
        if complete:
            if self._looked_up is not None:
                self.load_all()
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
        else:
            self._count_known()
        if describe:
            self._describe_changes()
        return plan

    def _count_known(self) -> None:
        """A delta's `known_accounts`: counted only when it closes accounts, and only as far as the
        closure threshold needs (a count of the whole site would cost what the directory holds)."""
        closures = self.plan.count(ActionKind.CLOSE)
        if not closures:
            return
        safety = self.context.config.safety
        enough = safety.min_accounts_for_percent
        if safety.max_closure_percent > 0:
            enough = max(enough, math.ceil(closures * 100 / safety.max_closure_percent))
        counted = select_rows(self.session, _OPEN_ACCOUNTS, {"site": self.site, "enough": enough + 1})
        self.plan.known_accounts = counted[0][0]

    def _describe_changes(self) -> None:
        """Fill in what each update and close changes (from -> to), for the plan's reader."""
        actions = [a for a in self.plan.actions if a.kind in (ActionKind.UPDATE, ActionKind.CLOSE)]
        for chunk in _chunks(actions, _CHUNK):
            by_id = {a.account_id: a for a in chunk}
            rows = self.session.execute(
                select(
                    _ACCOUNT.c.id, _ACCOUNT.c.login, _ACCOUNT.c.dn, _ACCOUNT.c.state, _ACCOUNT.c.attributes
                ).where(_ACCOUNT.c.id.in_(list(by_id)))
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


def closure_threshold_problem(
    plan: SitePlan, safety: Safety, *, already_closed: int, allowed: int
) -> str | None:
    """Why applying `plan` would close too many accounts, or None. Like Entra Connect's deletion
    threshold: a directory that suddenly returns nothing must not suspend everyone."""
    closures = plan.count(ActionKind.CLOSE)
    if closures == 0 or closures <= allowed:
        return None
    known = plan.known_accounts
    if plan.read == 0 and known > 0:
        return f"the source returned no account at all but {known} are known: it would close all of them"
    if closures > safety.max_closures:
        return f"it would close {closures} accounts, more than max_closures = {safety.max_closures}"
    if known >= safety.min_accounts_for_percent and closures * 100 > safety.max_closure_percent * known:
        return (
            f"it would close {closures} of {known} accounts ({closures * 100 / known:.0f}%), "
            f"more than max_closure_percent = {safety.max_closure_percent:g}%"
        )
    if already_closed + closures > safety.max_closures:
        return (
            f"this run would close {already_closed + closures} accounts over its sites, "
            f"more than max_closures = {safety.max_closures}"
        )
    return None


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
    anchor: str
    state: str
    attributes: dict[str, str]
    first_seen_at: datetime
    last_changed_at: datetime


def _order(
    accounts: Iterable[_AccountView],
    rules: Sequence[str],
    primary_site: str | None,
    site_order: Sequence[str],
) -> list[_AccountView]:
    def key(a: _AccountView) -> tuple[Any, ...]:
        parts: list[Any] = [0 if a.state == AccountState.ENABLED else 1]
        for rule in rules:
            if rule == "primary":
                parts.append(0 if a.site == primary_site else 1)
            elif rule == "oldest":
                parts.append(a.first_seen_at.timestamp())
            elif rule == "newest":
                parts.append(-a.first_seen_at.timestamp())
            elif rule == "site_order":
                parts.append(site_order.index(a.site) if a.site in site_order else len(site_order))
        parts.append(a.id)
        return tuple(parts)

    return sorted(accounts, key=key)


def derive_person(
    accounts: Sequence[_AccountView], survivorship: Survivorship, primary_site: str | None
) -> tuple[dict[str, str | None], dict[str, Any]]:
    """The person's attributes and where each came from (site, account, since when).

    Closed accounts count only when nothing else is left: a suspended person keeps what was last known.
    """
    accounts = [a for a in accounts if a.state != AccountState.DELETED] or list(accounts)
    values: dict[str, str | None] = {}
    provenance: dict[str, Any] = {}
    orders: dict[tuple[str, ...], list[_AccountView]] = {}
    since: dict[int, str] = {}  # each account's date, written once (most people have one account)
    for name in PERSON_FIELDS:
        if len(accounts) == 1:
            ordered = accounts  # whatever the rules: nothing to choose from
        else:
            rules = tuple(survivorship.attributes.get(name, survivorship.default))
            if rules not in orders:
                orders[rules] = _order(accounts, rules, primary_site, survivorship.site_order)
            ordered = orders[rules]
        source = next((a for a in ordered if a.attributes.get(name)), None)
        values[name] = source.attributes[name] if source else None
        if source is not None:
            if source.id not in since:
                since[source.id] = source.last_changed_at.isoformat()
            provenance[name] = {"site": source.site, "anchor": source.anchor, "since": since[source.id]}
    return values, provenance


def derive_affiliation(accounts: Iterable[_AccountView]) -> dict[str, Any]:
    ordered = _order([a for a in accounts if a.state != AccountState.DELETED], ("oldest",), None, ())
    if not ordered:
        return {"active": False}
    values: dict[str, Any] = {name: ordered[0].attributes.get(name) for name in AFFILIATION_FIELDS}
    values["active"] = ordered[0].state == AccountState.ENABLED
    return values


def choose_primary(affiliations: dict[str, dict[str, Any]], config: CorrelationConfig) -> str | None:
    """The home site among the active affiliations (site -> values with `active`, `started_at`)."""
    active = [(site, values) for site, values in affiliations.items() if values["active"]]
    if not active:
        return None
    rule = config.primary_affiliation
    if rule.rule == "site_order":
        order = rule.site_order
        return min(active, key=lambda sv: (order.index(sv[0]) if sv[0] in order else len(order), sv[0]))[0]
    if rule.rule == "most_recent":
        return max(active, key=lambda sv: (sv[1]["started_at"].timestamp(), sv[0]))[0]
    return min(active, key=lambda sv: (sv[1]["started_at"].timestamp(), sv[0]))[0]


# --------------------------------------------------------------------------------------------------
# Applying.


@dataclass
class ApplyResult:
    suspended: int = 0
    reactivated: int = 0
    reviews: int = 0
    audit: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Actor:
    """Who makes a change, for the audit trail: a sync run or an administrator."""

    name: str
    run_id: int | None = None

    def event(
        self,
        now: datetime,
        action: str,
        *,
        person_id: str | None = None,
        site: str | None = None,
        changes: dict[str, Any] | None = None,
        reason: str = "",
    ) -> dict[str, Any]:
        return {
            "at": now,
            "actor": self.name,
            "run_id": self.run_id,
            "person_id": person_id,
            "site": site,
            "action": action,
            "changes": changes or {},
            "reason": reason,
        }


def apply_plan(
    session: Session, plan: SitePlan, site: SiteInfo, now: datetime, context: RunContext, actor: Actor
) -> ApplyResult:
    """Write `plan` into the directory, inside the caller's transaction."""
    _ensure_site(session, site)
    result = ApplyResult()
    audit = result.audit

    # Unmatched and disputed accounts: a new person each, derived from that one account.
    creates = list(plan.of(ActionKind.CREATE))
    for chunk in _chunks(creates, _CHUNK):
        people, affiliations = [], []
        for action in chunk:
            account = action.account
            assert account is not None
            # One account: what derive_person and derive_affiliation would give, without the sorting.
            values = {name: account.values.get(name) for name in PERSON_FIELDS}
            source = {"site": plan.site, "anchor": account.anchor, "since": now.isoformat()}
            provenance = {name: source for name, value in values.items() if value}
            people.append(
                {
                    "id": action.person_id,
                    "login": action.territorial_login,
                    **values,
                    "provenance": provenance,
                    "status": PersonStatus.ACTIVE,
                    "merged_into": None,
                    "created_at": now,
                    "updated_at": now,
                    "suspended_at": None,
                    "deprovisioned_at": None,
                }
            )
            wanted = {name: account.values.get(name) for name in AFFILIATION_FIELDS}
            wanted["active"] = account.enabled
            affiliations.append(
                {
                    "person_id": action.person_id,
                    "site": plan.site,
                    "started_at": now,
                    "ended_at": None if wanted["active"] else now,
                    "primary": wanted["active"],
                    **wanted,
                }
            )
            audit.append(
                actor.event(
                    now,
                    "person.created",
                    person_id=action.person_id,
                    site=plan.site,
                    changes={
                        "login": {"from": None, "to": action.territorial_login},
                        "account": {"from": None, "to": action.login},
                    },
                    reason=action.reason,
                )
            )
        insert_rows(session, _PERSON, people)
        insert_rows(session, _ACCOUNT, [_new_account_row(a, plan.site, now, "created") for a in chunk])
        insert_rows(session, _AFFILIATION, affiliations)

    links = list(plan.of(ActionKind.LINK))
    for chunk in _chunks(links, _CHUNK):
        insert_rows(session, _ACCOUNT, [_new_account_row(a, plan.site, now, a.rule or "link") for a in chunk])
    # The new accounts' ids, read once: their review cases and correlation keys refer to them.
    ids = _account_ids(session, plan.site, [a.anchor for a in creates + links])
    for action in creates + links:
        action.account_id = ids[action.anchor]

    disputed = [a for a in creates if a.review is not None]
    if disputed:
        insert_rows(
            session,
            _REVIEW,
            [
                {
                    "site": plan.site,
                    "anchor": a.anchor,
                    "account_id": a.account_id,
                    "person_id": a.person_id,
                    "status": "open",
                    "reason": a.reason,
                    "candidates": [c.as_dict() for c in a.review or []],
                    "opened_at": now,
                    "run_id": actor.run_id,
                    "decided_at": None,
                    "decided_by": None,
                    "decision_note": None,
                }
                for a in disputed
            ],
        )
        audit.extend(
            actor.event(
                now,
                "review.opened",
                person_id=a.person_id,
                site=plan.site,
                reason=a.reason,
                changes={"candidates": {"from": None, "to": [c.person_id for c in a.review or []]}},
            )
            for a in disputed
        )
        result.reviews = len(disputed)

    # Linked, unlinked and deleted accounts change people who have other accounts: recompute them.
    audit.extend(
        actor.event(
            now,
            "account.linked",
            person_id=a.person_id,
            site=plan.site,
            reason=a.reason,
            changes={
                "account": {"from": None, "to": a.login},
                "rule": {"from": None, "to": a.rule},
                "score": {"from": None, "to": round(a.score, 3)},
            },
        )
        for a in links
    )
    updates = list(plan.of(ActionKind.UPDATE))
    closes = list(plan.of(ActionKind.CLOSE))
    before = _read_before(session, updates + closes)
    for chunk in _chunks(updates, _CHUNK):
        rows = []
        for a in chunk:
            row = _account_row(a, now) | {"account_id": a.account_id, "deleted_at": None}
            old = before.get(a.account_id) if a.account_id is not None else None
            if old is not None:  # an indexed column set to its own value still rewrites its index entry
                if old.login == row["login"]:
                    del row["login"]
                if old.state == row["state"]:
                    del row["state"]
            rows.append(row)
        _update_many(session, _ACCOUNT, "account_id", rows)
    for chunk in _chunks(closes, _CHUNK):
        update_rows(
            session,
            _ACCOUNT,
            "account_id",
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
    audit.extend(
        actor.event(
            now,
            "account.closed",
            person_id=a.person_id,
            site=plan.site,
            reason=a.reason,
            changes={"account": {"from": a.login, "to": None}},
        )
        for a in closes
    )
    # An update files the account's keys again only if the values they come from changed (a changed
    # account keeps its old keys anyway).
    rekeyed = [a for a in updates if a.account_id not in before or _keys_changed(before[a.account_id], a)]
    _file_action_keys(session, creates + links + rekeyed)
    touched = {a.person_id for a in links + updates + closes if a.person_id}
    known = _known_people(plan, before, links, now)
    refreshed = refresh_people(session, touched, now, context.config, actor, known=known)
    result.suspended, result.reactivated = refreshed.suspended, refreshed.reactivated
    audit.extend(refreshed.audit)
    write_audit(session, audit)
    context.closures += len(closes)
    return result


@dataclass(slots=True)
class _Before:
    """An account as it was before the plan changed it, with its person's row, the person's
    affiliation at the account's site, and how many accounts the person has."""

    login: str
    state: str
    attributes: dict[str, str]
    first_seen_at: datetime
    accounts: int
    person: dict[str, Any]
    affiliation: dict[str, Any] | None


_OTHER = _ACCOUNT.alias("other_account")
# Only what recomputing the person needs (every column read costs its conversion, a delta reads a
# row per changed account): the person's derived values, status and provenance, the dates an audit
# event may quote; the affiliation's values and dates.
_BEFORE_PERSON = (*PERSON_FIELDS, "status", "provenance", "suspended_at", "deprovisioned_at")
_BEFORE_AFFILIATION = ("id", *AFFILIATION_FIELDS, "active", "primary", "started_at", "ended_at")
_BEFORE = (
    select(
        _ACCOUNT.c.id,
        _ACCOUNT.c.login,
        _ACCOUNT.c.state,
        _ACCOUNT.c.attributes,
        _ACCOUNT.c.first_seen_at,
        select(func.count())
        .select_from(_OTHER)
        .where(_OTHER.c.person_id == _ACCOUNT.c.person_id)
        .scalar_subquery()
        .label("accounts"),
        *(_PERSON.c[name].label(f"p_{name}") for name in _BEFORE_PERSON),
        *(_AFFILIATION.c[name].label(f"f_{name}") for name in _BEFORE_AFFILIATION),
    )
    .select_from(
        _ACCOUNT.join(_PERSON, _PERSON.c.id == _ACCOUNT.c.person_id).outerjoin(
            _AFFILIATION,
            and_(_AFFILIATION.c.person_id == _ACCOUNT.c.person_id, _AFFILIATION.c.site == _ACCOUNT.c.site),
        )
    )
    .where(_ACCOUNT.c.id.in_(bindparam("ids", expanding=True)))
)
_PERSON_AT = 6  # where the person's columns start in a _BEFORE row, then the affiliation's
_AFFILIATION_AT = _PERSON_AT + len(_BEFORE_PERSON)


def _read_before(session: Session, actions: list[AccountAction]) -> dict[int, _Before]:
    """The known accounts these actions change, as they are before the change (one query per batch,
    in the transaction that applies them): their old values tell whether their correlation keys
    changed, and a person with this one account is recomputed without reading it back."""
    before: dict[int, _Before] = {}
    for chunk in _chunks([a.account_id for a in actions if a.account_id is not None], _CHUNK):
        for row in select_rows(session, _BEFORE, {"ids": list(chunk)}):
            affiliation = None
            if row[_AFFILIATION_AT] is not None:
                affiliation = dict(zip(_BEFORE_AFFILIATION, row[_AFFILIATION_AT:], strict=True))
            before[row[0]] = _Before(
                row[1],
                row[2],
                row[3] or {},
                row[4],
                row[5],
                dict(zip(_BEFORE_PERSON, row[_PERSON_AT:_AFFILIATION_AT], strict=True)),
                affiliation,
            )
    return before


#: The values an account's correlation keys come from (`correlate.Probe.index_keys`).
_KEY_VALUES = ("family_name", "birth_name", "given_name", "rpps", "adeli", "email")


def _keys_changed(before: _Before, action: AccountAction) -> bool:
    assert action.account is not None
    new = action.account.values
    return any(before.attributes.get(name) != new.get(name) for name in _KEY_VALUES)


def _known_people(
    plan: SitePlan, before: Mapping[int, _Before], links: list[AccountAction], now: datetime
) -> dict[str, _PersonState]:
    """The people whose one account this plan updates or closes, as they are after it: their
    accounts, affiliations and row come from `before` and the plan (read in this transaction)."""
    linked = {a.person_id for a in links}
    known: dict[str, _PersonState] = {}
    for action in plan.actions:
        if action.kind is not ActionKind.UPDATE and action.kind is not ActionKind.CLOSE:
            continue
        if action.account_id is None or action.person_id is None or action.person_id in linked:
            continue
        old = before.get(action.account_id)
        if old is None or old.accounts != 1:
            continue
        if action.account is not None:  # updated: what the source says now
            state, attributes = _state(action.account), dict(action.account.values)
        else:  # closed: its last values stay, for a person with nothing else left
            state, attributes = AccountState.DELETED.value, old.attributes
        view = _AccountView(
            action.account_id, plan.site, action.anchor, state, attributes, old.first_seen_at, now
        )
        affiliations: dict[str, Mapping[Any, Any]] = {}
        if old.affiliation is not None:
            affiliations[plan.site] = old.affiliation
        known[action.person_id] = _PersonState([view], affiliations, old.person)
    return known


_SITE = sa_table(Site)
_SITE_ROW = select(_SITE.c.name, _SITE.c.finess).where(_SITE.c.code == bindparam("code"))
_SITE_RENAME = update(_SITE).where(_SITE.c.code == bindparam("site_code"))


def _ensure_site(session: Session, site: SiteInfo) -> None:
    """The site's row as configured (added, or its name and FINESS brought up to date)."""
    row = session.execute(_SITE_ROW, {"code": site.code}).first()
    if row is None:
        session.execute(insert(_SITE), {"code": site.code, "name": site.name, "finess": site.finess})
    elif (row.name, row.finess) != (site.name, site.finess):
        session.execute(_SITE_RENAME, {"site_code": site.code, "name": site.name, "finess": site.finess})


def _file_action_keys(session: Session, actions: list[AccountAction]) -> None:
    """File new and changed accounts under their correlation keys (a changed account keeps its old
    keys too: they can only add candidates)."""
    rows: list[tuple[int, int]] = []
    for action in actions:
        assert action.account_id is not None and action.probe is not None
        rows.extend((key_hash(k), action.account_id) for k in action.probe.index_keys())
    _file_keys(session.connection(), rows)


def write_audit(session: Session, events: list[dict[str, Any]]) -> None:
    for chunk in _chunks(events, _CHUNK):
        insert_rows(session, _AUDIT, chunk)


def _account_ids(session: Session, site: str, anchors: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunks(anchors, _CHUNK):
        rows = session.execute(_IDS_BY_ANCHOR, {"site": site, "anchors": list(chunk)})
        ids.update((anchor, account_id) for anchor, account_id in rows)
    return ids


def _new_account_row(action: AccountAction, site: str, now: datetime, linked_by: str) -> dict[str, Any]:
    """The row of an account seen for the first time: why it belongs to its person, and since when."""
    assert action.account is not None
    return _account_row(action, now) | {
        "site": site,
        "anchor": action.account.anchor,
        "person_id": action.person_id,
        "first_seen_at": now,
        "linked_by": linked_by,
    }


def _account_row(action: AccountAction, now: datetime) -> dict[str, Any]:
    """What the source says of an account (an update leaves its site, anchor and person alone)."""
    account = action.account
    assert account is not None
    return {
        "dn": account.dn,
        "login": account.login,
        "state": _state(account),
        "attributes": dict(account.values),
        "fingerprint": account.fingerprint,
        "facts": dict(account.facts),
        "last_changed_at": now,
    }


@dataclass(slots=True)
class _PersonState:
    """What recomputing a person starts from: its accounts, its affiliations by site, its row."""

    accounts: list[_AccountView]
    affiliations: dict[str, Mapping[Any, Any]]
    person: Mapping[Any, Any]


# What refresh_people reads of the people it recomputes, built once.
_ACCOUNTS_OF = select(
    _ACCOUNT.c.id,
    _ACCOUNT.c.person_id,
    _ACCOUNT.c.site,
    _ACCOUNT.c.anchor,
    _ACCOUNT.c.state,
    _ACCOUNT.c.attributes,
    _ACCOUNT.c.first_seen_at,
    _ACCOUNT.c.last_changed_at,
).where(_ACCOUNT.c.person_id.in_(bindparam("ids", expanding=True)))
_AFFILIATIONS_OF = select(_AFFILIATION).where(_AFFILIATION.c.person_id.in_(bindparam("ids", expanding=True)))
_PEOPLE = select(_PERSON).where(_PERSON.c.id.in_(bindparam("ids", expanding=True)))


def _read_people(session: Session, person_ids: Sequence[str]) -> dict[str, _PersonState]:
    accounts: dict[str, list[_AccountView]] = defaultdict(list)
    for row in session.execute(_ACCOUNTS_OF, {"ids": list(person_ids)}):
        accounts[row.person_id].append(
            _AccountView(
                row.id,
                row.site,
                row.anchor,
                row.state,
                row.attributes or {},
                row.first_seen_at,
                row.last_changed_at,
            )
        )
    affiliations: dict[str, dict[str, Mapping[Any, Any]]] = defaultdict(dict)
    for row in session.execute(_AFFILIATIONS_OF, {"ids": list(person_ids)}):
        affiliations[row.person_id][row.site] = row._mapping
    return {
        row.id: _PersonState(accounts[row.id], affiliations[row.id], row._mapping)
        for row in session.execute(_PEOPLE, {"ids": list(person_ids)})
    }


def refresh_people(
    session: Session,
    person_ids: Iterable[str],
    now: datetime,
    config: CorrelationConfig,
    actor: Actor,
    *,
    known: Mapping[str, _PersonState] | None = None,
) -> ApplyResult:
    """Recompute the affiliations, attributes and status of these people from their accounts.

    `known`: people whose accounts, affiliations and row the caller has just read in this transaction
    (as they are after its changes): they are not read again."""
    result = ApplyResult()
    known = known or {}
    ids = sorted(person_ids)
    for chunk in _chunks(ids, _CHUNK):
        states = {pid: known[pid] for pid in chunk if pid in known}
        unknown = [pid for pid in chunk if pid not in states]
        if unknown:
            states.update(_read_people(session, unknown))
        new_affiliations: list[dict[str, Any]] = []
        changed_affiliations: list[dict[str, Any]] = []
        changed_people: list[dict[str, Any]] = []
        for person_id in chunk:
            state = states[person_id]
            person = state.person
            by_site: dict[str, list[_AccountView]] = defaultdict(list)
            for account in state.accounts:
                by_site[account.site].append(account)
            wanted_by_site: dict[str, dict[str, Any]] = {}
            for site_code, site_accounts in by_site.items():
                wanted = derive_affiliation(site_accounts)
                existing = state.affiliations.get(site_code)
                if existing is None:
                    wanted.update(started_at=now, ended_at=None if wanted["active"] else now)
                elif existing["active"] and not wanted["active"]:
                    wanted.update(started_at=existing["started_at"], ended_at=now)
                elif wanted["active"] and not existing["active"]:
                    wanted.update(started_at=now, ended_at=None)
                else:
                    wanted.update(started_at=existing["started_at"], ended_at=existing["ended_at"])
                wanted_by_site[site_code] = wanted
            primary = choose_primary(wanted_by_site, config)
            for site_code, wanted in wanted_by_site.items():
                wanted["primary"] = site_code == primary
                existing = state.affiliations.get(site_code)
                if existing is None:
                    new_affiliations.append({"person_id": person_id, "site": site_code, **wanted})
                    result.audit.append(
                        actor.event(
                            now,
                            "affiliation.opened",
                            person_id=person_id,
                            site=site_code,
                            changes=_changes({}, wanted, AFFILIATION_FIELDS),
                        )
                    )
                    continue
                changes = {k: v for k, v in wanted.items() if existing[k] != v}
                if changes:
                    changed_affiliations.append({"affiliation_id": existing["id"], **changes})
                    action = "affiliation.updated"
                    if "active" in changes:
                        action = "affiliation.opened" if wanted["active"] else "affiliation.closed"
                    result.audit.append(
                        actor.event(
                            now,
                            action,
                            person_id=person_id,
                            site=site_code,
                            changes=_changes(existing, wanted, changes),
                        )
                    )
            if person["status"] == PersonStatus.MERGED:
                continue
            values, provenance = derive_person(state.accounts, config.survivorship, primary)
            changes = {
                name: value
                for name, value in values.items()
                if person[name] != value and not (name == "family_name" and not value)
            }
            _keep_since(provenance, person["provenance"] or {}, changes)
            if changes or provenance != (person["provenance"] or {}):
                changes["provenance"] = provenance
            any_active = primary is not None
            status = person["status"]
            if status != PersonStatus.SUSPENDED and status != PersonStatus.DEPROVISIONED:
                if not any_active:
                    changes.update(status=PersonStatus.SUSPENDED, suspended_at=now)
                    result.suspended += 1
            elif any_active:
                changes.update(status=PersonStatus.ACTIVE, suspended_at=None, deprovisioned_at=None)
                result.reactivated += 1
            if changes:
                changed_people.append({"person_id": person_id, **changes, "updated_at": now})
                visible = {k: v for k, v in changes.items() if k != "provenance"}
                if visible:
                    names: dict[str, str] = {
                        PersonStatus.SUSPENDED: "person.suspended",
                        PersonStatus.ACTIVE: "person.reactivated",
                    }
                    result.audit.append(
                        actor.event(
                            now,
                            names.get(visible.get("status", ""), "person.updated"),
                            person_id=person_id,
                            changes=_changes(person, visible, visible),
                            reason="recomputed from the person's accounts",
                        )
                    )
        if new_affiliations:
            session.execute(insert(_AFFILIATION), new_affiliations)
        _update_many(session, _AFFILIATION, "affiliation_id", changed_affiliations)
        _update_many(session, _PERSON, "person_id", changed_people)
    return result


def _keep_since(provenance: dict[str, Any], before: dict[str, Any], changed: dict[str, Any]) -> None:
    """A value still taken from the same account keeps the date it was first taken from it: a change
    to another of the account's attributes does not make it newer (nor rewrite the person)."""
    for name, source in provenance.items():
        old = before.get(name)
        if old and name not in changed and (old["site"], old["anchor"]) == (source["site"], source["anchor"]):
            provenance[name] = old


def _update_many(session: Session, table: Any, key: str, rows: list[dict[str, Any]]) -> None:
    """Update rows by id (`key` holds it), setting only the columns each row changes: rows that change
    the same columns go in one executemany (which needs the same keys in every parameter set), and a
    column left alone costs nothing, not even its index."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(sorted(row))].append(row)
    for group in groups.values():
        update_rows(session, table, key, group)


def _changes(old: Any, new: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """{name: {from, to}} for the audit trail, datetimes as ISO text."""

    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else value

    return {
        n: {"from": plain(old.get(n) if old else None), "to": plain(new.get(n))}
        for n in names
        if (old.get(n) if old else None) != new.get(n)
    }


def deprovision_expired(session: Session, grace_days: int, now: datetime, actor: Actor) -> int:
    """People suspended for longer than the grace period become deprovisioned (kept, never deleted)."""
    limit = now - timedelta(days=grace_days)
    expired = [
        row.id
        for row in session.execute(
            select(_PERSON.c.id).where(
                _PERSON.c.status == PersonStatus.SUSPENDED, _PERSON.c.suspended_at <= limit
            )
        )
    ]
    for chunk in _chunks(expired, _CHUNK):
        session.execute(
            update(_PERSON)
            .where(_PERSON.c.id.in_(chunk))
            .values(status=PersonStatus.DEPROVISIONED, deprovisioned_at=now, updated_at=now)
        )
    write_audit(
        session,
        [
            actor.event(
                now,
                "person.deprovisioned",
                person_id=pid,
                reason=f"suspended for more than {grace_days} days",
                changes={"status": {"from": "suspended", "to": "deprovisioned"}},
            )
            for pid in expired
        ],
    )
    return len(expired)
