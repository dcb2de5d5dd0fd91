"""A mixed GHT, as most are: two hospitals on Active Directory (two Samba DCs, two domains) and one on
OpenLDAP, synchronised together by `ght` run as IT staff run it. A doctor works at all three.

First run: every site is read completely (no watermark yet). Then each hospital changes something,
and the default run reads only the changes (AD: uSNChanged; OpenLDAP: syncrepl). `--full` reads
everything again and finds nothing more to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap3
import pytest

from tests.ad_sites import ROLES, ad_connection, ght, password_file, write_ad_site
from tests.hospitals import ldap_connection, person, rpps, suffix_ldif, write_config, write_site
from tests.servers.samba import SambaDC
from tests.servers.slapd import SlapdServer, Suffix

DOCTOR_RPPS = rpps(61)
AVIGNON = "dc=ch-avignon,dc=fr"


@pytest.fixture(scope="module")
def domains(samba_factory: Callable[[str], SambaDC]) -> dict[str, Any]:
    """Two hospitals' domains, each with the doctor and a colleague."""
    nimes, ales = samba_factory("CHUNIMES.TEST"), samba_factory("CHALES.TEST")
    sites: dict[str, Any] = {}
    for code, dc, login, colleague in (
        ("chu-nimes", nimes, "jmartin", ("mhdupont", "Marie-Hélène", "Dupont")),
        ("ch-ales", ales, "jerome.martin", ("bmoreau", "Bruno", "Moreau")),
    ):
        ou = dc.add_ou("Personnel")
        doctor = dc.add_user(
            ou,
            login,
            "Jérôme",
            "Martin",
            title="Praticien hospitalier",
            employeeID=DOCTOR_RPPS,
            department="SAU",
        )
        other = dc.add_user(ou, colleague[0], colleague[1], colleague[2], title="Infirmière")
        groups = dc.add_ou("Groupes")
        dc.add_group(groups, "GG-Medecins", [dc.add_group(groups, "GG-Urgentistes", [doctor])])
        dc.add_group(groups, "GG-Cadres", [other])
        sites[code] = {"dc": dc, "ou": ou, "doctor": doctor, "other": other}
    return sites


def test_a_mixed_ght_is_synchronised_fully_then_by_deltas(
    tmp_path: Path, domains: dict[str, Any], slapd_factory: Any
) -> None:
    entries = [
        person(AVIGNON, "JMARTIN1", "MARTIN", "JEROME", rpps=DOCTOR_RPPS, title="Médecin", ou="SMUR"),
        person(AVIGNON, "andiaye", "N'Diaye", "Aminata", title="Aide-soignante"),
    ]
    server: SlapdServer = slapd_factory(
        [Suffix(AVIGNON, suffix_ldif(tmp_path / "avignon.ldif", AVIGNON, entries))]
    )
    secret = password_file(tmp_path, server.reader_password)
    write_site(tmp_path, "ch-avignon", ldap_connection(server, AVIGNON, "UNUSED", bind_password=secret))
    for code, site in domains.items():
        write_ad_site(
            tmp_path, code, ad_connection(site["dc"], site["ou"]), roles={"nested": True, "groups": ROLES}
        )
    write_config(tmp_path, ["chu-nimes", "ch-ales", "ch-avignon"], f"sqlite:///{tmp_path}/ght.db")

    tested = run_json(tmp_path, "sites", "test")
    assert [(s["site"], s["ok"], s["accounts"]) for s in tested] == [
        ("chu-nimes", True, 2),
        ("ch-ales", True, 2),
        ("ch-avignon", True, 2),
    ]

    first = sites_of(run_json(tmp_path, "sync", "run"))
    assert {code: (s["mode"], s["read"], s["status"]) for code, s in first.items()} == {
        "chu-nimes": ("full", 2, "succeeded"),
        "ch-ales": ("full", 2, "succeeded"),
        "ch-avignon": ("full", 2, "succeeded"),
    }
    (doctor,) = run_json(tmp_path, "people", "list", DOCTOR_RPPS)
    assert sorted((a["site"], a["active"]) for a in doctor["affiliations"]) == [
        ("ch-ales", True),
        ("ch-avignon", True),
        ("chu-nimes", True),
    ]
    shown = run_json(tmp_path, "people", "show", DOCTOR_RPPS)
    assert {a["site"]: a.get("roles") for a in shown["affiliations"]}["chu-nimes"] == "medecin,urgentiste"

    # Each hospital changes something: Nîmes disables the doctor, Alès moves them to another
    # department, Avignon deletes an account.
    nimes, ales = domains["chu-nimes"], domains["ch-ales"]
    nimes["dc"].set_disabled(nimes["doctor"], True)
    ales["dc"].replace(ales["doctor"], department="Réanimation")
    with ldap3.Connection(server.url, server.root_dn(AVIGNON), server.root_password, auto_bind=True) as conn:
        assert conn.delete(f"uid=andiaye,ou=people,{AVIGNON}")

    second = sites_of(run_json(tmp_path, "sync", "run"))
    assert {code: (s["mode"], s["read"], s["updated"], s["closed"]) for code, s in second.items()} == {
        "chu-nimes": ("delta", 1, 1, 0),
        "ch-ales": ("delta", 1, 1, 0),
        "ch-avignon": ("delta", 1, 0, 1),
    }
    shown = run_json(tmp_path, "people", "show", DOCTOR_RPPS)
    by_site = {a["site"]: a for a in shown["affiliations"]}
    assert (by_site["chu-nimes"]["active"], by_site["ch-ales"]["department"]) == (False, "Réanimation")
    assert shown["status"] == "active"  # still working at Alès and Avignon

    again = sites_of(run_json(tmp_path, "sync", "run", "--full"))
    assert {code: (s["mode"], s["created"], s["updated"], s["closed"]) for code, s in again.items()} == {
        "chu-nimes": ("full", 0, 0, 0),
        "ch-ales": ("full", 0, 0, 0),
        "ch-avignon": ("full", 0, 0, 0),
    }
    status = {r["site"]: r for r in run_json(tmp_path, "sync", "status")}
    assert {code: (r["mode"], r["mode_reason"]) for code, r in status.items()} == {
        code: ("full", "full read requested (--full)") for code in ("chu-nimes", "ch-ales", "ch-avignon")
    }


def run_json(directory: Path, *args: str) -> Any:
    done = ght(*args, "--json", cwd=directory)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sites_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["site"]: s for s in data["sites"]}
