"""Pass-through authentication: the password is checked where it lives, by an LDAP bind.

The gateway binds as the person's own account (the DN the sync stored) on that site's directory, with
the site's URLs and TLS settings from its mapping (`connection:`), and tries the next URL, then the next
site, only when a directory cannot be reached. A refused bind is an answer, not an outage: it is never
retried elsewhere (that would multiply lockouts in every hospital's directory).

If the entry moved since the last sync (the stored DN is refused), the current DN is found again by the
account's anchor with the site's service account; the anchor value is escaped for the filter
(RFC 4515) like any value that goes into a filter. An Active Directory anchor is an objectGUID, which
AD compares as 16 bytes: the filter carries the GUID's bytes, each escaped.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import time

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


class PassThrough:
    """Checks passwords against the sites' LDAP directories."""

    def __init__(self, connections: dict[str, LdapConnection], timeout: float) -> None:
        self.connections = connections
        self.timeout = timeout

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
        conn = self._open(connection, url, dn, password)
        try:
            conn.open()
            if connection.tls.start_tls and not conn.start_tls():
                return BindOutcome.UNAVAILABLE
            if conn.bind():
                return BindOutcome.ACCEPTED
            code = conn.result.get("result")
            # 49 invalidCredentials, 50 insufficientAccessRights, 53 unwillingToPerform, 32 noSuchObject
            if code in (49, 50, 53, 32, 34):
                return BindOutcome.REJECTED
            log.warning("%s: bind answered %s", url, conn.result.get("description"))
            return BindOutcome.UNAVAILABLE
        except Exception as exc:  # every socket or TLS failure means "this URL is not usable now"
            log.warning("%s: directory unavailable (%s)", url, type(exc).__name__)
            return BindOutcome.UNAVAILABLE
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

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
