"""National identifiers of French health professionals, validated before anyone trusts them.

- RPPS (Répertoire partagé des professionnels de santé): 11 digits, the last one a Luhn check key.
- ADELI (the older register, still used for some professions): 9 digits, the last one a Luhn key.
- idNat_PS, as carried by CPS cards and Pro Santé Connect: "8" + RPPS, or "0" + ADELI.

A value that fails its checksum is never used to match anyone: a typo must not merge two people.
"""

from __future__ import annotations


def luhn_valid(digits: str) -> bool:
    """True if `digits` (only digits) passes the Luhn check (ISO/IEC 7812-1)."""
    if not digits.isdigit():
        return False
    return luhn_sum(digits) % 10 == 0


def luhn_sum(digits: str) -> int:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total


def luhn_key(body: str) -> str:
    """The check digit to append to `body` so that the whole passes the Luhn check."""
    return str((10 - luhn_sum(body + "0") % 10) % 10)


def normalize_rpps(value: str | None) -> str | None:
    """The 11-digit RPPS in `value`, or None if it is absent or invalid.

    Accepts the bare RPPS or the idNat_PS form ("8" + RPPS). Spaces and separators are ignored.
    """
    if not value:
        return None
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) == 12 and digits.startswith("8"):
        digits = digits[1:]
    if len(digits) != 11 or not luhn_valid(digits):
        return None
    return digits


def normalize_adeli(value: str | None) -> str | None:
    """The 9-digit ADELI number in `value` (bare, or "0" + ADELI), or None if absent or invalid."""
    if not value:
        return None
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) == 10 and digits.startswith("0"):
        digits = digits[1:]
    if len(digits) != 9 or not luhn_valid(digits):
        return None
    return digits


def idnat_ps(rpps: str | None = None, adeli: str | None = None) -> str | None:
    """The national identifier idNat_PS: "8" + RPPS when there is one, else "0" + ADELI."""
    if rpps:
        return "8" + rpps
    if adeli:
        return "0" + adeli
    return None


def is_valid_finess(value: str) -> bool:
    """FINESS numbers are 9 characters: a 2-character department (digits, or 2A / 2B) then 7 digits."""
    return len(value) == 9 and (value[:2].isdigit() or value[:2] in ("2A", "2B")) and value[2:].isdigit()
