"""The gateway's entries in the audit trail (`AuditEvent`): sign-ins, failures, locks, logouts, reuse.

Actions are `gateway.<kind>`; the actor is `gateway`. The details (client address, client id, reason)
go into `changes`. Never a secret: no password, token, code or cookie is ever written or logged.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from directory_sync.store import AuditEvent

log = logging.getLogger("sso_gateway.audit")
ACTOR = "gateway"


def record_event(
    session: Session,
    kind: str,
    *,
    person_id: str | None = None,
    client_id: str | None = None,
    address: str | None = None,
    site: str | None = None,
    **detail: Any,
) -> None:
    """Add an event to the caller's transaction and log it (the caller commits)."""
    changes = {
        k: v for k, v in {"client_id": client_id, "address": address, **detail}.items() if v is not None
    }
    session.add(
        AuditEvent(
            actor=ACTOR,
            person_id=person_id,
            site=site,
            action=f"gateway.{kind}",
            changes=changes,
            reason=str(detail.get("reason", "")),
        )
    )
    log.info(
        "%s person=%s %s",
        kind,
        person_id or "-",
        " ".join(f"{k}={v}" for k, v in sorted(changes.items())),
    )
