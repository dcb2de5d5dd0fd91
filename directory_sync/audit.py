"""The audit trail: what changed for whom, when, by which run or administrator, and why."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from .store import AuditEvent


def query_events(
    session: Session,
    *,
    person_id: str | None = None,
    since: datetime | None = None,
    action: str | None = None,
    limit: int = 200,
) -> list[AuditEvent]:
    """Audit events, newest first."""
    query = select(AuditEvent).order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()).limit(limit)
    if person_id:
        query = query.where(col(AuditEvent.person_id) == person_id)
    if since:
        query = query.where(col(AuditEvent.at) >= since)
    if action:
        query = query.where(col(AuditEvent.action).startswith(action))
    return list(session.execute(query).scalars())


def event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at.isoformat(),
        "actor": event.actor,
        "run_id": event.run_id,
        "person": event.person_id,
        "site": event.site,
        "action": event.action,
        "changes": event.changes,
        "reason": event.reason,
    }
