"""LDAP connector (OpenLDAP and any LDAPv3 directory): simple bind, LDAPS or StartTLS, paged search.

Every way a read can fail is turned into a `SourceUnavailable` (could not connect, authenticate, or
get an answer in time) or a `SourceReadIncomplete` (the search was cut short), both naming the site and
the URL. Neither lets a partial read through: `read_all` raises before its caller can treat the entries
it has seen as the whole directory.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.core.results import RESULT_SIZE_LIMIT_EXCEEDED, RESULT_SUCCESS, RESULT_TIME_LIMIT_EXCEEDED
from ldap3.strategy.base import RESPONSE_COMPLETE, SESSION_TERMINATED_BY_SERVER, TRANSACTION_ERROR
from ldap3.strategy.sync import SyncStrategy
from ldap3.utils.asn1 import decode_message_fast

from ..config import LdapConnection
from ..delta import Watermark
from ..errors import SourceReadIncomplete, SourceUnavailable
from ..records import SourceRecord
from . import ber, syncrepl

_CONNECT_ERRORS = (ldap_errors.LDAPSocketOpenError, ldap_errors.LDAPSocketSendError)
_TIMEOUT_ERRORS = (ldap_errors.LDAPResponseTimeoutError, ldap_errors.LDAPSocketReceiveError)
#: Messages that leave a search's response open: more follow until another type ends it.
_NOT_LAST = frozenset({"searchResEntry", "searchResRef", "intermediateResponse"})


class LdapConnector:
    #: Decoders of binary attributes (lower-case name -> text); other values are UTF-8, else hex.
    value_decoders: Mapping[str, Callable[[bytes], str]] = {}
    #: Keep a delta read's connection bound for the next one (a scheduler's reading process does: its
    #: connectors live from run to run); `close` unbinds it.
    keep_connection = False

    def __init__(self, site: str, connection: LdapConnection, attributes: list[str]) -> None:
        self.site = site
        self.connection = connection
        self.attributes = attributes
        self._anchor = connection.anchor.lower()
        self._current_url = connection.urls[0]
        #: Where the next delta starts (see DeltaConnector), set when a read completed.
        self.watermark: Watermark | None = None
        self.no_watermark_reason: str | None = None
        self._kept: ldap3.Connection | None = None  # bound, for the next delta read (keep_connection)

    @property
    def url(self) -> str:
        return self._current_url

    # -- connecting ---------------------------------------------------------------------------------

    def _tls(self) -> ldap3.Tls:
        options = self.connection.tls
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED if options.verify else ssl.CERT_NONE,
            ca_certs_file=str(options.ca_file) if options.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )

    def _bind_password(self) -> str | None:
        ref = self.connection.bind_password
        if ref is None:
            return None
        try:
            return ref.read()
        except ValueError as exc:
            raise SourceUnavailable(self.site, self.url, f"bind password: {exc}") from None

    def _open(self) -> ldap3.Connection:
        """A bound connection to the first URL that answers. Raises SourceUnavailable."""
        password = self._bind_password()
        last_error: SourceUnavailable | None = None
        for url in self.connection.urls:
            self._current_url = url
            try:
                return self._open_one(url, password)
            except SourceUnavailable as exc:
                last_error = exc
                if "invalid credentials" in exc.problem:
                    raise  # the next replica would refuse them too
        assert last_error is not None
        raise last_error

    def _open_one(self, url: str, password: str | None) -> ldap3.Connection:
        timeout = self.connection.timeout
        server = ldap3.Server(url, connect_timeout=timeout, tls=self._tls(), get_info=ldap3.NONE)
        conn = ldap3.Connection(
            server,
            user=self.connection.bind_dn,
            password=password,
            receive_timeout=max(1, round(timeout)),  # ldap3 packs it as a C long
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
            return_empty_attributes=False,
        )
        _decode_entries_lean(conn, self.value_decoders)
        try:
            conn.open()
            if self.connection.tls.start_tls and not conn.start_tls():
                raise SourceUnavailable(self.site, url, f"StartTLS refused: {conn.result.get('description')}")
            if not conn.bind():
                description = conn.result.get("description", "")
                if description == "invalidCredentials":
                    problem = f"bind as {self.connection.bind_dn} refused: invalid credentials"
                else:
                    problem = f"bind refused: {description} {conn.result.get('message', '')}".rstrip()
                raise SourceUnavailable(self.site, url, problem)
        except SourceUnavailable:
            _close(conn)
            raise
        except Exception as exc:
            _close(conn)
            raise SourceUnavailable(self.site, url, _describe(exc, timeout)) from None
        return conn

    # -- reading ------------------------------------------------------------------------------------

    def _search_once(
        self,
        conn: ldap3.Connection,
        base: str,
        search_filter: str,
        attributes: list[str],
        *,
        scope: str = ldap3.SUBTREE,
        controls: list[tuple[str, bool, bytes | None]] | None = None,
        dereference_aliases: str = ldap3.DEREF_ALWAYS,
        size_limit: int = 0,
    ) -> int:
        """One unpaged search: its LDAP result code (entries in `conn.response`, controls in
        `conn.result`). Raises SourceReadIncomplete when the server did not answer."""
        timeout = self.connection.timeout
        try:
            conn.search(
                base,
                search_filter,
                search_scope=scope,
                attributes=attributes,
                controls=controls,
                dereference_aliases=dereference_aliases,
                size_limit=size_limit,
                time_limit=int(timeout),
            )
        except Exception as exc:
            raise SourceReadIncomplete(
                self.site, self.url, f"search cut short: {_describe(exc, timeout)}"
            ) from None
        return int(conn.result.get("result", -1))

    def _pages(
        self,
        conn: ldap3.Connection,
        attributes: list[str],
        *,
        base: str | None = None,
        search_filter: str | None = None,
        request_controls: list[tuple[str, bool, bytes | None]] | None = None,
    ) -> Iterator[list[dict]]:
        """Every page of a paged subtree search (the site's base DN and filter unless given)."""
        cookie: bytes | None = None
        timeout = self.connection.timeout
        base = base or self.connection.base_dn
        while True:
            try:
                conn.search(
                    base,
                    search_filter or self.connection.filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=attributes,
                    paged_size=self.connection.page_size,
                    paged_cookie=cookie,
                    controls=request_controls,
                    time_limit=int(timeout),
                )
            except Exception as exc:
                raise SourceReadIncomplete(
                    self.site, self.url, f"search cut short: {_describe(exc, timeout)}"
                ) from None
            result = conn.result
            code = result.get("result")
            if code == RESULT_SIZE_LIMIT_EXCEEDED:
                raise SourceReadIncomplete(
                    self.site,
                    self.url,
                    "search cut short by the server's size limit (sizeLimitExceeded): "
                    "raise the limit for the sync account (olcLimits size.prtotal, or AD MaxPageSize)",
                )
            if code == RESULT_TIME_LIMIT_EXCEEDED:
                raise SourceReadIncomplete(self.site, self.url, "search cut short by the server's time limit")
            if code == 32:  # noSuchObject
                raise SourceUnavailable(self.site, self.url, f"base DN {base} does not exist")
            if code != RESULT_SUCCESS:
                raise SourceReadIncomplete(
                    self.site,
                    self.url,
                    f"search failed: {result.get('description')} {result.get('message', '')}".rstrip(),
                )
            yield conn.response or []
            controls = result.get("controls") or {}
            cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                return

    def read_all(self) -> Iterator[SourceRecord]:
        self.watermark = None
        conn = self._open()
        try:
            # Taken before reading: a change made during the read is read again next time, never lost.
            watermark, self.no_watermark_reason = syncrepl.initial_watermark(self, conn)
            for page in self._pages(conn, self.attributes):
                for entry in page:
                    if entry.get("type") != "searchResEntry":
                        continue  # referrals: not followed
                    yield self._record(entry)
            self.watermark = watermark
        finally:
            _close(conn)

    def read_changes(self, since: Watermark) -> Iterator[SourceRecord]:
        """What changed since `since`, by a syncrepl refresh (see `syncrepl`); deletions included.

        With `keep_connection`, the connection stays bound for the next delta read. A kept connection
        that no longer answers (the server's idle time-out closed it, or the server restarted) is
        replaced by a new one at once, and the refresh is asked again on it."""
        self.watermark = None
        conn, self._kept = self._kept, None
        answer = None
        if conn is not None:
            with contextlib.suppress(SourceReadIncomplete):  # it no longer answers (and is closed)
                answer = self._refresh_answer(conn, since)
        if answer is None:
            conn = self._open()
            answer = self._refresh_answer(conn, since)
        if self.keep_connection:
            self._kept = conn
        else:
            _close(conn)
        yield from syncrepl.changed_records(self, answer, since)

    def _refresh_answer(self, conn: ldap3.Connection, since: Watermark) -> syncrepl.Refresh:
        """`syncrepl.refresh_answer` on `conn`, which is closed if that fails."""
        try:
            return syncrepl.refresh_answer(self, conn, since)
        except BaseException:
            _close(conn)
            raise

    def close(self) -> None:
        """Unbind the connection kept for the next delta read, if any."""
        conn, self._kept = self._kept, None
        if conn is not None:
            _close(conn)

    def _record(self, entry: dict) -> SourceRecord:
        attributes: dict[str, list[str]] = entry["attributes"]
        dn = entry["dn"]
        if self._anchor == "dn":
            anchor = dn
        else:
            values = attributes.get(self._anchor)
            if not values:
                raise SourceReadIncomplete(
                    self.site,
                    self.url,
                    f"entry {dn} has no {self.connection.anchor} (the anchor): "
                    "check that the sync account may read it",
                )
            anchor = values[0]
        return SourceRecord(site=self.site, anchor=anchor, dn=dn, attributes=attributes)

    def count(self) -> int:
        conn = self._open()
        try:
            return sum(
                1 for page in self._pages(conn, ["1.1"]) for e in page if e.get("type") == "searchResEntry"
            )
        finally:
            _close(conn)


def _decode_entries_lean(conn: ldap3.Connection, decoders: ber.ValueDecoders | None = None) -> None:
    """Make this connection decode search entries straight into {lower-case name: [str]}.

    ldap3 decodes every message with its generic BER decoder (nested lists, a call per element),
    then builds every entry twice, as raw bytes and again through its schema formatters (a
    case-insensitive dict and configuration look-ups per value); the connector needs the values
    once, as text. Search entries are decoded here from their octets by hand (`ber`), which halved
    the CPU of a 10,000-entry read; an entry ldap3 still decodes (one with a control ldap3 decodes
    itself) skips the second pass (on a 30,000-entry read that pass was a quarter of the time).
    The overrides are on this connection's strategy object only; other messages keep ldap3's own
    decoding. `decoders` turn binary attributes (AD's objectGUID, objectSid) into their text form.
    Controls attached to an entry (syncrepl's Sync State) are kept.
    """
    decoders = decoders or {}
    strategy = conn.strategy
    standard = strategy.decode_response_fast

    def decode(ldap_message: dict) -> dict:
        if ldap_message["protocolOp"] != 4:  # not a searchResEntry
            return standard(ldap_message)
        payload = ldap_message["payload"]
        attributes: dict[str, list[str]] = {}
        for attribute in payload[1][3]:
            values = attribute[3][1][3]
            if values:
                name = bytes(attribute[3][0][3]).decode("ascii").lower()
                decode = decoders.get(name, ber.text)
                attributes[name] = [decode(v[3]) for v in values]
        ranged = any(";range=" in name for name in attributes)
        entry = ber.search_entry(ber.text(payload[0][3]), attributes, ranged=ranged)
        if ldap_message["controls"]:
            entry["controls"] = dict(strategy.decode_control_fast(c[3]) for c in ldap_message["controls"])
        return entry

    strategy.decode_response_fast = decode
    if type(strategy) is SyncStrategy:  # the only strategy whose loop `_receive_entries_by_hand` copies
        strategy._get_response = _receive_entries_by_hand(conn, decoders)


def _receive_entries_by_hand(conn: ldap3.Connection, decoders: ber.ValueDecoders) -> Callable[..., Any]:
    """ldap3's SyncStrategy._get_response (2.9.1), with search entries decoded by `ber.decode_search_entry`.

    This loop is the one place that holds a received message's octets before ldap3's decoder
    (`decode_message_fast`, a module function) turns them into nested lists. Every message that is
    not a plain search entry goes through ldap3's decoder and `decode_response_fast` as before.
    """
    strategy = conn.strategy

    def get_response(message_id: int, timeout: float) -> list[Any] | str:
        responses: list[Any] = []
        complete = False
        while not complete:
            messages = strategy.receiving()
            if not messages:
                return SESSION_TERMINATED_BY_SERVER
            for message in messages:
                if not message:
                    continue
                if conn.usage:
                    conn._usage.update_received_message(len(message))
                decoded = ber.decode_search_entry(message, decoders)
                if decoded is None:
                    ldap_message = decode_message_fast(message)
                    received_id, response = (
                        ldap_message["messageID"],
                        strategy.decode_response_fast(ldap_message),
                    )
                else:
                    received_id, response = decoded
                if received_id == message_id:
                    responses.append(response)
                    if response["type"] not in _NOT_LAST:
                        complete = True
                elif received_id == 0:  # an unsolicited notification (RFC 4511, section 4.4)
                    if response.get("responseName") == "1.3.6.1.4.1.1466.20036":  # notice of disconnection
                        return SESSION_TERMINATED_BY_SERVER
                    if response.get("responseName") == "2.16.840.1.113719.1.27.103.4":  # Novell transaction
                        return TRANSACTION_ERROR
                    conn.last_error = "unknown unsolicited notification from server"
                    raise ldap_errors.LDAPSocketReceiveError(conn.last_error)
                elif response["type"] == "extendedResp":
                    conn.last_error = "multiple extended responses to a single extended request"
                    raise ldap_errors.LDAPExtensionError(conn.last_error)
                else:
                    conn.last_error = "invalid messageId received"
                    raise ldap_errors.LDAPSocketReceiveError(conn.last_error)
        responses.append(RESPONSE_COMPLETE)
        return responses

    return get_response


def _close(conn: ldap3.Connection) -> None:
    """Unbind, ignoring a socket that a failed TLS handshake or a dead server already broke."""
    with contextlib.suppress(Exception):
        conn.unbind()


def _describe(exc: Exception, timeout: float) -> str:
    """One line for an ldap3 or socket failure, in the words an administrator would search for."""
    text = str(exc)
    if isinstance(exc, _TIMEOUT_ERRORS) or "timed out" in text or "timeout" in text.lower():
        return f"no answer within {timeout:g} s (time-out)"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            "TLS certificate verification failed: set connection.tls.ca_file "
            "to the CA that signed the server's certificate"
        )
    if isinstance(exc, ldap_errors.LDAPStartTLSError):
        return f"StartTLS failed: {text}"
    if isinstance(exc, _CONNECT_ERRORS):
        for known in (
            "Connection refused",
            "No route to host",
            "Name or service not known",
            "Network is unreachable",
        ):
            if known in text:
                return f"cannot connect: {known.lower()}"
        return f"cannot connect: {text}"
    if isinstance(exc, ldap_errors.LDAPSessionTerminatedByServerError):
        return "the server closed the connection"
    if isinstance(exc, ber.MalformedMessage):
        return f"malformed search entry from the server: {text}"
    return f"{type(exc).__name__}: {text}"
