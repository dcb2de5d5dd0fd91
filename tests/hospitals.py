"""Small hand-made hospitals for tests: entries, site mapping files and a ght.toml.

Every hospital here stores its staff the same simple way (RPPS in businessCategory, local job title
in title); the synthetic generator (`directory_sync.synthetic`) covers the variety of real sites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from directory_sync.identifiers import luhn_key

JOB_TITLES = {
    "infirmière": "60",
    "infirmier": "60",
    "praticien hospitalier": "10",
    "médecin": "10",
    "aide-soignante": "35",
    "sage-femme": "50",
    "secrétaire médicale": "",
}

ATTRIBUTES: dict[str, Any] = {
    "login": "uid",
    "family_name": {"from": "sn", "transforms": ["trim", "name_case"]},
    "given_name": {"from": "givenName", "transforms": ["trim", "name_case"]},
    "email": {"from": "mail", "transforms": ["trim", "lower"]},
    "rpps": {"from": "businessCategory", "transforms": ["digits"]},
    "profession": {"from": "title", "transforms": ["trim", "lower", {"map": "job_titles"}]},
    "title": {"from": "title", "transforms": ["trim"]},
    "department": "ou",
    "employee_id": "employeeNumber",
}


def rpps(n: int) -> str:
    """A valid RPPS number (Luhn key), distinct for each n."""
    body = f"1{n:09d}"
    return body + luhn_key(body)


def person(
    suffix: str,
    uid: str,
    sn: str,
    given: str,
    *,
    rpps: str | None = None,
    title: str = "Infirmière",
    ou: str = "Urgences",
    employee_number: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """An inetOrgPerson entry (dn, attributes) under ou=people of `suffix`."""
    attributes: dict[str, Any] = {
        "objectClass": ["top", "person", "organizationalPerson", "inetOrgPerson"],
        "uid": uid,
        "cn": f"{given} {sn}",
        "sn": sn,
        "givenName": given,
        "mail": f"{uid}@{suffix.split(',')[0].removeprefix('dc=')}.fr",
        "title": title,
        "ou": ou,
    }
    if rpps:
        attributes["businessCategory"] = rpps
    if employee_number:
        attributes["employeeNumber"] = employee_number
    return f"uid={uid},ou=people,{suffix}", attributes


def write_site(
    directory: Path,
    code: str,
    connection: dict[str, Any],
    *,
    name: str | None = None,
    finess: str = "840000087",
) -> Path:
    """Write mappings/<code>.yaml for a hospital stored the simple way."""
    (directory / "mappings" / "codes").mkdir(parents=True, exist_ok=True)
    g15 = directory / "mappings" / "codes" / "g15.yaml"
    if not g15.exists():
        g15.write_text(
            yaml.safe_dump(
                {"10": "Médecin", "35": "Aide-soignant", "50": "Sage-Femme", "60": "Infirmier"},
                allow_unicode=True,
            ),
            encoding="utf-8",
        )
    path = directory / "mappings" / f"{code}.yaml"
    document = {
        "site": {"name": name or f"Centre hospitalier {code}", "finess": finess},
        "connection": connection,
        "attributes": ATTRIBUTES,
        "value_maps": {"job_titles": JOB_TITLES},
    }
    path.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def write_config(directory: Path, sites: list[str], database_url: str) -> Path:
    path = directory / "ght.toml"
    quoted = ", ".join(f'"{s}"' for s in sites)
    path.write_text(f'database_url = "{database_url}"\nmappings_dir = "mappings"\nsites = [{quoted}]\n')
    return path


def ldap_connection(server: Any, suffix: str, password_env: str, **extra: Any) -> dict[str, Any]:
    """A `connection:` block for a test slapd, reading as the read-only sync account."""
    return {
        "kind": "ldap",
        "url": server.url,
        "bind_dn": server.reader_dn(suffix),
        "bind_password": {"env": password_env},
        "base_dn": f"ou=people,{suffix}",
        "page_size": 50,
        "timeout": 5,
        **extra,
    }


def suffix_ldif(path: Path, suffix: str, entries: list[tuple[str, dict[str, Any]]]) -> Path:
    """An LDIF file for `slapadd`: the suffix entry, ou=people, then `entries`."""
    from tests.servers.slapd import ldif_entry

    dc = suffix.split(",")[0].removeprefix("dc=")
    text = ldif_entry(suffix, {"objectClass": ["dcObject", "organization"], "dc": dc, "o": dc})
    text += ldif_entry(f"ou=people,{suffix}", {"objectClass": "organizationalUnit", "ou": "people"})
    text += "".join(ldif_entry(dn, attributes) for dn, attributes in entries)
    path.write_text(text, encoding="utf-8")
    return path


def record_messages(conn: Any) -> list[bytes]:
    """Make an ldap3 connection keep the octets of every message it receives, in the list returned."""
    messages: list[bytes] = []
    receiving = conn.strategy.receiving

    def record() -> list[bytes]:
        received: list[bytes] = receiving()
        messages.extend(received)
        return received

    conn.strategy.receiving = record
    return messages
