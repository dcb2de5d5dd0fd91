"""OpenLDAP delta reads: the Content Synchronization Operation (syncrepl, RFC 4533), refreshOnly mode.

The server (slapd with the syncprov overlay) answers a search carrying a Sync Request control and a
cookie with the entries added or changed since the cookie, whole, and the entryUUIDs of the entries
deleted or moved out of the search's scope since then (from its session log), then a new cookie.
ldap3 has no syncrepl helper: the controls are encoded here with pyasn1; what comes once per changed
or deleted entry (the Sync State control, Sync Info messages) is decoded by hand, checked against
pyasn1's encoding in tests/test_delta_ldap.py.

When the session log no longer covers the cookie, slapd answers with the *present* phase instead (every
entry still there, to be compared with a full copy); a garbled cookie is answered with the whole
content and no cookie. Neither is a delta this service can apply: both raise `WatermarkRejected` and the
site is read completely, which is just as correct and says why.

Deletions are reported by entryUUID only, so a delta needs the site's anchor to be entryUUID (the
default); with another anchor the connector takes no watermark and every run is full.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ldap3
from ldap3.core.results import (
    RESULT_NO_SUCH_OBJECT,
    RESULT_SIZE_LIMIT_EXCEEDED,
    RESULT_SUCCESS,
    RESULT_UNAVAILABLE_CRITICAL_EXTENSION,
)
from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, namedval, tag, univ

from ..delta import Watermark, WatermarkRejected
from ..errors import SourceReadIncomplete, SourceUnavailable
from ..records import SourceRecord

if TYPE_CHECKING:
    from .ldap import LdapConnector

SYNC_REQUEST_OID = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE_OID = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_DONE_OID = "1.3.6.1.4.1.4203.1.9.1.3"
SYNC_INFO_OID = "1.3.6.1.4.1.4203.1.9.1.4"
#: e-syncRefreshRequired: the server asks the client to start again from scratch.
E_SYNC_REFRESH_REQUIRED = 4096
WATERMARK_KIND = "syncrepl"

# A filter no entry matches: asking for the content under it gives the current cookie and nothing else.
_NOTHING = "(entryUUID=00000000-0000-0000-0000-000000000000)"

# -- RFC 4533 section 2: the ASN.1 of the controls and of the Sync Info message -----------------------


class _Mode(univ.Enumerated):
    namedValues = namedval.NamedValues(("refreshOnly", 1), ("refreshAndPersist", 3))


class _SyncRequestValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("mode", _Mode()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("reloadHint", univ.Boolean(False)),
    )


class _State(univ.Enumerated):
    namedValues = namedval.NamedValues(("present", 0), ("add", 1), ("modify", 2), ("delete", 3))


class _SyncStateValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("state", _State()),
        namedtype.NamedType("entryUUID", univ.OctetString()),
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
    )


class _SyncDoneValue(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)),
    )


def _context(number: int, constructed: bool) -> tag.Tag:
    return tag.Tag(
        tag.tagClassContext, tag.tagFormatConstructed if constructed else tag.tagFormatSimple, number
    )


class _RefreshPhase(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDone", univ.Boolean(True)),
    )


class _SyncIdSet(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("cookie", univ.OctetString()),
        namedtype.DefaultedNamedType("refreshDeletes", univ.Boolean(False)),
        namedtype.NamedType("syncUUIDs", univ.SetOf(componentType=univ.OctetString())),
    )


class _SyncInfoValue(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("newcookie", univ.OctetString().subtype(implicitTag=_context(0, False))),
        namedtype.NamedType("refreshDelete", _RefreshPhase().subtype(implicitTag=_context(1, True))),
        namedtype.NamedType("refreshPresent", _RefreshPhase().subtype(implicitTag=_context(2, True))),
        namedtype.NamedType("syncIdSet", _SyncIdSet().subtype(implicitTag=_context(3, True))),
    )


def request_control(cookie: bytes | None) -> tuple[str, bool, bytes]:
    """The Sync Request control for a refreshOnly search, resuming from `cookie` if given."""
    value = _SyncRequestValue()
    value["mode"] = "refreshOnly"
    if cookie is not None:
        value["cookie"] = cookie
    return (SYNC_REQUEST_OID, True, encoder.encode(value))


_STATES = {0: "present", 1: "add", 2: "modify", 3: "delete"}


def _tlv(data: bytes, at: int, expected: int) -> tuple[int, int]:
    """The (start, end) of the value of the BER element at `at`, whose tag must be `expected`."""
    if at + 2 > len(data) or data[at] != expected:
        raise PyAsn1Error(f"expected tag 0x{expected:02x} at octet {at}")
    length, start = data[at + 1], at + 2
    if length & 0x80:  # long form: the next (length & 0x7F) octets hold the length
        octets = length & 0x7F
        if octets == 0 or octets > 4 or start + octets > len(data):
            raise PyAsn1Error(f"unsupported BER length at octet {at + 1}")
        length, start = int.from_bytes(data[start : start + octets], "big"), start + octets
    if start + length > len(data):
        raise PyAsn1Error(f"BER element at octet {at} runs past the end of the value")
    return start, start + length


def decode_sync_state(value: bytes) -> tuple[str, bytes, bytes | None]:
    """A Sync State control's value (state, entryUUID octets, cookie or None), decoded by hand.

    It comes with every entry of a delta, so it is read without pyasn1 (half of a delta's reading
    time went there): `SEQUENCE { state ENUMERATED, entryUUID OCTET STRING, cookie OCTET STRING
    OPTIONAL }`, RFC 4533 section 2.2. Anything else raises PyAsn1Error, as the decoder would.
    """
    value = bytes(value)
    start, end = _tlv(value, 0, 0x30)
    if end != len(value):
        raise PyAsn1Error("trailing octets after the Sync State value")
    state_start, state_end = _tlv(value, start, 0x0A)
    state = _STATES.get(int.from_bytes(value[state_start:state_end], "big", signed=True))
    if state is None or state_end == state_start:
        raise PyAsn1Error("unknown syncrepl state in a Sync State control")
    uuid_start, uuid_end = _tlv(value, state_end, 0x04)
    cookie = None
    if uuid_end < end:
        cookie_start, cookie_end = _tlv(value, uuid_end, 0x04)
        if cookie_end != end:
            raise PyAsn1Error("unexpected element after the cookie of a Sync State control")
        cookie = value[cookie_start:cookie_end]
    return state, value[uuid_start:uuid_end], cookie


_INFO_CHOICES = {0xA1: "refreshDelete", 0xA2: "refreshPresent", 0xA3: "syncIdSet"}


def decode_sync_info(value: bytes) -> tuple[str, bytes | None, bool, list[bytes]]:
    """A Sync Info message's value, decoded by hand: (choice, cookie or None, flag, syncUUIDs).

    slapd sends the entryUUIDs of deleted entries in Sync Info messages, often one message each, so
    they are read without pyasn1 like the Sync State control (RFC 4533 section 2.5):
    `newcookie [0] syncCookie`, `refreshDelete [1]` and `refreshPresent [2] SEQUENCE { cookie
    OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE }`, `syncIdSet [3] SEQUENCE { cookie OPTIONAL,
    refreshDeletes BOOLEAN DEFAULT FALSE, syncUUIDs SET OF syncUUID }`. `flag` is refreshDone or
    refreshDeletes. Anything else raises PyAsn1Error, as the decoder would.
    """
    value = bytes(value)
    if not value:
        raise PyAsn1Error("empty Sync Info value")
    if value[0] == 0x80:
        start, end = _tlv(value, 0, 0x80)
        if end != len(value):
            raise PyAsn1Error("trailing octets after the Sync Info value")
        return "newcookie", value[start:end], False, []
    name = _INFO_CHOICES.get(value[0])
    if name is None:
        raise PyAsn1Error(f"unknown Sync Info choice, tag 0x{value[0]:02x}")
    at, end = _tlv(value, 0, value[0])
    if end != len(value):
        raise PyAsn1Error("trailing octets after the Sync Info value")
    cookie = None
    if at < end and value[at] == 0x04:
        cookie_start, at = _tlv(value, at, 0x04)
        cookie = value[cookie_start:at]
    flag = name != "syncIdSet"  # refreshDone defaults to TRUE, refreshDeletes to FALSE
    if at < end and value[at] == 0x01:
        flag_start, at = _tlv(value, at, 0x01)
        if at - flag_start != 1:
            raise PyAsn1Error("a BOOLEAN of other than one octet in a Sync Info value")
        flag = value[flag_start] != 0
    uuids: list[bytes] = []
    if name == "syncIdSet":
        set_start, set_end = _tlv(value, at, 0x31)
        while set_start < set_end:
            uuid_start, set_start = _tlv(value, set_start, 0x04)
            uuids.append(value[uuid_start:set_start])
        at = set_end
    if at != end:
        raise PyAsn1Error("unexpected element in a Sync Info value")
    return name, cookie, flag, uuids


def _optional(component: Any) -> bytes | None:
    return bytes(component) if component.isValue else None


def _uuid_text(raw: bytes) -> str:
    """A syncUUID (16 octets) in entryUUID's text form (RFC 4530: lower-case, hyphenated)."""
    return str(uuid.UUID(bytes=bytes(raw)))


