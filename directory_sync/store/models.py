"""The territorial directory's tables (SQLModel).

Person: one human. Account: the link between a person and one entry of one site's source (midPoint's
shadow). Affiliation: a person at a site, with what they do there. SyncRun: what one sync of one site did.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Table,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_person_id() -> str:
    """A stable, opaque territorial id (it becomes the OIDC `sub` and the Entra employeeId)."""
    return uuid.uuid4().hex


def sa_table(model: type[SQLModel]) -> Table:
    """The Core table of a model, for bulk statements that skip the ORM's unit of work."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def _when(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


class PersonStatus(enum.StrEnum):
    ACTIVE = "active"  # at least one active affiliation
    SUSPENDED = "suspended"  # no active affiliation left; kept, not deleted
    DEPROVISIONED = "deprovisioned"  # suspended for longer than the grace period
    MERGED = "merged"  # a reviewer linked its accounts to another person (see merged_into)
    #: Not of the group: a professional admitted by the gateway from Pro Sante Connect (`admit_external`),
    #: with no account and no affiliation; syncs never touch them (sso_gateway/upstream.py).
    EXTERNAL = "external"


class AccountState(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # present in the source, but disabled or expired there
    DELETED = "deleted"  # gone from a source that was read completely


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # another run of the same site held its lock (see directory_sync.locking)


class Site(SQLModel, table=True):
    code: str = Field(primary_key=True, max_length=64)
    name: str
    finess: str = Field(max_length=9)


class Person(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("login", name="uq_person_login"),
        # The grace period's deprovisioning reads who has been suspended since before a date.
        Index("ix_person_status_suspended_at", "status", "suspended_at"),
    )

    id: str = Field(default_factory=new_person_id, primary_key=True, max_length=32)
    #: The territorial login (`prenom.nom`, ASCII), unique and never reused: people are never deleted.
    login: str | None = Field(default=None, max_length=64)
    family_name: str
    given_name: str | None = None
    birth_name: str | None = None
    birth_date: str | None = Field(default=None, max_length=10)
    email: str | None = None
    rpps: str | None = Field(default=None, index=True, max_length=11)
    adeli: str | None = Field(default=None, max_length=9)
    status: str = Field(default=PersonStatus.ACTIVE, max_length=16)  # indexed with suspended_at
    #: For each attribute: the site, account and time its value came from (survivorship's provenance).
    provenance: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: A person merged into another by a reviewer keeps its row (and login) and points at the survivor.
    merged_into: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    suspended_at: datetime | None = _when()
    deprovisioned_at: datetime | None = _when()


class Account(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("site", "anchor", name="uq_account_site_anchor"),
        Index("ix_account_site_state", "site", "state"),  # the closure threshold's count
    )

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(foreign_key="site.code", max_length=64)
    anchor: str = Field(max_length=255)
    dn: str
    login: str = Field(index=True, max_length=255)
    state: str = Field(default=AccountState.ENABLED, max_length=16)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    attributes: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fingerprint: str = Field(max_length=64)
    #: What the source says of the account beyond its attributes (AD: disabled, locked_out, expires...).
    facts: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default=text("'{}'"))
    )
    #: Why the account belongs to its person: the correlation rule, "created", or "admin:<who>".
    linked_by: str = Field(default="created", max_length=80)
    first_seen_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    last_changed_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    deleted_at: datetime | None = _when()


