"""Levels of assurance: from how a person signed in (`amr`, RFC 8176) to the level it reaches (`acr`).

The levels are configured (`[gateway] assurance_levels`, lowest first; the defaults are
`urn:ght:acr:low`, a password, and `urn:ght:acr:substantial`, two factors or a CPS / e-CPS through
Pro Sante Connect: see CLAIMS.md). A sign-in reaches the highest level one of whose `amr` sets it
covers, or whose `upstream_acr` the upstream provider reported; the first level is the floor.

What a sign-in must reach is the highest of: the level the client asks for (`acr_values`), the client's
registered minimum, and the network's floor: from the hospitals' internal networks
(`internal_networks`) the lowest level, from anywhere else `external_acr` (the PGSSI-S identification
rules accept a password alone only from inside the establishment). When the session is below it, the
gateway asks for the missing factor (step-up) rather than refusing.

Other modules (upstream providers) call `acr_for` with the upstream's `amr` and `acr`: keep its
signature stable.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address

from directory_sync.config import DEFAULT_ASSURANCE_LEVELS, AssuranceLevel, GatewaySettings

#: RFC 8176 method values, by kind of factor: two kinds make a multi-factor sign-in ("mfa").
FACTOR_KINDS: dict[str, str] = {
    "pwd": "knowledge",
    "pin": "knowledge",
    "kba": "knowledge",
    "otp": "possession",
    "hwk": "possession",
    "swk": "possession",
    "sc": "possession",
    "sms": "possession",
    "tel": "possession",
    "fpt": "inherence",
    "face": "inherence",
    "iris": "inherence",
    "retina": "inherence",
    "vbm": "inherence",
}


def _levels(settings: GatewaySettings | None) -> list[AssuranceLevel]:
    return list(settings.assurance_levels if settings is not None else DEFAULT_ASSURANCE_LEVELS)


def with_mfa(amr: Iterable[str]) -> list[str]:
    """`amr` with "mfa" added when it holds factors of two kinds (duplicates removed, order kept)."""
    values = list(dict.fromkeys(amr))
    kinds = {FACTOR_KINDS[v] for v in values if v in FACTOR_KINDS}
    if len(kinds) >= 2 and "mfa" not in values:
        values.append("mfa")
    return values


def acr_for(amr: list[str], upstream_acr: str | None = None, settings: GatewaySettings | None = None) -> str:
    """The level a sign-in with these methods reaches (an upstream's `acr` may raise it)."""
    levels = _levels(settings)
    methods = set(with_mfa(amr))
    reached = levels[0].acr
    for level in levels[1:]:
        by_methods = any(required and set(required) <= methods for required in level.amr)
        by_upstream = upstream_acr is not None and upstream_acr in level.upstream_acr
        if by_methods or by_upstream:
            reached = level.acr
    return reached


def rank(acr: str | None, settings: GatewaySettings | None = None) -> int | None:
    """The position of a level (0: the lowest); None for a value the gateway does not know."""
    for position, level in enumerate(_levels(settings)):
        if level.acr == acr:
            return position
    return None


def known(settings: GatewaySettings | None = None) -> list[str]:
    """Every configured level, lowest first (`acr_values_supported`)."""
    return [level.acr for level in _levels(settings)]


def satisfies(acr: str | None, required: str | None, settings: GatewaySettings | None = None) -> bool:
    """Does a session at level `acr` meet `required`? (Nothing required: yes; unknown level: no.)"""
    if required is None:
        return True
    have, need = rank(acr, settings), rank(required, settings)
    return have is not None and need is not None and have >= need


def is_internal(address: str, settings: GatewaySettings) -> bool:
    """Is the client address inside one of the hospitals' internal networks?"""
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.internal_networks)


def requested(acr_values: str | None, settings: GatewaySettings | None = None) -> str | None:
    """The level asked for by `acr_values` (space-separated, by preference): the RP accepts any of
    them, so the lowest known one is needed. Unknown values are ignored (OIDC Core 3.1.2.1)."""
    ranks = [r for v in (acr_values or "").split() if (r := rank(v, settings)) is not None]
    return _levels(settings)[min(ranks)].acr if ranks else None


def required_acr(
    settings: GatewaySettings,
    *,
    address: str,
    client_minimum: str | None = None,
    acr_values: str | None = None,
) -> str:
    """The level a sign-in must reach for this client, this request and this network."""
    floor = settings.assurance_levels[0].acr if is_internal(address, settings) else settings.external_acr
    candidates = [floor, requested(acr_values, settings)]
    if client_minimum is not None:  # a level no longer configured: the highest (fail closed)
        known_minimum = rank(client_minimum, settings) is not None
        candidates.append(client_minimum if known_minimum else settings.assurance_levels[-1].acr)
    return max((c for c in candidates if c is not None), key=lambda c: rank(c, settings) or 0)


def check_level(acr: str, settings: GatewaySettings) -> str:
    """`acr` if it is a configured level (a client's minimum); raises ClientError naming the known ones."""
    from .errors import ClientError

    if rank(acr, settings) is None:
        raise ClientError(f"unknown level {acr!r}; the configured levels are: {', '.join(known(settings))}")
    return acr