@dataclass
class Refresh:
    """What one refreshOnly search brought back."""

    entries: list[dict[str, Any]] = field(default_factory=list)  # added or changed entries, whole
    deleted: list[str] = field(default_factory=list)  # entryUUIDs deleted or gone out of scope
    cookie: bytes | None = None  # the newest cookie the server sent (None: nothing new)
    present_phase: bool = False  # the server fell back to the present phase: not a usable delta
    empty_cookie: bool = False  # the server ignored the cookie and sent the whole content


def _parse(response: list[dict[str, Any]], controls: dict[str, Any]) -> Refresh:
    """Sort a refreshOnly answer into changed entries, deleted entryUUIDs and the newest cookie."""
    refresh = Refresh()

    def take(cookie: bytes | None) -> None:
        if cookie is None:
            return
        if not cookie:
            refresh.empty_cookie = True
        refresh.cookie = cookie

    for message in response:
        kind = message.get("type")
        if kind == "intermediateResponse" and message.get("responseName") == SYNC_INFO_OID:
            name, cookie, refresh_deletes, uuids = decode_sync_info(message["responseValue"])
            take(cookie)
            if name == "refreshPresent":
                refresh.present_phase = True
            elif name == "syncIdSet":
                if refresh_deletes:
                    refresh.deleted.extend(_uuid_text(u) for u in uuids)
                else:
                    refresh.present_phase = True
        elif kind == "searchResEntry":
            control = (message.get("controls") or {}).get(SYNC_STATE_OID)
            if control is None:
                raise PyAsn1Error(f"entry {message.get('dn')} came without a Sync State control")
            name, entry_uuid, cookie = decode_sync_state(control["value"])
            take(cookie)
            if name == "present":
                refresh.present_phase = True
            elif name == "delete":
                refresh.deleted.append(_uuid_text(entry_uuid))
            else:
                refresh.entries.append(message)
    done = controls.get(SYNC_DONE_OID)
    if done is not None:
        value, _ = decoder.decode(done["value"], asn1Spec=_SyncDoneValue())
        take(_optional(value["cookie"]))
        if not value["refreshDeletes"]:
            refresh.present_phase = True
    return refresh


