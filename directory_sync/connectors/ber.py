"""LDAP search result entries decoded by hand from their octets (RFC 4511, sections 4.2, 4.5.2 and 5.1).

A read is almost all SearchResultEntry messages. ldap3 decodes each one with its generic BER decoder
into nested lists (a tuple and a function call per element) that the connector then walks again to
build the entry; on a 10,000-entry read that generic pass was most of the reading process's CPU. The
entry's shape is fixed, so it is walked here once, straight into the dict the connector uses:

    LDAPMessage ::= SEQUENCE { messageID INTEGER, protocolOp CHOICE { ...,
                               searchResEntry [APPLICATION 4] SEQUENCE {
                                   objectName OCTET STRING,
                                   attributes SEQUENCE OF SEQUENCE {
                                       type OCTET STRING, vals SET OF OCTET STRING } }, ... },
                               controls [0] SEQUENCE OF Control OPTIONAL }
    Control ::= SEQUENCE { controlType OCTET STRING, criticality BOOLEAN DEFAULT FALSE,
                           controlValue OCTET STRING OPTIONAL }

Every other message (search done, references, syncrepl's intermediate responses, extended responses)
is left to ldap3. LDAP allows only a subset of BER (section 5.1: definite lengths, primitive strings):
an entry that departs from it raises `MalformedMessage` rather than yielding a value read from the
wrong octets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ldap3.protocol.oid import Oids

_BOOLEAN, _INTEGER, _OCTET_STRING, _SEQUENCE, _SET = 0x01, 0x02, 0x04, 0x30, 0x31
_SEARCH_RESULT_ENTRY = 0x64  # [APPLICATION 4], constructed
_CONTROLS = 0xA0  # [0], constructed

#: Response controls whose value ldap3 decodes into a dict of its own (paged results, DirSync,
#: pre-read and post-read): a message carrying one is left to ldap3, so that it has ldap3's form.
_DECODED_BY_LDAP3 = frozenset(
    {"1.2.840.113556.1.4.319", "1.2.840.113556.1.4.841", "1.3.6.1.1.13.1", "1.3.6.1.1.13.2"}
)

_utf8 = bytes.decode  # UTF-8, strict

ValueDecoders = Mapping[str, Callable[[bytes], str]]


class MalformedMessage(ValueError):
    """A search entry that is not valid LDAP BER: nothing is taken from it."""


def text(value: bytes) -> str:
    """UTF-8 text; binary values (a GUID, a SID, a photo) as hex, never mangled."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value).hex()


def search_entry(dn: str, attributes: dict[str, list[str]], *, ranged: bool) -> dict[str, Any]:
    """The connector's form of a search entry: "attributes" and "raw_attributes" hold the same text.

    They are one dict, unless the entry has a ranged attribute (`ranged`): ldap3's ranged retrieval
    extends the values and deletes the ranged names in both, which on one dict deleted each name
    twice (a KeyError) and doubled the values. A copy for every entry would cost a tenth of a read.
    """
    raw_attributes = {name: list(values) for name, values in attributes.items()} if ranged else attributes
    return {"type": "searchResEntry", "dn": dn, "attributes": attributes, "raw_attributes": raw_attributes}


def decode_search_entry(message: bytes, decoders: ValueDecoders) -> tuple[int, dict[str, Any]] | None:
    """(messageID, entry) for a SearchResultEntry message; None for any other message.

    The entry is `{"type": "searchResEntry", "dn", "attributes", "raw_attributes"}` plus "controls"
    when the message has some (each `{"description", "criticality", "value"}`, the value's octets, as
    ldap3 gives them). Attribute names are lower-cased; attributes without values are left out; values
    are text through `decoders` (by lower-case name), else `text`. "raw_attributes" is the same text,
    for ldap3's ranged retrieval (see `search_entry`).
    """
    try:
        return _search_entry(message, decoders)
    except IndexError:
        raise MalformedMessage("an LDAP message ends inside one of its elements") from None


def _element(data: bytes, at: int, tag: int, limit: int) -> tuple[int, int]:
    """(start, end) of the value of the element at `at`, which must have `tag` and end within `limit`."""
    if data[at] != tag:
        raise MalformedMessage(f"expected BER tag 0x{tag:02x} at octet {at}, found 0x{data[at]:02x}")
    length = data[at + 1]
    start = at + 2
    if length & 0x80:  # long form: the next (length & 0x7F) octets hold the length
        octets = length & 0x7F
        if octets == 0:
            raise MalformedMessage(f"indefinite BER length at octet {at + 1}, which LDAP does not allow")
        length = int.from_bytes(data[start : start + octets], "big")
        start += octets
    end = start + length
    if end > limit:
        raise MalformedMessage(f"the BER element at octet {at} runs past its enclosing element")
    return start, end


