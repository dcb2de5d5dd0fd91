"""LDIF file connector: hospitals often hand over an export instead of access to their directory.

Reads RFC 2849 content records (`dn:` then `attr: value`, `attr:: base64`, folded lines, comments).
Change records (`changetype:`) and external values (`attr:< URL`) are refused with the line number: an
export that is not a plain snapshot cannot prove which accounts exist.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path

from ..config import LdifConnection
from ..errors import SourceReadIncomplete, SourceUnavailable
from ..records import SourceRecord


class LdifSyntaxError(ValueError):
    def __init__(self, line: int, problem: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {problem}")


def _logical_lines(lines: Iterator[str]) -> Iterator[tuple[int, str]]:
    """Unfold continuation lines (a line starting with one space continues the previous one)."""
    current: str | None = None
    start = 0
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if line.startswith(" ") and current is not None:
            current += line[1:]
            continue
        if current is not None:
            yield start, current
        current, start = line, number
    if current is not None:
        yield start, current


def parse_ldif(lines: Iterator[str]) -> Iterator[tuple[int, str, dict[str, list[str]]]]:
    """Yield (line, dn, attributes) for each record; attribute names lower-cased."""
    dn: str | None = None
    dn_line = 0
    attributes: dict[str, list[str]] = {}
    for number, line in _logical_lines(lines):
        if not line:
            if dn is not None:
                yield dn_line, dn, attributes
            dn, attributes = None, {}
            continue
        if line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        if not sep:
            raise LdifSyntaxError(number, f"expected 'attribute: value', got {line[:40]!r}")
        if rest.startswith(":"):
            try:
                value = base64.b64decode(rest[1:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise LdifSyntaxError(number, f"invalid base64 value for {name}") from None
        elif rest.startswith("<"):
            raise LdifSyntaxError(number, f"external value for {name} ('{name}:<') is not supported")
        else:
            value = rest.lstrip(" ")
        key = name.strip().lower()
        if dn is None:
            if key == "version":
                continue
            if key != "dn":
                raise LdifSyntaxError(number, f"a record must start with 'dn:', got {name!r}")
            dn, dn_line = value, number
            continue
        if key == "changetype":
            raise LdifSyntaxError(number, "change records are not an export: expected plain content records")
        attributes.setdefault(key, []).append(value)
    if dn is not None:
        yield dn_line, dn, attributes


def _under(dn: str, base: str) -> bool:
    dn_l, base_l = dn.lower().replace(", ", ","), base.lower().replace(", ", ",")
    return dn_l.endswith("," + base_l)


class LdifConnector:
    def __init__(self, site: str, connection: LdifConnection) -> None:
        self.site = site
        self.connection = connection
        self._anchor = connection.anchor.lower()
        self._object_class = connection.object_class.lower()

    @property
    def url(self) -> str:
        return self.connection.url

    def _entries(self) -> Iterator[tuple[int, str, dict[str, list[str]]]]:
        path: Path = self.connection.path
        try:
            handle = path.open(encoding="utf-8")
        except OSError as exc:
            raise SourceUnavailable(self.site, self.url, f"cannot open the export: {exc.strerror}") from None
        with handle:
            try:
                for line, dn, attributes in parse_ldif(iter(handle)):
                    classes = {c.lower() for c in attributes.get("objectclass", ())}
                    if self._object_class not in classes:
                        continue
                    if self.connection.base_dn and not _under(dn, self.connection.base_dn):
                        continue
                    yield line, dn, attributes
            except LdifSyntaxError as exc:
                raise SourceReadIncomplete(self.site, self.url, f"malformed export, {exc}") from None
            except UnicodeDecodeError:
                raise SourceReadIncomplete(self.site, self.url, "the export is not UTF-8") from None

    def read_all(self) -> Iterator[SourceRecord]:
        for line, dn, attributes in self._entries():
            if self._anchor == "dn":
                anchor = dn
            else:
                values = attributes.get(self._anchor)
                if not values:
                    raise SourceReadIncomplete(
                        self.site,
                        self.url,
                        f"entry {dn} (line {line}) has no {self.connection.anchor} (the anchor)",
                    )
                anchor = values[0]
            yield SourceRecord(site=self.site, anchor=anchor, dn=dn, attributes=attributes)

    def count(self) -> int:
        return sum(1 for _ in self._entries())