# -- reading through an LdapConnector --------------------------------------------------------------


def _refresh(
    connector: LdapConnector, conn: ldap3.Connection, search_filter: str, cookie: bytes | None
) -> Refresh | int:
    """One refreshOnly search: the parsed answer, or the LDAP result code when it failed."""
    code = connector._search_once(
        conn,
        connector.connection.base_dn,
        search_filter,
        connector.attributes,
        controls=[request_control(cookie)],
        # slapd refuses syncrepl with ldap3's default derefAliases ("illegal value for derefAliases").
        dereference_aliases=ldap3.DEREF_NEVER,
    )
    if code != RESULT_SUCCESS:
        return code
    try:
        return _parse(conn.response or [], conn.result.get("controls") or {})
    except PyAsn1Error as exc:
        raise SourceReadIncomplete(
            connector.site, connector.url, f"malformed syncrepl answer from the server: {exc}"
        ) from None


def initial_watermark(
    connector: LdapConnector, conn: ldap3.Connection
) -> tuple[Watermark | None, str | None]:
    """The watermark to take *before* a full read: the server's current cookie for the site's base DN.

    Returns (None, why) when there can be no delta for this site: another anchor than entryUUID, or a
    server without the syncprov overlay on this database.
    """
    if connector.connection.anchor.lower() != "entryuuid":
        return None, (
            f"the anchor is {connector.connection.anchor}, but syncrepl reports deletions by entryUUID: "
            "every run of this site is a full read"
        )
    answer = _refresh(connector, conn, f"(&{connector.connection.filter}{_NOTHING})", None)
    if answer == RESULT_UNAVAILABLE_CRITICAL_EXTENSION:
        return (
            None,
            "the server does not offer syncrepl (no syncprov overlay on this database): full reads only",
        )
    if isinstance(answer, int):
        return None, f"the server refused a syncrepl search (result code {answer}): full reads only"
    if not answer.cookie:
        return None, "the server gave no syncrepl cookie: full reads only"
    return _watermark(connector, answer.cookie), None


