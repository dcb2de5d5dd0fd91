"""The gateway's entries in the audit trail (`AuditEvent`): sign-ins, failures, locks, logouts, reuse.

Actions are `gateway.<kind>`; the actor is `gateway`. The details (client address, client id, reason)
go into `changes`, with the id of the HTTP request that caused the event (`request_id`, as in the log
lines and the response's X-Request-ID). Never a secret: no password, token, code or cookie is ever
written or logged. The database is the trail of record; the `ght.audit` logger echoes each event (an
operator can route that logger apart from the debug logs, or drop it).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from directory_sync.logs import REQUEST_ID
from directory_sync.store import AuditEvent, sa_table, utcnow

log = logging.getLogger("ght.audit")
ACTOR = "gateway"
_INSERT_EVENT = insert(sa_table(AuditEvent))


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
    request_id = REQUEST_ID.get()
    changes = {
        k: v
        for k, v in {"client_id": client_id, "address": address, "request_id": request_id, **detail}.items()
        if v is not None
    }
    session.execute(  # Core, built once: no unit of work
        _INSERT_EVENT,
        {
            "at": utcnow(),
            "actor": ACTOR,
            "run_id": None,
            "person_id": person_id,
            "site": site,
            "action": f"gateway.{kind}",
            "changes": changes,
            "reason": str(detail.get("reason", "")),
        },
    )
    log.info(
        "%s person=%s %s",
        kind,
        person_id or "-",
        " ".join(f"{k}={v}" for k, v in sorted(changes.items())),
        extra={"action": f"gateway.{kind}", "person_id": person_id, "site": site},
    )