class Affiliation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("person_id", "site", name="uq_affiliation_person_site"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    site: str = Field(foreign_key="site.code", max_length=64)
    profession: str | None = Field(default=None, max_length=8)
    department: str | None = None
    title: str | None = None
    employee_id: str | None = None
    #: Territorial roles at the site (from group membership, mappings' `roles:`), sorted, comma-separated.
    roles: str | None = None
    active: bool = True
    #: The person's home site among the active affiliations (rule in mappings/correlation.yaml).
    primary: bool = False
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    ended_at: datetime | None = _when()


class SyncRun(SQLModel, table=True):
    __table_args__ = (Index("ix_syncrun_site_started", "site", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=64)
    mode: str = Field(default="full", max_length=16)
    #: Why the run was full or delta ("no watermark yet", "the cookie was refused"...).
    mode_reason: str | None = None
    status: str = Field(default=RunStatus.RUNNING, max_length=16)
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    finished_at: datetime | None = _when()
    read: int = 0
    created: int = 0
    linked: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    suspended: int = 0
    reviews: int = 0
    warnings: int = 0
    errors: int = 0
    error: str | None = None


# --------------------------------------------------------------------------------------------------
# Export to Entra ID (directory_sync.azure): what was last sent to the tenant, Entra Connect's
# "connector space". A plan is the difference between the directory and these tables; no row holds a
# secret (passwords are sent once and never kept).


class ExportStatus(enum.StrEnum):
    PENDING = "pending"  # a create was sent, its outcome is unknown: look up by employeeId first
    EXPORTED = "exported"  # the cloud user exists and holds `sent`
    REJECTED = "rejected"  # Graph refused the create (400): `error` says why; retried next push
    DELETED = "deleted"  # soft-deleted in Entra (restorable for 30 days)


class ExportState(SQLModel, table=True):
    """One person's cloud user: its Entra object id and the attribute values last sent to it."""

    __tablename__ = "azure_export_state"

    person_id: str = Field(primary_key=True, max_length=32)
    object_id: str | None = Field(default=None, index=True, max_length=64)
    upn: str | None = Field(default=None, max_length=255)
    employee_id: str = Field(index=True, max_length=16)
    status: str = Field(default=ExportStatus.PENDING, max_length=16)
    origin: str = Field(default="created", max_length=16)  # created, found (after a lost answer), adopted
    sent: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    sent_hash: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    error: str | None = None
    exported_at: datetime | None = _when()
    disabled_at: datetime | None = _when()
    deleted_at: datetime | None = _when()


class ExportGroup(SQLModel, table=True):
    """A security group the export manages (per site, profession or role), keyed by a stable key."""

    __tablename__ = "azure_export_group"

    key: str = Field(primary_key=True, max_length=128)
    object_id: str | None = Field(default=None, max_length=64)
    display_name: str
    mail_nickname: str = Field(max_length=64)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class ExportMembership(SQLModel, table=True):
    """A member of a managed group in Entra, by object id, as last exported or read from the tenant
    (members added by hand are known too, so that they can be removed)."""

    __tablename__ = "azure_export_membership"

    group_key: str = Field(primary_key=True, max_length=128)
    member_id: str = Field(primary_key=True, max_length=64, index=True)


class ExportRun(SQLModel, table=True):
    """What one `ght azure push` or `ght azure adopt` did."""

    __tablename__ = "azure_export_run"

    id: int | None = Field(default=None, primary_key=True)
    mode: str = Field(default="push", max_length=16)
    status: str = Field(default=RunStatus.RUNNING, max_length=16)
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    finished_at: datetime | None = _when()
    created: int = 0
    updated: int = 0
    disabled: int = 0
    enabled: int = 0
    restored: int = 0
    deleted: int = 0
    adopted: int = 0
    rejected: int = 0
    groups_created: int = 0
    members_added: int = 0
    members_removed: int = 0
    requests: int = 0
    writes: int = 0
    throttled: int = 0
    retries: int = 0
    write_rate: float | None = None  # writes per second the tenant allowed, as learned: the next start
    error: str | None = None


# --------------------------------------------------------------------------------------------------
# Correlation: review cases, remembered decisions, and the audit trail.


class ReviewStatus(enum.StrEnum):
    OPEN = "open"
    LINKED = "linked"  # a reviewer linked the account to a candidate
    NEW = "new"  # a reviewer kept it as a person of its own


class ReviewCase(SQLModel, table=True):
    """An account that might belong to an existing person, waiting for a human. Meanwhile the account
    has a provisional person of its own, so nobody is locked out and nobody is merged by guess."""

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=64, index=True)
    anchor: str = Field(max_length=255)
    account_id: int = Field(foreign_key="account.id", index=True)
    person_id: str = Field(max_length=32)  # the provisional person
    status: str = Field(default=ReviewStatus.OPEN, max_length=16, index=True)
    reason: str
    candidates: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    opened_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    run_id: int | None = None
    decided_at: datetime | None = _when()
    decided_by: str | None = None
    decision_note: str | None = None


class CorrelationKey(SQLModel, table=True):
    """The correlation keys each account is filed under (`directory_sync.correlate.Probe.index_keys`:
    RPPS, ADELI, email, normalised names), hashed to 64 bits. A run looks a new account's candidates up
    here instead of reading every person; keys are only ever added (a stale or colliding key adds a
    candidate that the rules then score on its real values, never a match)."""

    __tablename__ = "correlation_key"
    __table_args__ = {"sqlite_with_rowid": False}

    key_hash: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    account_id: int = Field(
        sa_column=Column(Integer, ForeignKey("account.id"), primary_key=True, autoincrement=False)
    )


class LinkDecision(SQLModel, table=True):
    """A human's decision about one source account, remembered so the same case is never reopened:
    `link` to a person, keep as `new`, or `not` this person (after a split)."""

    __table_args__ = (UniqueConstraint("site", "anchor", "kind", "person_id", name="uq_linkdecision"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=64)
    anchor: str = Field(max_length=255)
    kind: str = Field(max_length=8)  # link | new | not
    person_id: str | None = Field(default=None, max_length=32)
    decided_by: str
    decided_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class AuditEvent(SQLModel, table=True):
    """Every change to a person or a link: when, who (a run or an admin), what, from what to what, why."""

    __table_args__ = (Index("ix_auditevent_person_at", "person_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )
    actor: str = Field(max_length=120)  # "sync run 12" or "admin:jdupont"
    run_id: int | None = None
    person_id: str | None = Field(default=None, max_length=32)
    site: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=40)
    changes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str = ""


# --------------------------------------------------------------------------------------------------
# Delta sync (directory_sync.delta): where the last complete read of each site left its source.


class SiteWatermark(SQLModel, table=True):
    """A site's watermark: written in the same transaction as the changes it covers, so that a delta
    that did not finish is read again. `scope` is the digest of the mapping it was taken under."""

    __tablename__ = "sync_watermark"

    site: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # ad-usn | syncrepl
    source: str  # the DC (and its invocationId) or the server and base DN the value is valid on
    value: str
    state: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default=text("'{}'"))
    )
    scope: str = Field(max_length=64)
    run_id: int | None = None
    stored_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
