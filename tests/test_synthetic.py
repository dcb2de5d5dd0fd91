"""The synthetic GHT generator and the demo's bundled sample GHT.

Benchmarks and server tests trust `directory_sync.synthetic` for two things: LDIF that a real directory
accepts, and a ground truth that says exactly which accounts are the same human. These tests pin both,
plus determinism (the same seed gives the same bytes) and the site mappings it writes. The last tests
check the hand-written demo files (deploy/demo, mappings/ch-*.yaml) the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from directory_sync import synthetic
from directory_sync.config import load_site_mapping
from directory_sync.identifiers import normalize_rpps

ROOT = Path(__file__).resolve().parent.parent
DEMO_SITES = ("ch-avignon", "ch-cavaillon", "ch-carpentras")
RPPS_ATTRIBUTE = {"a": "businessCategory", "b": "employeeType"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------------------------------
# A tiny, strict LDIF reader (independent of the connector under test elsewhere).


def parse_ldif(text: str) -> list[dict[str, list[str]]]:
    """Records of an RFC 2849 content file as {attribute: [values]} with the DN under "dn".

    Strict on purpose: every line is `attr: value` or `attr:: base64` (base64 must decode to UTF-8),
    plain values must be RFC 2849 safe strings, `version:` may only come before the first record.
    """
    lines: list[str] = []
    for raw in text.split("\n"):
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]  # folded line
        else:
            lines.append(raw)
    records: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    for line in lines:
        if line.startswith("#"):
            continue
        if not line:
            if current is not None:
                records.append(current)
            current = None
            continue
        name, sep, rest = line.partition(":")
        assert sep, f"not an LDIF line: {line!r}"
        if rest.startswith(":"):
            try:
                value = base64.b64decode(rest[1:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise AssertionError(f"bad base64 in {line!r}: {exc}") from None
        else:
            assert rest.startswith(" ") or rest == "", f"missing space after colon: {line!r}"
            value = rest[1:]
            assert value.isascii(), f"non-ASCII value not base64-encoded: {line!r}"
            assert not value.startswith((" ", ":", "<")), f"unsafe initial character: {line!r}"
            assert not value.endswith(" "), f"trailing space not base64-encoded: {line!r}"
        if current is None:
            if name == "version" and not records:
                assert value == "1"
                continue
            assert name == "dn", f"a record must start with dn:, got {line!r}"
            current = {"dn": [value]}
            continue
        current.setdefault(name, []).append(value)
    if current is not None:
        records.append(current)
    for record in records:
        assert "objectClass" in record, f"{record['dn']} has no objectClass"
    return records


def people_records(records: list[dict[str, list[str]]]) -> list[dict[str, list[str]]]:
    return [r for r in records if "inetOrgPerson" in r["objectClass"]]


def looked_up(value: str, transforms: list[Any]) -> tuple[str, str | None]:
    """Apply a mapping rule's simple transforms up to its `{map: NAME}`: (value as looked up, NAME)."""
    for transform in transforms:
        if isinstance(transform, dict):
            ((name, argument),) = transform.items()
            if name == "map":
                return value, argument
            if name == "prefix_strip":
                value = value.removeprefix(str(argument))
            continue
        if transform == "trim":
            value = " ".join(value.split())
        elif transform == "lower":
            value = value.lower()
        elif transform == "upper":
            value = value.upper()
        elif transform == "digits":
            value = "".join(c for c in value if c.isdigit())
    return value, None


def assert_value_maps_cover(mapping: dict[str, Any], records: list[dict[str, list[str]]]) -> int:
    """Every value that a `{map: ...}` rule of `mapping` looks up in `records` is in that map."""
    checked = 0
    for attribute, rule in mapping["attributes"].items():
        if isinstance(rule, str):
            continue
        for record in records:
            for raw in record.get(rule["from"], []):
                value, table = looked_up(raw, rule.get("transforms", []))
                if table is None or not value:
                    continue
                assert value in mapping["value_maps"][table], (
                    f"{attribute}: {value!r} ({record['dn'][0]}) missing from value map {table!r}"
                )
                checked += 1
    return checked


# --------------------------------------------------------------------------------------------------
# The generator


