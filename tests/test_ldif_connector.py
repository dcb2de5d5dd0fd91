"""The LDIF connector reads hospitals' exports (RFC 2849), and refuses what it cannot trust."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from directory_sync.config import LdifConnection
from directory_sync.connectors import LdifConnector
from directory_sync.errors import SourceReadIncomplete, SourceUnavailable


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


EXPORT = f"""\
# Export of ou=people,dc=ch-test,dc=fr
version: 1

dn: dc=ch-test,dc=fr
objectClass: dcObject
objectClass: organization
entryUUID: 00000000-0000-0000-0000-000000000000

dn: uid=hdupont,ou=people,dc=ch-test,dc=fr
objectClass: inetOrgPerson
uid: hdupont
sn: Dupont
givenName:: {b64("Hélène")}
description: a long value folded
  over two lines
entryUUID: 11111111-1111-1111-1111-111111111111

dn: uid=other,ou=elsewhere,dc=ch-test,dc=fr
objectClass: inetOrgPerson
uid: other
sn: Other
entryUUID: 22222222-2222-2222-2222-222222222222
"""


def reader(tmp_path: Path, text: str, **options: str) -> LdifConnector:
    path = tmp_path / "export.ldif"
    path.write_text(text, encoding="utf-8")
    return LdifConnector("ch-test", LdifConnection(kind="ldif", path=path, **options))  # type: ignore[arg-type]


def test_content_records_become_source_records(tmp_path: Path) -> None:
    records = list(reader(tmp_path, EXPORT, base_dn="ou=people,dc=ch-test,dc=fr").read_all())
    assert [r.dn for r in records] == ["uid=hdupont,ou=people,dc=ch-test,dc=fr"]
    (record,) = records
    assert record.anchor == "11111111-1111-1111-1111-111111111111"
    assert record.first("givenname") == "Hélène"
    assert record.first("description") == "a long value folded over two lines"


def test_only_entries_of_the_object_class_are_read(tmp_path: Path) -> None:
    assert reader(tmp_path, EXPORT).count() == 2


def test_the_dn_can_be_the_anchor(tmp_path: Path) -> None:
    records = list(reader(tmp_path, EXPORT, anchor="dn").read_all())
    assert records[0].anchor == records[0].dn


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (
            ("entryUUID: 11111111-1111-1111-1111-111111111111\n", ""),
            r"entry uid=hdupont,.* \(line 9\) has no entryUUID",
        ),
        (("uid: hdupont\n", "changetype: modify\n"), "line 11: change records are not an export"),
        (("sn: Dupont\n", "sn:< file:///etc/passwd\n"), "line 12: external value"),
        (("sn: Dupont\n", "sn:: ***\n"), "line 12: invalid base64"),
        (("sn: Dupont\n", "this line has no colon\n"), "line 12: expected 'attribute: value'"),
    ],
)
def test_a_malformed_export_is_an_incomplete_read(
    tmp_path: Path, mutation: tuple[str, str], message: str
) -> None:
    with pytest.raises(SourceReadIncomplete, match=message):
        list(reader(tmp_path, EXPORT.replace(*mutation)).read_all())


def test_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    connector = LdifConnector("ch-test", LdifConnection(kind="ldif", path=tmp_path / "nope.ldif"))
    with pytest.raises(
        SourceUnavailable, match=r"site ch-test \(file://.*nope.ldif\): cannot open the export"
    ):
        list(connector.read_all())
