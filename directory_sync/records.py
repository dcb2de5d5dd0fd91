"""What a connector yields: one entry of one source, before any mapping.

A connector knows LDAP (or LDIF, or AD) and nothing of people; a mapping knows people and nothing of
LDAP. `SourceRecord` is the boundary between the two (midPoint would call it a *shadow*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One account entry read from a site's source.

    `anchor` is the source's immutable identifier (LDAP entryUUID, AD objectGUID, or a configured key
    for file exports): it survives renames and moves, unlike the DN. Attribute names are lower-cased
    (LDAP attribute names are case-insensitive) and every value is a list of strings. A record with
    `enabled` False is an inactive account (disabled or expired at the source), not a deleted one.
    """

    site: str
    anchor: str
    dn: str
    attributes: Mapping[str, list[str]] = field(default_factory=dict)
    enabled: bool = True
    deleted: bool = False
    #: What the source says of the account itself, beside its attributes (midPoint's activation): AD's
    #: disabled, locked_out, password_never_expires, expires, object_sid... Strings, kept on the Account.
    facts: Mapping[str, str] = field(default_factory=dict)

    def first(self, name: str) -> str | None:
        """The first value of attribute `name` (case-insensitive), or None."""
        values = self.attributes.get(name.lower())
        return values[0] if values else None