@pytest.fixture(scope="module")
def ght() -> synthetic.SyntheticGHT:
    return synthetic.generate(seed=11, sites=4, accounts=2000)


@pytest.fixture(scope="module")
def site_records(ght: synthetic.SyntheticGHT) -> dict[str, list[dict[str, list[str]]]]:
    return {spec.code: parse_ldif("".join(ght.site_ldif(spec.code))) for spec in ght.sites}


def all_ldif(ght: synthetic.SyntheticGHT) -> dict[str, str]:
    return {spec.code: "".join(ght.site_ldif(spec.code)) for spec in ght.sites}


def test_same_seed_gives_identical_ldif_and_truth() -> None:
    first = synthetic.generate(seed=5, sites=3, accounts=400)
    second = synthetic.generate(seed=5, sites=3, accounts=400)
    assert all_ldif(first) == all_ldif(second)
    assert first.truth == second.truth
    assert first.hard_cases == second.hard_cases


def test_different_seed_gives_different_ghts() -> None:
    first = synthetic.generate(seed=5, sites=3, accounts=400)
    second = synthetic.generate(seed=6, sites=3, accounts=400)
    assert all_ldif(first) != all_ldif(second)
    uuids = {u for links in first.truth.values() for _, u in links}
    assert uuids.isdisjoint(u for links in second.truth.values() for _, u in links)


@pytest.mark.parametrize(("sites", "accounts"), [(1, 0), (1, 1), (2, 7), (3, 300), (10, 1234)])
def test_account_total_is_exact(sites: int, accounts: int) -> None:
    ght = synthetic.generate(seed=2, sites=sites, accounts=accounts)
    assert len(ght.sites) == sites
    assert sum(len(ght.accounts(spec.code)) for spec in ght.sites) == accounts
    assert ght.account_count == accounts


def test_sites_are_distinct_and_well_formed() -> None:
    ght = synthetic.generate(seed=1, sites=25, accounts=100, hard_cases=False)
    codes = [spec.code for spec in ght.sites]
    assert len(set(codes)) == 25
    assert codes[:3] == ["ch-avignon", "ch-cavaillon", "ch-carpentras"]
    assert len({spec.finess for spec in ght.sites}) == 25
    for spec in ght.sites:
        assert re.fullmatch(r"ch-[a-z0-9-]+", spec.code)
        assert re.fullmatch(r"\d{9}", spec.finess)
        assert spec.suffix == f"dc={spec.code},dc=fr" and spec.domain == f"{spec.code}.fr"
        assert spec.dialect in synthetic.DIALECTS
    assert {spec.dialect for spec in ght.sites[:3]} == {"a", "b", "c"}


def test_ldif_is_valid_and_complete(
    ght: synthetic.SyntheticGHT, site_records: dict[str, list[dict[str, list[str]]]]
) -> None:
    for spec in ght.sites:
        records = site_records[spec.code]
        assert records[0]["dn"] == [spec.suffix]
        assert {"dcObject", "organization"} <= set(records[0]["objectClass"])
        assert records[1]["dn"] == [f"ou=people,{spec.suffix}"]
        people = people_records(records)
        assert len(people) == len(records) - 2 == len(ght.accounts(spec.code))
        dns = [r["dn"][0] for r in people]
        assert len(set(dns)) == len(dns)
        for record in people:
            assert record["dn"][0] == f"uid={record['uid'][0]},ou=people,{spec.suffix}"
            assert record["objectClass"] == ["top", "person", "organizationalPerson", "inetOrgPerson"]
            assert record["sn"][0].strip() and record["cn"][0].strip()  # required by the schema
            assert UUID.fullmatch(record["entryUUID"][0])
        logins = [r["uid"][0] for r in people]
        if spec.dialect == "a":
            assert all(re.fullmatch(r"[a-z]+\d*", login) for login in logins)
        elif spec.dialect == "b":
            assert all(re.fullmatch(r"[a-z-]+\.[a-z-]+\d*", login) for login in logins)
        else:
            assert all(re.fullmatch(r"[A-Z]{1,6}\d{1,6}", login) and len(login) == 7 for login in logins)


