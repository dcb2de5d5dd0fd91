"""Delta (incremental) sync: watermarks, and when a delta read can be trusted.

A *watermark* is where the last complete read of a site left its source: an Active Directory DC's
highestCommittedUSN (with the DC's invocationId, because USNs are per domain controller), or an OpenLDAP
syncrepl cookie (RFC 4533). Only the connector that produced a watermark understands its value; this
module stores it with the *scope* of the mapping it was taken under, and decides whether the next run
may read only the changes.

A watermark is written in the same transaction as the changes it covers: both are stored or neither is.
An interrupted delta is therefore read again next time, and applying a change twice changes nothing.
A delta is never proof that an account is gone: it closes only the deletions the source reports.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from .config import SiteMapping
from .errors import SyncError
from .store import SiteWatermark, sa_table


class SyncMode(enum.StrEnum):
    FULL = "full"  # read everything; an account not seen is gone
    DELTA = "delta"  # read what changed since the watermark; only reported deletions close


@dataclass(frozen=True)
class Watermark:
    """A position in one source's history, to read the changes made after it.

    `kind` says which connector understands it (``ad-usn``, ``syncrepl``); `source` names what the value
    is valid against (the DC and its invocationId, or the server and base DN), in words an operator can
    read; `value` is opaque outside the connector; `state` is what else the connector needs to continue
    (AD: when the watermark was taken, the role groups' members).
    """

    kind: str
    source: str
    value: str
    state: Mapping[str, Any] = field(default_factory=dict)


class WatermarkRejected(SyncError):
    """The source cannot continue from the stored watermark (another DC, an expired or refused cookie,
    a change log too short): the site must be read completely. Raised before any record is yielded."""


@dataclass(frozen=True)
class ModeChoice:
    """How a site is read this time, and why (shown to the operator and kept on the run)."""

    mode: SyncMode
    reason: str
    since: Watermark | None = None


# The connection keys that say *how* to reach the source, not *what* is read: changing them keeps the
# watermark valid (a connector checks by itself that it reached the same source).
_TRANSPORT_KEYS = frozenset({"url", "bind_dn", "bind_password", "timeout", "page_size", "tls"})


def mapping_scope(site: SiteMapping) -> str:
    """A digest of what decides which entries are read and what they become.

    Base DN, filter, anchor, attribute rules, value maps and roles: when any of them changes, entries that
    did not change at the source may map differently, so the next run must be full (as Entra Connect asks
    for a full synchronisation after a rule change).
    """
    connection = {
        k: v for k, v in site.connection.model_dump(mode="json").items() if k not in _TRANSPORT_KEYS
    }
    document = {
        "connection": connection,
        "attributes": {k: v.model_dump(mode="json", by_alias=True) for k, v in site.attributes.items()},
        "value_maps": site.value_maps,
        "roles": site.roles.model_dump(mode="json", by_alias=True) if site.roles else None,
    }
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredWatermark:
    """A site's watermark as stored (`sync_watermark`), with the scope and time it was taken at."""

    kind: str
    source: str
    value: str
    state: Mapping[str, Any]
    scope: str
    stored_at: datetime


# The watermark's statements, built once (a statement built per call costs SQLAlchemy more than
# SQLite's work: each site's run reads and writes its watermark once).
_WATERMARK = sa_table(SiteWatermark)
_LOAD = select(
    _WATERMARK.c.kind,
    _WATERMARK.c.source,
    _WATERMARK.c.value,
    _WATERMARK.c.state,
    _WATERMARK.c.scope,
    _WATERMARK.c.stored_at,
).where(_WATERMARK.c.site == bindparam("site"))
_FORGET = delete(_WATERMARK).where(_WATERMARK.c.site == bindparam("site"))
_REPLACE = update(_WATERMARK).where(_WATERMARK.c.site == bindparam("watermark_site"))
_ADD = insert(_WATERMARK)


def load_watermark(session: Session, site: str) -> StoredWatermark | None:
    """The stored watermark of `site`, or None."""
    row = session.execute(_LOAD, {"site": site}).first()
    if row is None:
        return None
    return StoredWatermark(row.kind, row.source, row.value, row.state or {}, row.scope, row.stored_at)


def choose_mode(
    stored: StoredWatermark | None, scope: str, *, supports_delta: bool, full: bool, kind: str
) -> ModeChoice:
    """Delta when a valid watermark exists and a full read was not asked for; full otherwise, with why."""
    if full:
        return ModeChoice(SyncMode.FULL, "full read requested (--full)")
    if not supports_delta:
        return ModeChoice(SyncMode.FULL, f"a source of kind {kind} keeps no change log: full read")
    if stored is None:
        return ModeChoice(SyncMode.FULL, "no watermark yet: full read")
    if stored.scope != scope:
        return ModeChoice(
            SyncMode.FULL, "the site's mapping changed since the watermark was taken: full read"
        )
    since = Watermark(kind=stored.kind, source=stored.source, value=stored.value, state=stored.state)
    return ModeChoice(
        SyncMode.DELTA, f"changes since the watermark of {stored.stored_at:%Y-%m-%d %H:%M:%S} UTC", since
    )


def save_watermark(
    session: Session,
    site: str,
    watermark: Watermark | None,
    *,
    scope: str,
    run_id: int | None,
    now: datetime,
) -> None:
    """Store (or, with None, forget) the watermark of `site`, inside the caller's transaction.

    The caller commits it together with the changes the read brought, never before.
    """
    if watermark is None:
        session.execute(_FORGET, {"site": site})
        return
    values = {
        "kind": watermark.kind,
        "source": watermark.source,
        "value": watermark.value,
        "state": dict(watermark.state),
        "scope": scope,
        "run_id": run_id,
        "stored_at": now,
    }
    if session.execute(_REPLACE, {"watermark_site": site, **values}).rowcount == 0:  # type: ignore[attr-defined]
        session.execute(_ADD, {"site": site, **values})
