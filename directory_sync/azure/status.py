"""What `ght azure status` reports: the last push and adoption, and what the export state holds.

Read from the database only: it answers even when the tenant cannot be reached.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ..store.models import ExportGroup, ExportMembership, ExportRun, ExportState, ExportStatus


def _run(session: Session, mode: str) -> dict[str, Any] | None:
    run = session.execute(
        select(ExportRun)
        .where(col(ExportRun.mode) == mode)
        .order_by(col(ExportRun.started_at).desc(), col(ExportRun.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    if run is None:
        return None
    data = run.model_dump()
    data["seconds"] = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    return data


def export_status(session: Session, *, rejected_limit: int = 50) -> dict[str, Any]:
    """The last push and adoption runs, users by export status, groups, memberships, rejections."""
    users = {
        "enabled": 0,
        "disabled": 0,
        ExportStatus.PENDING.value: 0,
        ExportStatus.REJECTED.value: 0,
        ExportStatus.DELETED.value: 0,
    }
    rows = session.execute(
        select(col(ExportState.status), col(ExportState.enabled), func.count()).group_by(
            col(ExportState.status), col(ExportState.enabled)
        )
    )
    for status, enabled, count in rows:
        key = ("enabled" if enabled else "disabled") if status == ExportStatus.EXPORTED else status
        users[key] = users.get(key, 0) + count
    rejected = [
        {"person": s.person_id, "upn": s.upn, "error": s.error}
        for s in session.execute(
            select(ExportState)
            .where(col(ExportState.status) == ExportStatus.REJECTED)
            .order_by(col(ExportState.upn))
            .limit(rejected_limit)
        ).scalars()
    ]
    return {
        "last_push": _run(session, "push"),
        "last_adopt": _run(session, "adopt"),
        "users": users,
        "groups": session.execute(
            select(func.count()).select_from(ExportGroup).where(col(ExportGroup.object_id).is_not(None))
        ).scalar_one(),
        "memberships": session.execute(select(func.count()).select_from(ExportMembership)).scalar_one(),
        "rejected": rejected,
    }