def test_write_ldif_matches_site_ldif(ght: synthetic.SyntheticGHT, tmp_path: Path) -> None:
    code = ght.sites[1].code
    count = ght.write_ldif(code, tmp_path / "site.ldif")
    assert count == len(ght.accounts(code))
    assert (tmp_path / "site.ldif").read_text(encoding="utf-8") == "".join(ght.site_ldif(code))


def test_truth_covers_every_account_exactly_once(
    ght: synthetic.SyntheticGHT, site_records: dict[str, list[dict[str, list[str]]]]
) -> None:
    in_truth = [(site, anchor) for links in ght.truth.values() for site, anchor in links]
    in_ldif = [
        (code, record["entryUUID"][0])
        for code, records in site_records.items()
        for record in people_records(records)
    ]
    assert len(in_truth) == len(set(in_truth))
    assert sorted(in_truth) == sorted(in_ldif)
    assert all(links for links in ght.truth.values())
    for spec in ght.sites:
        for account in ght.accounts(spec.code):
            assert (spec.code, account.entry_uuid) in ght.truth[account.person]
    # A person has at most one account per site.
    assert all(len({site for site, _ in links}) == len(links) for links in ght.truth.values())


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5])
def test_multi_site_share_is_roughly_as_asked(share: float) -> None:
    ght = synthetic.generate(seed=3, sites=5, accounts=8000, multi_site_share=share, hard_cases=False)
    multi = sum(1 for links in ght.truth.values() if len(links) > 1)
    assert multi / len(ght.truth) == pytest.approx(share, abs=0.03)


def test_one_site_has_nobody_at_two_sites() -> None:
    ght = synthetic.generate(seed=3, sites=1, accounts=500, multi_site_share=0.5)
    assert all(len(links) == 1 for links in ght.truth.values())


def test_rpps_valid_except_deliberate_typos(ght: synthetic.SyntheticGHT) -> None:
    typos = set(ght.hard_cases["rpps_typo"])
    assert typos
    rpps_of: dict[str, set[str]] = {}
    invalid_seen: Counter[str] = Counter()
    for spec in ght.sites:
        for account in ght.accounts(spec.code):
            if spec.dialect == "c":
                assert not {"businessCategory", "employeeType"} & set(account.attributes)
                continue
            values = account.attributes.get(RPPS_ATTRIBUTE[spec.dialect], [])
            for value in values:
                assert value.isdigit() and len(value) == (11 if spec.dialect == "a" else 12)
                if spec.dialect == "b":
                    assert value.startswith("8")  # idNat_PS
                rpps = normalize_rpps(value)
                if rpps is None:
                    assert account.person in typos, f"{account.dn}: unexpected invalid RPPS {value}"
                    invalid_seen[account.person] += 1
                else:
                    rpps_of.setdefault(account.person, set()).add(rpps)
    assert set(invalid_seen) == typos and set(invalid_seen.values()) == {1}
    # One RPPS per person, and no two people share one.
    assert all(len(values) == 1 for values in rpps_of.values())
    owners = Counter(next(iter(values)) for values in rpps_of.values())
    assert max(owners.values()) == 1


def test_rpps_only_for_professions_that_have_one(ght: synthetic.SyntheticGHT) -> None:
    for spec in ght.sites:
        if spec.dialect == "c":
            continue
        table = synthetic.job_title_map(spec.dialect)
        for account in ght.accounts(spec.code):
            title = " ".join(account.attributes["title"][0].split())
            if not title:
                continue
            code = table[title.lower() if spec.dialect == "a" else title.upper()]
            if RPPS_ATTRIBUTE[spec.dialect] in account.attributes:
                assert code in ("10", "21", "50", "70")


def test_missing_rpps_share_is_configurable() -> None:
    none = synthetic.generate(seed=4, sites=2, accounts=3000, missing_rpps_share=0.0)
    assert none.hard_cases["rpps_missing"] == []
    many = synthetic.generate(seed=4, sites=2, accounts=3000, missing_rpps_share=0.5)
    assert len(many.hard_cases["rpps_missing"]) > 50


