"""The territorial directory's tables (SQLModel).

Person: one human. Account: the link between a person and one entry of one site's source (midPoint's
shadow). Affiliation: a person at a site, with what they do there. SyncRun: what one sync of one site did.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Table, UniqueConstraint
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
    DEPROVISIONED = "deprovisioned"


class AccountState(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # present in the source, but disabled or expired there
    DELETED = "deleted"  # gone from a source that was read completely


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Site(SQLModel, table=True):
    code: str = Field(primary_key=True, max_length=64)
    name: str
    finess: str = Field(max_length=9)


class Person(SQLModel, table=True):
    id: str = Field(default_factory=new_person_id, primary_key=True, max_length=32)
    family_name: str
    given_name: str | None = None
    email: str | None = None
    rpps: str | None = Field(default=None, index=True, max_length=11)
    status: str = Field(default=PersonStatus.ACTIVE, index=True, max_length=16)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    suspended_at: datetime | None = _when()


class Account(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("site", "anchor", name="uq_account_site_anchor"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(foreign_key="site.code", max_length=64)
    anchor: str = Field(max_length=255)
    dn: str
    login: str = Field(index=True, max_length=255)
    state: str = Field(default=AccountState.ENABLED, max_length=16)
    person_id: str = Field(foreign_key="person.id", index=True, max_length=32)
    attributes: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fingerprint: str = Field(max_length=64)
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
    active: bool = True
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    ended_at: datetime | None = _when()


class SyncRun(SQLModel, table=True):
    __table_args__ = (Index("ix_syncrun_site_started", "site", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=64)
    mode: str = Field(default="full", max_length=16)
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
    warnings: int = 0
    errors: int = 0
    error: str | None = None