def _search_entry(message: bytes, decoders: ValueDecoders) -> tuple[int, dict[str, Any]] | None:
    end = len(message)
    at, message_end = _element(message, 0, _SEQUENCE, end)
    if message_end != end:
        raise MalformedMessage("octets after the end of an LDAP message")
    start, at = _element(message, at, _INTEGER, end)
    if start == at:
        raise MalformedMessage("an LDAP message with an empty messageID")
    message_id = int.from_bytes(message[start:at], "big", signed=True)
    if message[at] != _SEARCH_RESULT_ENTRY:
        return None
    at, entry_end = _element(message, at, _SEARCH_RESULT_ENTRY, end)

    start, at = _element(message, at, _OCTET_STRING, entry_end)
    dn = text(message[start:at])
    at, attributes_end = _element(message, at, _SEQUENCE, entry_end)
    if attributes_end != entry_end:
        raise MalformedMessage("octets after the attributes of a search entry")
    attributes: dict[str, list[str]] = {}
    while at < attributes_end:
        # `_element` is inlined below for lengths in the short form (under 128 octets), which nearly
        # every attribute and value has: these loops are most of a read, and a call per element
        # made them a quarter slower. Any other length goes through `_element`.
        length = message[at + 1]
        if message[at] == _SEQUENCE and length < 0x80:
            at += 2
            attribute_end = at + length
            if attribute_end > attributes_end:
                raise MalformedMessage(f"the attribute at octet {at - 2} runs past its search entry")
        else:
            at, attribute_end = _element(message, at, _SEQUENCE, attributes_end)
        length = message[at + 1]
        if message[at] == _OCTET_STRING and length < 0x80:
            start = at + 2
            at = start + length
        else:
            start, at = _element(message, at, _OCTET_STRING, attribute_end)
        name = message[start:at].decode("ascii").lower()
        length = message[at + 1]
        if message[at] == _SET and length < 0x80:
            at += 2
            values_end = at + length
        else:
            at, values_end = _element(message, at, _SET, attribute_end)
        if values_end != attribute_end:  # also catches a name running past its attribute
            raise MalformedMessage(f"the values of the attribute {name!r} do not end with it")
        if at == values_end:
            continue  # no values (a ranged attribute's empty base name): left out, as ldap3 is told to
        values = []
        while at < values_end:
            length = message[at + 1]
            if message[at] == _OCTET_STRING and length < 0x80:
                start = at + 2
                at = start + length
                if at > values_end:
                    raise MalformedMessage(f"the value at octet {start - 2} runs past its attribute")
            else:
                start, at = _element(message, at, _OCTET_STRING, values_end)
            values.append(message[start:at])
        decode = decoders.get(name)
        if decode is not None:
            attributes[name] = [decode(value) for value in values]
        else:
            try:
                attributes[name] = list(map(_utf8, values))
            except UnicodeDecodeError:
                attributes[name] = [text(value) for value in values]
    # A ranged attribute (AD's member;range=0-1499) is rare: find it in the octets, not name by name.
    entry = search_entry(dn, attributes, ranged=b";range=" in message)
    if entry_end < end:
        controls = _controls(message, entry_end, end)
        if controls is None:
            return None
        entry["controls"] = controls
    return message_id, entry


def _controls(message: bytes, at: int, end: int) -> dict[str, dict[str, Any]] | None:
    """The controls at the end of a message, as ldap3 gives them; None if ldap3 should decode them."""
    at, controls_end = _element(message, at, _CONTROLS, end)
    if controls_end != end:
        raise MalformedMessage("octets after the controls of an LDAP message")
    controls: dict[str, dict[str, Any]] = {}
    while at < end:
        at, control_end = _element(message, at, _SEQUENCE, end)
        start, at = _element(message, at, _OCTET_STRING, control_end)
        oid = message[start:at].decode("ascii")
        if oid in _DECODED_BY_LDAP3:
            return None
        criticality, value = False, None
        if at < control_end and message[at] == _BOOLEAN:
            start, at = _element(message, at, _BOOLEAN, control_end)
            if at - start != 1:
                raise MalformedMessage("a control's criticality is not one octet")
            criticality = message[start] != 0
        if at < control_end:
            start, at = _element(message, at, _OCTET_STRING, control_end)
            value = message[start:at]
        if at != control_end:
            raise MalformedMessage("octets after the value of a control")
        controls[oid] = {"description": Oids.get(oid, ""), "criticality": criticality, "value": value}
    return controls
