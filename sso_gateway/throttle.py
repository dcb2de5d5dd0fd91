"""Brute-force protection: per account and per client address, a progressive delay, then a lock.

The first `login_free_attempts` failures cost nothing; each one after that doubles the wait before the
next attempt is even checked (1 s, 2 s, 4 s... up to a minute); at `login_lockout_after` failures the
account is locked for `login_lockout_seconds`. An address (often a whole hospital behind one NAT)
is slowed only after half of `login_ip_lockout_after` failures, and locked at that number. A login that
matches nobody is throttled exactly like one that matches someone, so the answers reveal nothing.
Counters live in the database (an upsert), so every gateway process sees the same ones.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from directory_sync.config import GatewaySettings
from directory_sync.store import sa_table, utcnow

from .models import LoginThrottle

MAX_DELAY = 60
_THROTTLES = sa_table(LoginThrottle)
#: Built once (composing it cost more than running it on SQLite): the keys' counters, in one query.
_WAITS = select(_THROTTLES.c.key, _THROTTLES.c.locked_until, _THROTTLES.c.next_attempt_at).where(
    _THROTTLES.c.key.in_(bindparam("keys", expanding=True))
)


def _aware(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=utcnow().tzinfo)


class Throttle:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings

    def wait_seconds(self, session: Session, keys: list[str]) -> int:
        """How long the caller must wait before an attempt on these keys is checked (0: go ahead)."""
        now = utcnow()
        wait = 0.0
        found = session.info.setdefault("throttle_rows", {})
        rows = session.execute(_WAITS, {"keys": keys})
        by_key = {row.key: row for row in rows}  # one query for the account and the address
        for key in keys:
            row = by_key.get(key)
            found[key] = row is not None
            if row is None:
                continue
            for until in (_aware(row.locked_until), _aware(row.next_attempt_at)):
                if until is not None and until > now:
                    wait = max(wait, (until - now).total_seconds())
        return math.ceil(wait)

    def failure(self, session: Session, key: str, *, lock_after: int, free: int | None = None) -> bool:
        """Count a failure; True when this one locks the key. The caller commits."""
        now = utcnow()
        row = session.get(LoginThrottle, key)
        last = _aware(row.last_failure_at) if row else None
        stale = last is not None and now - last > timedelta(seconds=self.settings.login_lockout_seconds)
        table = sa_table(LoginThrottle)
        values = {"key": key, "failures": 1, "last_failure_at": now}
        insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert(table)
        session.execute(
            insert.values(**values).on_conflict_do_update(
                index_elements=["key"],
                set_={
                    "failures": 1 if stale else table.c.failures + 1,
                    "last_failure_at": now,
                },
            )
        )
        session.flush()
        row = session.get(LoginThrottle, key, populate_existing=True)
        assert row is not None
        free = self.settings.login_free_attempts if free is None else free
        if row.failures >= lock_after:
            row.locked_until = now + timedelta(seconds=self.settings.login_lockout_seconds)
            row.next_attempt_at = None
            session.add(row)
            return row.failures == lock_after
        if row.failures > free:
            delay = min(MAX_DELAY, 2 ** (row.failures - free - 1))
            row.next_attempt_at = now + timedelta(seconds=delay)
            session.add(row)
        return False

    def success(self, session: Session, key: str) -> None:
        """Forget the key's failures: nothing to write when `wait_seconds` found none in this session."""
        if session.info.get("throttle_rows", {}).get(key) is False:
            return
        table = sa_table(LoginThrottle)
        session.execute(delete(table).where(table.c.key == key))
