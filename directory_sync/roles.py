"""Territorial roles from directory group membership (the `roles:` section of a site mapping).

A hospital says who is a doctor, an emergency physician or a ward manager with groups (`GG-Medecins`),
often nested (`GG-Urgentistes` inside `GG-Medecins`). A mapping names the groups that matter and the
territorial role each one gives; a person's roles at a site are the sorted, comma-separated codes, kept
on the affiliation like the other territorial attributes.

Groups are named by CN (`GG-Medecins`) or by DN. Direct membership is read from `memberOf` (or the
attribute the mapping names); nested membership is computed by the Active Directory connector with
LDAP_MATCHING_RULE_IN_CHAIN and handed over in `msds-memberOfTransitive`, the name AD itself gives to
the transitive list (which a DC only computes for one entry at a time).
"""

from __future__ import annotations

import re

from .config import RoleMapping
from .records import SourceRecord

#: The attribute (lower-case, as in SourceRecord) holding the DNs of the role groups an account is a
#: member of directly or through nested groups.
TRANSITIVE_ATTRIBUTE = "msds-memberoftransitive"


def _rdns(dn: str) -> list[tuple[str, str]]:
    """(attribute, value) of each RDN of `dn`, attribute lower-cased, escapes (RFC 4514) undone."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(dn):
        char = dn[i]
        if char == "\\" and i + 1 < len(dn):
            current.append(dn[i : i + 2])
            i += 2
            continue
        if char in ",;":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    rdns = []
    for part in parts:
        attribute, _, value = part.partition("=")
        rdns.append((attribute.strip().lower(), _unescape(value.strip())))
    return rdns


_ESCAPED_BYTES = re.compile(r"(?:\\[0-9A-Fa-f]{2})+")
_ESCAPED_CHAR = re.compile(r"\\([^0-9A-Fa-f])")


def _unescape(value: str) -> str:
    """Undo RFC 4514 escapes: `\\,` and hex pairs (`Caf\\C3\\A9` is `Café`, UTF-8)."""
    value = _ESCAPED_BYTES.sub(
        lambda m: bytes.fromhex(m.group(0).replace("\\", "")).decode("utf-8", "replace"), value
    )
    return _ESCAPED_CHAR.sub(r"\1", value)


def normalise_dn(dn: str) -> str:
    """A DN compared the way directories do: case and spaces around separators do not matter."""
    return ",".join(f"{attribute}={value.lower()}" for attribute, value in _rdns(dn))


def first_rdn_value(dn: str) -> str:
    """`GG-Medecins` for `CN=GG-Medecins,OU=Groupes,DC=chu,DC=fr` (escapes undone)."""
    return _rdns(dn)[0][1]


def group_is_dn(name: str) -> bool:
    """True when a `roles.groups` key is a whole DN rather than a CN."""
    return "=" in name


class RoleMapper:
    """A site's `roles:` compiled once: the role codes of each record."""

    def __init__(self, rule: RoleMapping) -> None:
        self.attribute = TRANSITIVE_ATTRIBUTE if rule.nested else rule.source.lower()
        self._by_dn = {normalise_dn(k): role for k, role in rule.groups.items() if group_is_dn(k)}
        self._by_cn = {k.lower(): role for k, role in rule.groups.items() if not group_is_dn(k)}

    def roles(self, record: SourceRecord) -> str:
        """The record's roles: sorted, comma-separated codes ("" when none)."""
        found: set[str] = set()
        for dn in record.attributes.get(self.attribute, ()):
            role = self._by_dn.get(normalise_dn(dn)) if self._by_dn else None
            if role is None:
                role = self._by_cn.get(first_rdn_value(dn).lower())
            if role:
                found.add(role)
        return ",".join(sorted(found))