def _watermark(connector: LdapConnector, cookie: bytes) -> Watermark:
    return Watermark(
        kind=WATERMARK_KIND,
        source=f"{connector.connection.base_dn} on {connector.url}",
        value=base64.b64encode(cookie).decode("ascii"),
    )


def refresh_answer(connector: LdapConnector, conn: ldap3.Connection, since: Watermark) -> Refresh:
    """What changed under the site's base DN since `since`, checked whole before anything is planned:
    a refused or expired cookie raises `WatermarkRejected`."""
    site, url = connector.site, connector.url
    if since.kind != WATERMARK_KIND:
        raise WatermarkRejected(
            site, url, f"the stored watermark is of kind {since.kind}, not a syncrepl cookie"
        )
    cookie = base64.b64decode(since.value)
    answer = _refresh(connector, conn, connector.connection.filter, cookie)
    if answer == E_SYNC_REFRESH_REQUIRED:
        raise WatermarkRejected(
            site, url, "the server refused the stored syncrepl cookie (e-syncRefreshRequired): full read"
        )
    if answer == RESULT_SIZE_LIMIT_EXCEEDED:
        raise WatermarkRejected(
            site,
            url,
            "more changes than the server's size limit lets one syncrepl search return: full (paged) read",
        )
    if answer == RESULT_NO_SUCH_OBJECT:
        raise SourceUnavailable(site, url, f"base DN {connector.connection.base_dn} does not exist")
    if isinstance(answer, int):
        raise SourceReadIncomplete(site, url, f"syncrepl search failed with result code {answer}")
    if answer.present_phase or answer.empty_cookie:
        raise WatermarkRejected(
            site,
            url,
            "the server no longer holds the changes since the stored syncrepl cookie "
            "(session log exceeded, or the cookie is not its own): full read",
        )
    return answer


def changed_records(connector: LdapConnector, answer: Refresh, since: Watermark) -> Iterator[SourceRecord]:
    """Yield the records of a checked answer; set `connector.watermark` at the end."""
    for entry in answer.entries:
        yield connector._record(entry)
    for anchor in answer.deleted:
        yield SourceRecord(site=connector.site, anchor=anchor, dn="", deleted=True)
    connector.watermark = _watermark(connector, answer.cookie or base64.b64decode(since.value))
