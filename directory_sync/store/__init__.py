"""The territorial directory (SQLModel on SQLite or PostgreSQL)."""

from .database import Store, open_store
from .models import (
    Account,
    AccountState,
    Affiliation,
    AuditEvent,
    CorrelationKey,
    LinkDecision,
    Person,
    PersonStatus,
    ReviewCase,
    ReviewStatus,
    RunStatus,
    Site,
    SiteWatermark,
    SyncRun,
    new_person_id,
    sa_table,
    utcnow,
)

__all__ = [
    "Account",
    "AccountState",
    "Affiliation",
    "AuditEvent",
    "CorrelationKey",
    "LinkDecision",
    "Person",
    "PersonStatus",
    "ReviewCase",
    "ReviewStatus",
    "RunStatus",
    "Site",
    "SiteWatermark",
    "Store",
    "SyncRun",
    "new_person_id",
    "open_store",
    "sa_table",
    "utcnow",
]