def test_hard_cases_are_made_as_described(ght: synthetic.SyntheticGHT) -> None:
    expected = synthetic.DEFAULT_HARD_CASES
    for kind, count in expected.items():
        size = 2 * count if kind.startswith("homonym") else count
        assert len(ght.hard_cases[kind]) == size, kind
    by_person: dict[str, list[synthetic.SyntheticAccount]] = {}
    dialect = {spec.code: spec.dialect for spec in ght.sites}
    for spec in ght.sites:
        for account in ght.accounts(spec.code):
            by_person.setdefault(account.person, []).append(account)

    def names(key: str) -> tuple[str, str]:
        account = by_person[key][0]
        return (" ".join(account.attributes["cn"][0].split()), account.attributes["title"][0])

    for kind in ("homonym_same_site", "homonym_cross_site"):
        keys = ght.hard_cases[kind]
        for first, second in zip(keys[::2], keys[1::2], strict=True):
            assert first != second
            assert names(first)[0] == names(second)[0]
            sites_a = {a.site for a in by_person[first]}
            sites_b = {a.site for a in by_person[second]}
            assert (sites_a == sites_b) if kind == "homonym_same_site" else sites_a.isdisjoint(sites_b)
    for key in ght.hard_cases["nurse_two_sites"]:
        accounts = by_person[key]
        assert len(accounts) == 2
        assert {dialect[a.site] for a in accounts} & {"c"} and len({dialect[a.site] for a in accounts}) == 2
        assert len({a.attributes["uid"][0] for a in accounts}) == 2
    for key in ght.hard_cases["odd_whitespace"]:
        values = [v for a in by_person[key] for vs in a.attributes.values() for v in vs]
        assert any(v != v.strip() or "  " in v for v in values)
    for key in ght.hard_cases["empty_values"]:
        assert any(a.attributes["title"] == [" "] and "givenName" not in a.attributes for a in by_person[key])
    # Each person is in at most one deliberate case.
    involved = [key for kind in expected for key in ght.hard_cases[kind]]
    assert len(involved) == len(set(involved))


def test_hard_cases_can_be_turned_off_or_counted() -> None:
    off = synthetic.generate(seed=8, sites=3, accounts=600, hard_cases=False, missing_rpps_share=0)
    assert all(not keys for keys in off.hard_cases.values())
    some = synthetic.generate(seed=8, sites=3, accounts=600, hard_cases={"rpps_typo": 1, "odd_whitespace": 7})
    assert len(some.hard_cases["rpps_typo"]) == 1 and len(some.hard_cases["odd_whitespace"]) == 7
    assert some.hard_cases["homonym_same_site"] == []
    with pytest.raises(ValueError):
        synthetic.generate(hard_cases={"nonsense": 1})


def test_the_same_person_is_spelt_per_dialect() -> None:
    ght = synthetic.generate(seed=9, sites=3, accounts=3000)
    by_person: dict[str, dict[str, synthetic.SyntheticAccount]] = {}
    for spec in ght.sites:
        for account in ght.accounts(spec.code):
            by_person.setdefault(account.person, {})[spec.dialect] = account
    seen = 0
    for accounts in by_person.values():
        if (
            "a" in accounts
            and "c" in accounts
            and accounts["a"].person not in ght.hard_cases["odd_whitespace"]
        ):
            a, c = accounts["a"].attributes, accounts["c"].attributes
            if "givenName" not in a or "givenName" not in c:
                continue
            assert c["sn"][0] == c["sn"][0].upper() and c["sn"][0].isascii()
            assert c["cn"][0] == a["cn"][0]  # cn keeps the accents everywhere
            assert a["uid"][0] != c["uid"][0]
            seen += 1
    assert seen > 10


