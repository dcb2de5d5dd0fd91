"""Mappings: a hospital's raw attributes become the territorial vocabulary."""

import pickle
from pathlib import Path

import pytest

from directory_sync.config import load_site_mapping
from directory_sync.mapping import MappedAccount, Mapper, name_case
from directory_sync.records import SourceRecord

RPPS = "10001234565"

SITE = """\
site:
  name: Centre hospitalier de Test
  finess: "840000087"
connection:
  kind: ldif
  path: export.ldif
attributes:
  login: {from: uid, transforms: [trim, lower]}
  family_name: {from: sn, transforms: [trim, name_case]}
  given_name: {from: givenName, transforms: [trim, name_case]}
  email: {from: mail, transforms: [trim, lower]}
  rpps: {from: employeeType, transforms: [digits]}
  profession: {from: title, transforms: [trim, lower, {map: job_titles}]}
  title: {from: title, transforms: [trim]}
  employee_id: {from: employeeNumber, transforms: [digits, {default: "unknown"}]}
value_maps:
  job_titles:
    "infirmière": "60"
    "praticien hospitalier": "10"
"""


@pytest.fixture
def mapper(tmp_path: Path) -> Mapper:
    path = tmp_path / "ch-test.yaml"
    path.write_text(SITE, encoding="utf-8")
    return Mapper(load_site_mapping(path), {"10": "Médecin", "60": "Infirmier"})


def record(**attributes: str) -> SourceRecord:
    return SourceRecord(
        site="ch-test",
        anchor="uuid-1",
        dn="uid=x,dc=test",
        attributes={k.lower(): [v] for k, v in attributes.items()},
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MARIE-HÉLÈNE", "Marie-Hélène"),
        ("marie helene", "Marie Helene"),
        ("n'diaye", "N'Diaye"),
        ("D'AMICO", "D'Amico"),
        ("de la fontaine", "de La Fontaine"),
        ("le goff", "Le Goff"),
        ("MARTIN-ROUX", "Martin-Roux"),
    ],
)
def test_name_case_handles_french_names(raw: str, expected: str) -> None:
    assert name_case(raw) == expected


def test_a_record_is_mapped_with_transforms_and_value_maps(mapper: Mapper) -> None:
    mapped = mapper.map(
        record(
            uid="  MDupont ",
            sn="DUPONT",
            givenName="marie-hélène",
            mail=" Marie.Dupont@CH-Test.fr",
            employeeType=f"RPPS {RPPS}",
            title=" Infirmière ",
            employeeNumber="A-0042",
        )
    )
    assert dict(mapped.values) == {
        "login": "mdupont",
        "family_name": "Dupont",
        "given_name": "Marie-Hélène",
        "email": "marie.dupont@ch-test.fr",
        "rpps": RPPS,
        "profession": "60",
        "title": "Infirmière",
        "employee_id": "0042",
    }
    assert mapped.warnings == ()


def test_an_rpps_with_a_typo_is_dropped_with_a_warning(mapper: Mapper) -> None:
    mapped = mapper.map(record(uid="x", sn="X", employeeType=RPPS[:-1] + "9"))
    assert "rpps" not in mapped.values
    assert any("not a valid RPPS" in w for w in mapped.warnings)


def test_a_job_title_missing_from_the_value_map_is_empty_with_a_warning(mapper: Mapper) -> None:
    mapped = mapper.map(record(uid="x", sn="X", title="Brancardier"))
    assert "profession" not in mapped.values
    assert mapped.values["title"] == "Brancardier"
    assert any("'brancardier' is not in value map 'job_titles'" in w for w in mapped.warnings)


def test_defaults_apply_to_empty_values(mapper: Mapper) -> None:
    assert mapper.map(record(uid="x", sn="X")).values["employee_id"] == "unknown"


def test_fingerprint_changes_with_any_mapped_value(mapper: Mapper) -> None:
    a = mapper.map(record(uid="x", sn="X", title="Infirmière"))
    b = mapper.map(record(uid="x", sn="X", title="Infirmière"))
    c = mapper.map(record(uid="x", sn="X", title="Praticien hospitalier"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_hostile_values_are_kept_as_data_without_control_characters(mapper: Mapper) -> None:
    nasty = "*)(uid=*))(|(uid=*\x00\x1b[31m" + "é" * 5000
    mapped = mapper.map(record(uid="x\u00a0y", sn=nasty))
    assert mapped.values["family_name"].startswith("*)(Uid=*))(|(uid=*[31mé")
    assert len(mapped.values["family_name"]) > 5000
    assert mapped.values["login"] == "x y"


def test_a_mapped_account_reaches_the_planner_whole_from_the_reading_worker() -> None:
    """Accounts cross from the reading process in pickled batches: every field survives, including
    those equality ignores (the fingerprint)."""
    account = MappedAccount(
        site="ch-apt",
        anchor="0b9c2a54-1f3e-4f0c-9d7e-2f5b8a1c3d4e",
        dn="uid=mberenguier,ou=people,dc=ch-apt,dc=fr",
        enabled=False,
        values={"login": "mberenguier", "family_name": "Bérenguier"},
        deleted=True,
        warnings=("title 'interne' has no profession",),
        fingerprint="3f2a",
        facts={"locked_out": "true"},
    )
    copy = pickle.loads(pickle.dumps([account], protocol=pickle.HIGHEST_PROTOCOL))[0]
    assert copy == account
    assert (copy.fingerprint, copy.facts, copy.warnings) == ("3f2a", {"locked_out": "true"}, account.warnings)
