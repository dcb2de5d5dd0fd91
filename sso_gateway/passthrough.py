"""Pass-through authentication: the password is checked where it lives, by an LDAP bind.

The gateway binds as the person's own account (the DN the sync stored) on that site's directory, with
the site's URLs and TLS settings from its mapping (`connection:`), and tries the next URL, then the next
site, only when a directory cannot be reached. A refused bind is an answer, not an outage: it is never
retried elsewhere (that would multiply lockouts in every hospital's directory).

If the entry moved since the last sync (the stored DN is refused), the current DN is found again by the
account's anchor with the site's service account; the anchor value is escaped for the filter
(RFC 4515) like any value that goes into a filter. An Active Directory anchor is an objectGUID, which
AD compares as 16 bytes: the filter carries the GUID's bytes, each escaped.

Binds reuse connections: a few open connections per directory URL and process (`BindPool`), each
rebound for the next person, as Keycloak's LDAP federation and LemonLDAP::NG do; a connection, a TCP
handshake (and a TLS one) and an unbind less per sign-in. A pooled connection only ever carries binds
(never a search or anything done as whoever bound last). It goes back to the pool only after a bind the
directory accepted; after a refused bind, an error or a timeout it is closed, so that a connection never
stays bound as someone after a failure. A pooled connection the directory closed meanwhile (idle
timeout, restart) is retried once on a new connection before the URL counts as unavailable.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import threading
import time
from collections import deque

import ldap3
from ldap3.utils.conv import escape_filter_chars

from directory_sync.config import ActiveDirectoryConnection, LdapConnection
from directory_sync.connectors.active_directory import guid_filter_value

from .metrics import LDAP_BIND_DURATION

log = logging.getLogger("sso_gateway.passthrough")


class BindOutcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # the directory answered: wrong password, disabled, unknown DN
    UNAVAILABLE = "unavailable"  # no directory URL answered in time


def _tls(connection: LdapConnection) -> ldap3.Tls:
    options = connection.tls
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED if options.verify else ssl.CERT_NONE,
        ca_certs_file=str(options.ca_file) if options.ca_file else None,
        version=ssl.PROTOCOL_TLS_CLIENT,
    )


def acceptable_password(password: str) -> bool:
    """An empty password would make a simple bind *unauthenticated* and succeed (RFC 4513 §5.1.2)."""
    return bool(password) and "\x00" not in password and len(password) <= 1024


#: Open connections kept per directory URL and process, and how long one may stay idle in the pool
#: (below the usual directory idle timeouts: OpenLDAP's is off by default, AD's MaxConnIdleTime 900 s).
POOL_SIZE = 8
POOL_IDLE_SECONDS = 60.0
#: What a bind the directory refused answers: 49 invalidCredentials, 50 insufficientAccessRights,
#: 53 unwillingToPerform, 32 noSuchObject, 34 invalidDNSyntax.
REFUSED = (49, 50, 53, 32, 34)


class BindPool:
    """Idle connections of one directory URL, for binds only; thread-safe (each is lent to one thread)."""

    def __init__(self, size: int = POOL_SIZE, idle: float = POOL_IDLE_SECONDS) -> None:
        self.size = size
        self.idle = idle
        self._idle: deque[tuple[float, ldap3.Connection]] = deque()
        self._lock = threading.Lock()

    def take(self) -> ldap3.Connection | None:
        """The most recently returned connection still fresh enough, or None (the caller opens one)."""
        stale: list[ldap3.Connection] = []
        found = None
        now = time.monotonic()
        with self._lock:
            while self._idle:
                since, conn = self._idle.pop()
                if now - since <= self.idle:
                    found = conn
                    break
                stale.append(conn)
            stale += [conn for _, conn in self._idle] if found is None else []
            if found is None:
                self._idle.clear()
        for conn in stale:
            close(conn)
        return found

    def give_back(self, conn: ldap3.Connection) -> None:
        """Keep `conn` (whose last bind the directory accepted) for the next bind, or close it if full."""
        conn.password = None  # the pool keeps no password
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((time.monotonic(), conn))
                return
        close(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for _, conn in idle:
            close(conn)

    def __len__(self) -> int:
        return len(self._idle)


def close(conn: ldap3.Connection) -> None:
    """Unbind and close, ignoring a connection already gone."""
    with contextlib.suppress(Exception):
        conn.unbind()


class PassThrough:
    """Checks passwords against the sites' LDAP directories."""

    def __init__(self, connections: dict[str, LdapConnection], timeout: float) -> None:
        self.connections = connections
        self.timeout = timeout
        self.pools: dict[str, BindPool] = {}  # by directory URL (one site's settings each: see _key)
        self._lock = threading.Lock()

    @staticmethod
    def _key(connection: LdapConnection, url: str) -> str:
        """Two sites served by one directory share a pool only if they reach it with the same TLS."""
        return f"{url} {connection.tls!r}"

    def pool(self, connection: LdapConnection, url: str) -> BindPool:
        with self._lock:
            return self.pools.setdefault(self._key(connection, url), BindPool())

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in list(self.pools.values()):
            pool.clear()

    def handles(self, site: str) -> bool:
        return site in self.connections

    def check(self, site: str, dn: str, anchor: str, password: str) -> BindOutcome:
        """Bind as `dn` on `site`'s directory with `password`."""
        connection = self.connections[site]
        if not acceptable_password(password):
            return BindOutcome.REJECTED
        started = time.perf_counter()
        outcome = self._bind_any(connection, dn, password)
        if outcome is BindOutcome.REJECTED and connection.bind_dn and connection.anchor.lower() != "dn":
            current = self._current_dn(connection, anchor)
            if current is not None and current.lower() != dn.lower():
                log.info("site %s: entry moved, binding as its current DN", site)
                outcome = self._bind_any(connection, current, password)
        LDAP_BIND_DURATION.labels(site, outcome.value).observe(time.perf_counter() - started)
        return outcome

    def _bind_any(self, connection: LdapConnection, dn: str, password: str) -> BindOutcome:
        for url in connection.urls:
            outcome = self._bind(connection, url, dn, password)
            if outcome is not BindOutcome.UNAVAILABLE:
                return outcome
        return BindOutcome.UNAVAILABLE

    def _open(
        self, connection: LdapConnection, url: str, user: str | None, password: str | None
    ) -> ldap3.Connection:
        # A new Server each time: ldap3's remembers an address that failed as unavailable for minutes.
        server = ldap3.Server(url, connect_timeout=self.timeout, tls=_tls(connection), get_info=ldap3.NONE)
        return ldap3.Connection(
            server,
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            receive_timeout=max(1, round(self.timeout)),
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
        )

    def _bind(self, connection: LdapConnection, url: str, dn: str, password: str) -> BindOutcome:
        """Bind as `dn` on `url`: on a pooled connection if one is idle, else on a new one."""
        pool = self.pool(connection, url)
        pooled = pool.take()
        if pooled is not None:
            outcome = self._bind_on(connection, url, pooled, dn, password, pool, fresh=False)
            if outcome is not None:
                return outcome
            # The directory had closed it (idle timeout, restart): once more on a new connection.
        outcome = self._bind_on(connection, url, None, dn, password, pool, fresh=True)
        return outcome if outcome is not None else BindOutcome.UNAVAILABLE

    def _bind_on(
        self,
        connection: LdapConnection,
        url: str,
        conn: ldap3.Connection | None,
        dn: str,
        password: str,
        pool: BindPool,
        *,
        fresh: bool,
    ) -> BindOutcome | None:
        """One bind; the connection goes back to `pool` only if the directory accepted it.

        None: a pooled connection that no longer works (the caller retries on a new one)."""
        keep = False
        try:
            if conn is None:
                conn = self._open(connection, url, dn, password)
                conn.open()
                if connection.tls.start_tls and not conn.start_tls():
                    return BindOutcome.UNAVAILABLE
            else:
                conn.user, conn.password, conn.authentication = dn, password, ldap3.SIMPLE
            if conn.bind():
                keep = True
                return BindOutcome.ACCEPTED
            code = conn.result.get("result") if conn.result else None
            if code in REFUSED:
                return BindOutcome.REJECTED
            if not fresh and (conn.closed or code is None):
                return None
            log.warning("%s: bind answered %s", url, (conn.result or {}).get("description"))
            return BindOutcome.UNAVAILABLE
        except Exception as exc:  # every socket or TLS failure means "this URL is not usable now"
            if not fresh and "timed out" not in str(exc):  # closed meanwhile, not hung: retry anew
                return None
            log.warning("%s: directory unavailable (%s)", url, type(exc).__name__)
            return BindOutcome.UNAVAILABLE
        finally:
            if conn is not None:
                if keep:
                    pool.give_back(conn)
                else:  # refused, failed or broken: never reused, never left bound as anyone
                    close(conn)

    def _current_dn(self, connection: LdapConnection, anchor: str) -> str | None:
        """The DN of the entry whose anchor is `anchor`, read with the site's service account."""
        if connection.bind_password is None:
            return None
        try:
            service_password = connection.bind_password.read()
        except ValueError:
            return None
        if isinstance(connection, ActiveDirectoryConnection):
            try:
                value = guid_filter_value(anchor)
            except ValueError:  # not a GUID: nothing to look for
                return None
        else:
            value = escape_filter_chars(anchor)
        search_filter = f"({connection.anchor}={value})"
        for url in connection.urls:
            conn = self._open(connection, url, connection.bind_dn, service_password)
            try:
                conn.open()
                if connection.tls.start_tls and not conn.start_tls():
                    continue
                if not conn.bind():
                    return None
                conn.search(connection.base_dn, search_filter, attributes=["1.1"], size_limit=2)
                entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                return str(entries[0]["dn"]) if len(entries) == 1 else None
            except Exception:
                continue
            finally:
                with contextlib.suppress(Exception):
                    conn.unbind()
        return None