def test_mapping_yaml_parses_and_covers_every_local_value(
    ght: synthetic.SyntheticGHT, site_records: dict[str, list[dict[str, list[str]]]], tmp_path: Path
) -> None:
    for spec in ght.sites:
        connection = {
            "kind": "ldap",
            "url": f"ldap://127.0.0.1:3890/{spec.code}",
            "bind_dn": f"cn=admin,{spec.suffix}",
            "bind_password": {"env": "SYNTH_PASSWORD"},
            "base_dn": f"ou=people,{spec.suffix}",
            "tls": {"start_tls": False},
        }
        text = ght.mapping_yaml(spec.code, connection)
        data = yaml.safe_load(text)
        assert data["site"] == {"code": spec.code, "name": spec.name, "finess": spec.finess}
        assert data["connection"] == connection
        assert {"login", "family_name", "profession"} <= set(data["attributes"])
        assert set(data["value_maps"]["job_titles"]) == set(synthetic.job_title_map(spec.dialect))
        assert assert_value_maps_cover(data, people_records(site_records[spec.code])) > 0
        # The service's own loader accepts it, G15 codes included.
        path = tmp_path / f"{spec.code}.yaml"
        path.write_text(text, encoding="utf-8")
        g15 = yaml.safe_load((ROOT / "mappings" / "codes" / "g15.yaml").read_text(encoding="utf-8"))
        loaded = load_site_mapping(path, known_professions=g15)
        assert loaded.code == spec.code


def test_write_mappings_writes_one_file_per_site(ght: synthetic.SyntheticGHT, tmp_path: Path) -> None:
    paths = ght.write_mappings(
        tmp_path / "mappings", lambda spec: {"kind": "ldif", "path": f"../{spec.code}.ldif"}
    )
    assert [p.name for p in paths] == [f"{spec.code}.yaml" for spec in ght.sites]
    assert yaml.safe_load(paths[0].read_text(encoding="utf-8"))["connection"]["kind"] == "ldif"


def test_job_title_tables_cover_g15_codes_only() -> None:
    g15 = yaml.safe_load((ROOT / "mappings" / "codes" / "g15.yaml").read_text(encoding="utf-8"))
    for dialect in synthetic.DIALECTS:
        codes = set(synthetic.job_title_map(dialect).values())
        assert codes - {""} <= set(g15)
        assert {"10", "21", "35", "50", "60", "70", "38", "98"} <= codes


def test_cli_writes_ldif_and_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert (
        synthetic.main(["--seed", "2", "--sites", "3", "--accounts", "250", "--out", str(out), "--mappings"])
        == 0
    )
    summary = capsys.readouterr().out.strip()
    assert "\n" not in summary and "250 accounts" in summary
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert truth["accounts"] == 250 and len(truth["sites"]) == 3
    assert sum(len(links) for links in truth["truth"].values()) == 250
    for site in truth["sites"]:
        records = parse_ldif((out / f"{site['code']}.ldif").read_text(encoding="utf-8"))
        assert len(people_records(records)) == site["accounts"]
        assert (out / "mappings" / f"{site['code']}.yaml").exists()


