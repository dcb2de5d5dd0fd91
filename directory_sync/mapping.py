"""Mappings: turn a site's raw `SourceRecord` into the territorial vocabulary.

A mapping knows people and nothing of LDAP (Keycloak's mappers, midPoint's inbound mappings). Each
territorial attribute is computed by a small compiled pipeline: read one source attribute, apply the
site's transforms in order. Values that cannot be trusted (an RPPS failing its checksum, a profession
code outside G15, a local job title missing from the site's table) are dropped with a warning, never
guessed.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import TERRITORIAL_ATTRIBUTES, SiteMapping, Transform
from .identifiers import normalize_adeli, normalize_rpps
from .records import SourceRecord
from .roles import RoleMapper

Step = Callable[[str], str]

# Particles of French family names kept in lower case ("de La Fontaine", "du Bellay"). "D'" is not
# among them: "D'Amico", "D'Angelo" are written with a capital.
_PARTICLES = ("de ", "du ", "des ")


def _trim(value: str) -> str:
    return " ".join(value.split())


def name_case(value: str) -> str:
    """`MARIE-HÉLÈNE` -> `Marie-Hélène`; `n'diaye` -> `N'Diaye`; `de la fontaine` -> `de La Fontaine`."""
    lowered = value.lower()
    out: list[str] = []
    capitalize = True
    for i, char in enumerate(lowered):
        if capitalize and char.isalpha():
            rest = lowered[i:]
            is_particle = any(rest.startswith(p) and len(rest) > len(p) for p in _PARTICLES)
            out.append(char if is_particle else char.upper())
            capitalize = False
        else:
            out.append(char)
        if char in " -'’":
            capitalize = True
    return "".join(out)


def strip_accents(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# Letters that carry no combining accent to strip (Œ is not O + accent).
_LIGATURES = str.maketrans(
    {
        "Œ": "OE",
        "œ": "oe",
        "Æ": "AE",
        "æ": "ae",
        "Ø": "O",
        "ø": "o",
        "ß": "ss",
        "Ł": "L",
        "ł": "l",
        "Đ": "D",
        "đ": "d",
        "Þ": "TH",
        "þ": "th",
        "’": "'",
    }
)


def to_ascii(value: str) -> str:
    """`Œdipe Ørsted-Ça` -> `OEdipe Orsted-Ca`: accents stripped, ligatures spelt out, the rest dropped."""
    if value.isascii():
        return value
    return strip_accents(value.translate(_LIGATURES)).encode("ascii", "ignore").decode("ascii")


def _printable(value: str) -> str:
    """Drop control and format characters (NUL breaks PostgreSQL, others break terminals and logs);
    turn any Unicode space into a plain space."""
    kept = []
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        kept.append(" " if category.startswith("Z") else char)
    return " ".join("".join(kept).split()) if kept else ""


_SIMPLE_STEPS: dict[str, Step] = {
    "trim": _trim,
    "upper": str.upper,
    "lower": str.lower,
    "name_case": name_case,
    "ascii": to_ascii,
    "digits": lambda v: "".join(c for c in v if c.isdigit()),
}


@dataclass(frozen=True, slots=True)
class MappedAccount:
    """One source account in the territorial vocabulary: what reconciliation works on."""

    site: str
    anchor: str
    dn: str
    enabled: bool
    values: Mapping[str, str]
    deleted: bool = False
    warnings: tuple[str, ...] = ()
    fingerprint: str = field(default="", compare=False)
    facts: Mapping[str, str] = field(default_factory=dict)  # the source's facts (AD account state)

    def get(self, name: str) -> str | None:
        return self.values.get(name) or None

    @property
    def login(self) -> str:
        return self.values.get("login", "")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Sent from the reading worker in batches: rebuilt by the constructor, not by the dataclass's
        # generic slots state (which looks the fields up again for every account).
        return MappedAccount, (
            self.site,
            self.anchor,
            self.dn,
            self.enabled,
            self.values,
            self.deleted,
            self.warnings,
            self.fingerprint,
            self.facts,
        )


class _Unmapped(Exception):
    def __init__(self, value: str, table: str) -> None:
        self.value, self.table = value, table


class Mapper:
    """A site's mapping compiled once, applied to every record of the site."""

    def __init__(self, mapping: SiteMapping, professions: Mapping[str, str] | None = None) -> None:
        self.site = mapping.code
        self.professions = professions or {}
        self._rules = [
            (name, rule.source.lower(), [self._compile(t, mapping.value_maps) for t in rule.transforms])
            for name, rule in mapping.attributes.items()
        ]
        # Keep a stable order of attributes for fingerprints.
        self._rules.sort(key=lambda r: TERRITORIAL_ATTRIBUTES.index(r[0]))
        self._roles = RoleMapper(mapping.roles) if mapping.roles else None

    @staticmethod
    def _compile(transform: Transform, value_maps: Mapping[str, Mapping[str, str]]) -> Step:
        argument = transform.argument or ""
        if transform.name in _SIMPLE_STEPS:
            return _SIMPLE_STEPS[transform.name]
        if transform.name == "default":
            return lambda v: v or argument
        if transform.name == "prefix_strip":
            return lambda v: v.removeprefix(argument)
        table = value_maps[argument]
        fallback = table.get("*")

        def lookup(v: str) -> str:
            if not v:
                return v
            found = table.get(v, fallback)
            if found is None:
                raise _Unmapped(v, argument)
            return found

        return lookup

    def map(self, record: SourceRecord) -> MappedAccount:
        values: dict[str, str] = {}
        warnings: list[str] = []
        for name, source, steps in self._rules:
            raw = record.attributes.get(source)
            value = raw[0] if raw else ""
            try:
                for step in steps:
                    value = step(value)
            except _Unmapped as exc:
                warnings.append(f"{name}: {exc.value!r} is not in value map {exc.table!r}")
                value = ""
            if value and not value.isprintable():
                value = _printable(value)
            if value:
                values[name] = value
        self._check_identifiers(values, warnings)
        if self._roles is not None and (roles := self._roles.roles(record)):
            values["roles"] = roles
        # Facts only count when the source gives some: other sites' fingerprints stay as they were.
        signed = [record.dn, record.enabled, values, *([dict(record.facts)] if record.facts else [])]
        fingerprint = hashlib.blake2b(
            json.dumps(signed, ensure_ascii=False, sort_keys=True).encode(),
            digest_size=16,
        ).hexdigest()
        return MappedAccount(
            site=self.site,
            anchor=record.anchor,
            dn=record.dn,
            enabled=record.enabled and not record.deleted,
            values=values,
            deleted=record.deleted,
            warnings=tuple(warnings),
            fingerprint=fingerprint,
            facts=record.facts,
        )

    def _check_identifiers(self, values: dict[str, str], warnings: list[str]) -> None:
        if "rpps" in values:
            rpps = normalize_rpps(values["rpps"])
            if rpps is None:
                warnings.append(
                    f"rpps: {values['rpps']!r} is not a valid RPPS (11 digits, Luhn key); ignored"
                )
                del values["rpps"]
            else:
                values["rpps"] = rpps
        if "adeli" in values:
            adeli = normalize_adeli(values["adeli"])
            if adeli is None:
                warnings.append(f"adeli: {values['adeli']!r} is not a valid ADELI number; ignored")
                del values["adeli"]
            else:
                values["adeli"] = adeli
        if "profession" in values and self.professions and values["profession"] not in self.professions:
            warnings.append(f"profession: {values['profession']!r} is not a G15 code; ignored")
            del values["profession"]
