"""Search entries decoded by hand (connectors/ber.py) against ldap3's own decoding of the same octets.

The reference is what the connector did before: ldap3's BER decoder (`decode_message_fast`) then the
connection's `decode_response_fast` (as `_decode_entries_lean` sets it up). Real messages come from a
real slapd; the edge cases no server here sends are built octet by octet.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.utils.asn1 import decode_message_fast

from directory_sync.config import load_site_mapping
from directory_sync.connectors import open_connector, syncrepl
from directory_sync.connectors.ber import MalformedMessage, decode_search_entry
from directory_sync.connectors.ldap import LdapConnector, _decode_entries_lean
from tests.hospitals import ldap_connection, person, record_messages, suffix_ldif, write_site
from tests.servers.slapd import SlapdServer, Suffix

SUFFIX = "dc=ch-apt,dc=fr"
PHOTO = bytes(range(200, 256)) + b"\x00\x01\xff"  # not UTF-8
BIG_PHOTO = bytes(range(256)) * 300  # 76,800 octets: three-octet lengths for the value and the message
DECODERS = {"jpegphoto": lambda value: base64.b64encode(value).decode("ascii")}


def reference(message: bytes, decoders: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """ldap3's decoding of `message` with the connector's lean entry decoding: the state before."""
    conn = ldap3.Connection(ldap3.Server("ldap://127.0.0.1:1", get_info=ldap3.NONE))
    _decode_entries_lean(conn, decoders)
    decoded = decode_message_fast(message)
    return decoded["messageID"], conn.strategy.decode_response_fast(decoded)


# -- real messages from slapd ---------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, slapd_factory: Any, monkeypatch: pytest.MonkeyPatch) -> SlapdServer:
    entries = [person(SUFFIX, f"user{i:03d}", f"Nom{i}", "Hélène") for i in range(30)]
    dn, odd = person(SUFFIX, "zoë", "Ægidius", "Loïc")
    odd["jpegPhoto"] = [PHOTO, BIG_PHOTO]
    odd["description"] = ["é" * 70, "x" * 300, "y" * 70_000]  # one-, two- and three-octet long forms
    entries.append((dn, odd))
    slapd: SlapdServer = slapd_factory([Suffix(SUFFIX, suffix_ldif(tmp_path / "apt.ldif", SUFFIX, entries))])
    monkeypatch.setenv("GHT_TEST_BIND_PASSWORD", slapd.reader_password)
    return slapd


def recorded_messages(tmp_path: Path, server: SlapdServer) -> list[bytes]:
    """The octets of every message slapd sent for a paged read and a syncrepl refresh of the site."""
    path = write_site(
        tmp_path, "ch-apt", ldap_connection(server, SUFFIX, "GHT_TEST_BIND_PASSWORD", page_size=7)
    )
    connector = open_connector(load_site_mapping(path))
    assert isinstance(connector, LdapConnector)
    conn = connector._open()
    messages = record_messages(conn)
    attributes = ["*", "entryUUID", "jpegPhoto"]
    try:
        for _ in connector._pages(conn, attributes):
            pass
        connector._search_once(
            conn,
            connector.connection.base_dn,
            "(objectClass=*)",
            attributes,
            controls=[syncrepl.request_control(None)],
            dereference_aliases=ldap3.DEREF_NEVER,
        )
        syncrepl_entries = [e for e in conn.response or [] if e["type"] == "searchResEntry"]
        assert syncrepl_entries and all(syncrepl.SYNC_STATE_OID in e["controls"] for e in syncrepl_entries)
    finally:
        conn.unbind()
    return messages


def test_entries_from_slapd_decode_as_ldap3_decodes_them(tmp_path: Path, server: SlapdServer) -> None:
    messages = recorded_messages(tmp_path, server)
    entries = 0
    for message in messages:
        decoded = decode_search_entry(message, DECODERS)
        expected = reference(message, DECODERS)
        if expected[1]["type"] != "searchResEntry":
            assert decoded is None, expected  # search done, paged-results cookie: ldap3's
            continue
        entries += 1
        assert decoded == expected
    assert entries == 31 + 32  # the paged read (people), the refresh (ou=people too)
    with_controls = [m for m in messages if (d := decode_search_entry(m, DECODERS)) and "controls" in d[1]]
    assert len(with_controls) == 32  # every syncrepl entry carries its Sync State control
    big = [m for m in messages if m[1] == 0x83]  # a three-octet length: the 70,000-octet entry
    assert len(big) == 2
    odd = decode_search_entry(big[0], DECODERS)
    assert odd is not None
    assert odd[1]["attributes"]["jpegphoto"] == [base64.b64encode(v).decode() for v in (PHOTO, BIG_PHOTO)]
    assert odd[1]["attributes"]["description"] == ["é" * 70, "x" * 300, "y" * 70_000]
    assert odd[1]["dn"] == f"uid=zoë,ou=people,{SUFFIX}"


def test_a_read_through_the_connector_is_unchanged(
    tmp_path: Path, server: SlapdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same records, whether the connection decodes entries by hand or leaves them to ldap3.
    path = write_site(
        tmp_path, "ch-apt", ldap_connection(server, SUFFIX, "GHT_TEST_BIND_PASSWORD", page_size=7)
    )
    by_hand = list(open_connector(load_site_mapping(path)).read_all())
    connector = open_connector(load_site_mapping(path))
    assert isinstance(connector, LdapConnector)
    open_one = connector._open_one

    def without_hand_decoding(url: str, password: str | None) -> ldap3.Connection:
        conn = open_one(url, password)
        del conn.strategy._get_response  # the instance's override: ldap3's own loop again
        return conn

    monkeypatch.setattr(connector, "_open_one", without_hand_decoding)
    by_ldap3 = list(connector.read_all())
    assert len(by_hand) == 31
    assert by_hand == by_ldap3
    assert connector.watermark is not None


# -- edge cases, built octet by octet -------------------------------------------------------------


def tlv(tag: int, *parts: bytes, length_octets: int | None = None) -> bytes:
    """One BER element; `length_octets` forces the long form with that many length octets."""
    value = b"".join(parts)
    size = len(value)
    if length_octets is None and size < 0x80:
        return bytes([tag, size]) + value
    octets = length_octets or (size.bit_length() + 7) // 8
    return bytes([tag, 0x80 | octets]) + size.to_bytes(octets, "big") + value


def entry_message(
    attributes: list[tuple[bytes, list[bytes]]],
    *,
    dn: bytes = b"uid=a,ou=people,dc=ch-apt,dc=fr",
    message_id: int = 7,
    controls: bytes | None = None,
    length_octets: int | None = None,
) -> bytes:
    partial = b"".join(
        tlv(0x30, tlv(0x04, name), tlv(0x31, *(tlv(0x04, v, length_octets=length_octets) for v in values)))
        for name, values in attributes
    )
    op = tlv(
        0x64, tlv(0x04, dn), tlv(0x30, partial, length_octets=length_octets), length_octets=length_octets
    )
    number = message_id.to_bytes((message_id.bit_length() + 8) // 8, "big", signed=True)
    return tlv(0x30, tlv(0x02, number), op, *([controls] if controls else []), length_octets=length_octets)


def control(oid: bytes, *rest: bytes) -> bytes:
    return tlv(0x30, tlv(0x04, oid), *rest)


EDGE_CASES = {
    "empty value": entry_message([(b"description", [b""]), (b"cn", [b" a ", b""])]),
    "no attributes": entry_message([]),
    "attribute without values": entry_message([(b"member", []), (b"member;range=0-1", [b"cn=x", b"cn=y"])]),
    "not UTF-8": entry_message([(b"jpegPhoto", [b"\xff\xfe\x00", b"ok"]), (b"cn", [b"\xc3\xa9"])]),
    "not UTF-8 DN": entry_message([(b"cn", [b"a"])], dn=b"cn=\xff"),
    "mixed-case names": entry_message([(b"givenName", [b"a"]), (b"GIVENNAME", [b"b"])]),
    "non-minimal long forms": entry_message([(b"cn", [b"a", b"b" * 200])], length_octets=4),
    "one-octet long forms": entry_message([(b"cn", [b"a" * 130])], length_octets=1),
    "large message ID": entry_message([(b"cn", [b"a"])], message_id=2**31 - 1),
    "control without value": entry_message([(b"cn", [b"a"])], controls=tlv(0xA0, control(b"1.2.3"))),
    "control with value": entry_message(
        [(b"cn", [b"a"])],
        controls=tlv(0xA0, control(syncrepl.SYNC_STATE_OID.encode(), tlv(0x04, b"\x30\x03\x0a\x01\x01"))),
    ),
    "critical control, two controls": entry_message(
        [(b"cn", [b"a"])],
        controls=tlv(0xA0, control(b"1.2.3", tlv(0x01, b"\xff"), tlv(0x04, b"v")), control(b"1.2.4")),
    ),
}


@pytest.mark.parametrize("message", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_cases_decode_as_ldap3_decodes_them(message: bytes) -> None:
    assert decode_search_entry(message, DECODERS) == reference(message, DECODERS)


def test_an_explicit_false_criticality_is_false() -> None:
    # ldap3's fast decoder reads any encoded criticality as True (it compares octets with 0); the
    # value is not used by the connector, but it is decoded as the octet says.
    message = entry_message([(b"cn", [b"a"])], controls=tlv(0xA0, control(b"1.2.3", tlv(0x01, b"\x00"))))
    decoded = decode_search_entry(message, {})
    assert decoded is not None
    assert decoded[1]["controls"]["1.2.3"]["criticality"] is False


@pytest.mark.parametrize(
    "message",
    [
        tlv(0x30, tlv(0x02, b"\x05"), tlv(0x65, tlv(0x0A, b"\x00"), tlv(0x04, b""), tlv(0x04, b""))),  # done
        tlv(0x30, tlv(0x02, b"\x05"), tlv(0x79, tlv(0x80, syncrepl.SYNC_INFO_OID.encode()))),  # intermediate
        # An entry carrying a control whose value ldap3 decodes itself (paged results).
        entry_message(
            [(b"cn", [b"a"])], controls=tlv(0xA0, control(b"1.2.840.113556.1.4.319", tlv(0x04, b"")))
        ),
    ],
    ids=["search done", "intermediate response", "entry with a control ldap3 decodes"],
)
def test_other_messages_are_left_to_ldap3(message: bytes) -> None:
    assert decode_search_entry(message, {}) is None


GOOD = entry_message([(b"cn", [b"abc"])])


@pytest.mark.parametrize(
    "garbled",
    [
        GOOD[:-1],  # cut short
        GOOD + b"\x00",  # octets after the message
        b"\x31" + GOOD[1:],  # not a SEQUENCE
        GOOD.replace(b"\x31\x05\x04\x03abc", b"\x31\x05\x24\x03abc"),  # a constructed OCTET STRING
        GOOD.replace(b"\x31\x05\x04\x03abc", b"\x31\x05\x04\x04abc"),  # a value past its SET
        GOOD.replace(b"\x31\x05\x04\x03abc", b"\x31\x80\x04\x03abc"),  # an indefinite length
        GOOD.replace(b"\x04\x02cn", b"\x04\x09cn"),  # a name past its attribute
        entry_message([(b"cn", [b"a"])], controls=tlv(0xA0, control(b"1.2.3", tlv(0x01, b"\x00\x00")))),
        entry_message([(b"cn", [b"a"])], controls=tlv(0xA1, control(b"1.2.3"))),
        tlv(0x30, tlv(0x02, b""), tlv(0x64, tlv(0x04, b""), tlv(0x30))),  # an empty messageID
    ],
)
def test_a_malformed_entry_is_refused(garbled: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_search_entry(garbled, {})