@pytest.mark.skipif(
    shutil.which("slapadd") is None and not Path("/usr/sbin/slapadd").exists(), reason="no slapadd"
)
def test_slapadd_accepts_every_site_with_full_schema_checks(
    ght: synthetic.SyntheticGHT, tmp_path: Path
) -> None:
    """Real OpenLDAP, core + cosine + inetorgperson only, without -q: every entry passes schema checks."""
    slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
    schema = Path("/etc/ldap/schema")
    if not (schema / "inetorgperson.schema").exists():
        pytest.skip("no OpenLDAP schema files")
    module_paths = [p for p in (Path("/usr/lib/ldap"), Path("/usr/lib/openldap")) if p.exists()]
    for spec in ght.sites:
        database = tmp_path / spec.code
        database.mkdir()
        ldif = tmp_path / f"{spec.code}.ldif"
        ght.write_ldif(spec.code, ldif)
        conf = tmp_path / f"{spec.code}.conf"
        conf.write_text(
            "".join(f"include {schema / name}.schema\n" for name in ("core", "cosine", "inetorgperson"))
            + (f"modulepath {module_paths[0]}\nmoduleload back_mdb\n" if module_paths else "")
            + f'database mdb\nsuffix "{spec.suffix}"\ndirectory {database}\nmaxsize 104857600\n'
        )
        result = subprocess.run(
            [slapadd, "-f", str(conf), "-l", str(ldif)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_large_ght_keeps_logins_unique(tmp_path: Path) -> None:
    """At benchmark scale common names collide a lot: every login stays unique within its site."""
    big = synthetic.generate(seed=1, sites=10, accounts=20_000)
    for spec in big.sites:
        accounts = big.accounts(spec.code)
        logins = [a.attributes["uid"][0] for a in accounts]
        assert len(set(logins)) == len(logins)
        mails = [m for a in accounts for m in a.attributes.get("mail", [])]
        assert len(set(mails)) == len(mails)
    assert sum(len(big.accounts(spec.code)) for spec in big.sites) == 20_000


# --------------------------------------------------------------------------------------------------
# The demo's bundled sample GHT


def demo_records(site: str) -> list[dict[str, list[str]]]:
    return people_records(parse_ldif((ROOT / "deploy" / "demo" / f"{site}.ldif").read_text(encoding="utf-8")))


@pytest.mark.parametrize("site", DEMO_SITES)
def test_demo_ldif_is_a_valid_export(site: str) -> None:
    text = (ROOT / "deploy" / "demo" / f"{site}.ldif").read_text(encoding="utf-8")
    assert text.startswith("#") and "\nversion: 1\n" in text and "FICTIONAL" in text.split("version:")[0]
    records = demo_records(site)
    assert 12 <= len(records) <= 20
    for record in records:
        assert record["dn"][0] == f"uid={record['uid'][0]},ou=people,dc={site},dc=fr"
        assert UUID.fullmatch(record["entryUUID"][0])
    assert len({r["entryUUID"][0] for r in records}) == len(records)
    assert len({r["uid"][0] for r in records}) == len(records)


@pytest.mark.parametrize("site", DEMO_SITES)
def test_demo_mapping_loads_and_covers_its_export(site: str) -> None:
    path = ROOT / "mappings" / f"{site}.yaml"
    g15 = yaml.safe_load((ROOT / "mappings" / "codes" / "g15.yaml").read_text(encoding="utf-8"))
    loaded = load_site_mapping(path, known_professions=g15)
    assert loaded.site.finess.startswith("84")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["connection"] == {
        "kind": "ldif",
        "path": f"../deploy/demo/{site}.ldif",
        "anchor": "entryUUID",
    }
    assert assert_value_maps_cover(data, demo_records(site)) >= 12


def test_demo_cast() -> None:
    """The stories the demo tells: one nurse at two sites, one doctor at three, no shared RPPS."""
    records = {site: demo_records(site) for site in DEMO_SITES}
    cn = {site: {r["cn"][0]: r for r in rs} for site, rs in records.items()}
    nurse_a, nurse_c = (
        cn["ch-avignon"]["Marie-Hélène Bérenguier"],
        cn["ch-carpentras"]["Marie-Hélène Bérenguier"],
    )
    assert nurse_a["givenName"] == ["Marie-Hélène"] and nurse_c["givenName"] == ["MARIE HELENE"]
    assert nurse_a["uid"] != nurse_c["uid"]
    doctor = [cn[site]["Jean-Baptiste Roumanille"] for site in DEMO_SITES]
    assert len({d["uid"][0] for d in doctor}) == 3
    rpps_a = normalize_rpps(doctor[0]["businessCategory"][0])
    assert rpps_a and rpps_a == normalize_rpps(doctor[1]["employeeType"][0])
    assert rpps_a == normalize_rpps(doctor[2]["employeeType"][0])  # "RPPS nnn" at Carpentras
    # Every RPPS present is valid and belongs to one person only (the doctor is one person at 3 sites).
    owners: dict[str, set[str]] = {}
    for site in DEMO_SITES:
        attribute = "businessCategory" if site == "ch-avignon" else "employeeType"
        for record in records[site]:
            for value in record.get(attribute, []):
                rpps = normalize_rpps(value)
                assert rpps, f"{record['dn'][0]}: invalid RPPS {value}"
                owners.setdefault(rpps, set()).add(record["cn"][0])
    assert all(len(names) == 1 for names in owners.values())
    assert len(owners) >= 6
    text = "".join(r["cn"][0] for rs in records.values() for r in rs)
    for needle in ("Hélène", "Jérôme", "Françoise", "Martin-Roux", "N'Diaye", "D'Amico", "de La Tour"):
        assert needle in text
