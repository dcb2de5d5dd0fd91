"""`ght` as IT staff run it: a real process, its output, its exit code, its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hospitals import person, rpps, suffix_ldif, write_config, write_site
from tests.servers.logscan import record_cli

DOCTOR_RPPS = rpps(7)


def ght(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script's code (`cli.main`) in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})},
        timeout=120,
    )
    record_cli(args, done.stderr)  # kept with the logs the suite scans for secrets
    return done


def ok_json(*args: str, cwd: Path) -> Any:
    done = ght(*args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Two hospitals handing over LDIF exports, and a ght.toml on a SQLite file."""
    exports = {
        "ch-orange": [
            person("dc=ch-orange,dc=fr", "hlefevre", "LEFÈVRE", "Hélène", rpps=DOCTOR_RPPS, title="Médecin"),
            person("dc=ch-orange,dc=fr", "pgarcia", "Garcia", "Paul", title="Infirmier"),
        ],
        "ch-valreas": [
            person(
                "dc=ch-valreas,dc=fr",
                "helene.lefevre",
                "Lefevre",
                "Helene",
                rpps=DOCTOR_RPPS,
                title="Médecin",
            ),
        ],
    }
    for code, entries in exports.items():
        suffix = f"dc={code},dc=fr"
        export = suffix_ldif(tmp_path / f"{code}.ldif", suffix, entries)
        # slapadd would add entryUUID; an export carries it: use the DN as the anchor instead.
        write_site(tmp_path, code, {"kind": "ldif", "path": str(export), "anchor": "dn"})
    write_config(tmp_path, list(exports), "sqlite:///ght.db")
    return tmp_path


def test_sync_run_then_people_commands(workdir: Path) -> None:
    first = ok_json("sync", "run", cwd=workdir)
    assert [(s["site"], s["status"], s["created"], s["linked"]) for s in first["sites"]] == [
        ("ch-orange", "succeeded", 2, 0),
        ("ch-valreas", "succeeded", 0, 1),
    ]
    second = ok_json("sync", "run", cwd=workdir)
    assert [s["unchanged"] for s in second["sites"]] == [2, 1]

    (doctor,) = ok_json("people", "list", "helene", cwd=workdir)  # accents and case do not matter
    assert (doctor["family_name"], doctor["rpps"]) == ("Lefèvre", DOCTOR_RPPS)
    assert sorted(a["site"] for a in doctor["affiliations"]) == ["ch-orange", "ch-valreas"]
    assert ok_json("people", "show", "ch-valreas\\helene.lefevre", cwd=workdir)["id"] == doctor["id"]
    assert ok_json("people", "show", DOCTOR_RPPS, cwd=workdir)["id"] == doctor["id"]
    assert [p["given_name"] for p in ok_json("people", "list", "--site", "ch-orange", cwd=workdir)] == [
        "Paul",
        "Hélène",
    ]

    table = ght("people", "list", cwd=workdir)
    assert table.returncode == 0 and "Lefèvre Hélène" in table.stdout and "2 people" in table.stdout
    status = ok_json("sync", "status", cwd=workdir)
    assert [(r["site"], r["status"], r["unchanged"]) for r in status] == [
        ("ch-orange", "succeeded", 2),
        ("ch-valreas", "succeeded", 1),
    ]


def test_dry_run_prints_the_plan_and_changes_nothing(workdir: Path) -> None:
    plan = ok_json("sync", "run", "--dry-run", cwd=workdir)
    actions = plan["sites"][0]["actions"]
    assert {(a["action"], a["login"]) for a in actions} == {("create", "hlefevre"), ("create", "pgarcia")}
    assert all(a["reason"] for a in actions)
    assert ok_json("people", "list", cwd=workdir) == []


def test_sites_list_and_test(workdir: Path) -> None:
    sites = ok_json("sites", "list", cwd=workdir)
    assert [(s["site"], s["kind"], s["finess"]) for s in sites] == [
        ("ch-orange", "ldif", "840000087"),
        ("ch-valreas", "ldif", "840000087"),
    ]
    assert [(r["site"], r["ok"], r["accounts"]) for r in ok_json("sites", "test", cwd=workdir)] == [
        ("ch-orange", True, 2),
        ("ch-valreas", True, 1),
    ]


def test_a_failing_site_exits_1_with_one_line_naming_site_and_url(workdir: Path) -> None:
    (workdir / "ch-valreas.ldif").unlink()
    done = ght("sync", "run", cwd=workdir)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: site ch-valreas (file://{workdir}/ch-valreas.ldif): cannot open the export: "
        "No such file or directory"
    ]
    # The other site went on.
    assert len(ok_json("people", "list", cwd=workdir)) == 2
    tested = ght("sites", "test", "--json", cwd=workdir)
    assert tested.returncode == 1
    assert [r["ok"] for r in json.loads(tested.stdout)] == [True, False]


def test_a_wrong_config_exits_2_before_anything_runs(workdir: Path) -> None:
    mapping = workdir / "mappings" / "ch-valreas.yaml"
    mapping.write_text(mapping.read_text().replace("finess: '840000087'", "finess: '84'"))
    done = ght("sync", "run", cwd=workdir)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {mapping}:3: site.finess: "
        "expected a 9-character FINESS number (digits, or 2A/2B then 7 digits)"
    ]
    # Nothing ran, not even the valid site.
    assert ok_json("people", "list", cwd=workdir) == []


def test_unknown_person_is_one_line(workdir: Path) -> None:
    done = ght("people", "show", "nobody", cwd=workdir)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: no person matches 'nobody' "
        "(territorial id or login, RPPS, SITE\\login, source login or email)"
    )


def test_the_demo_runs_on_the_bundled_sample_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    first = ght("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Jean-Baptiste Roumanille RPPS 10100345718: ch-avignon" in first.stdout
    assert (tmp_path / "ght-demo.db").exists()
    second = ght("demo", cwd=tmp_path)
    assert second.returncode == 0
    env = {
        "GHT_CONFIG": str(Path(__file__).resolve().parents[1] / "deploy/demo/ght.toml"),
        "GHT_DATABASE_URL": "sqlite:///ght-demo.db",
    }
    runs = json.loads(ght("sync", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert [(r["site"], r["created"], r["linked"], r["updated"]) for r in runs] == [
        ("ch-avignon", 0, 0, 0),
        ("ch-cavaillon", 0, 0, 0),
        ("ch-carpentras", 0, 0, 0),
    ]
    assert sum(r["unchanged"] for r in runs) == 50
    doctor = json.loads(ght("people", "show", "10100345718", "--json", cwd=tmp_path, env=env).stdout)
    assert sorted(a["site"] for a in doctor["affiliations"] if a["active"]) == [
        "ch-avignon",
        "ch-carpentras",
        "ch-cavaillon",
    ]
    assert {a["profession"] for a in doctor["affiliations"]} == {"10"}


def test_review_audit_and_restore_commands_on_the_demo(tmp_path: Path) -> None:
    assert ght("demo", cwd=tmp_path).returncode == 0
    env = {
        "GHT_CONFIG": str(Path(__file__).resolve().parents[1] / "deploy/demo/ght.toml"),
        "GHT_DATABASE_URL": "sqlite:///ght-demo.db",
    }

    def run(*args: str) -> Any:
        done = ght(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if "--json" in args else done.stdout

    # The nurse at Carpentras (no RPPS, names in capitals without accents) waits for a human.
    (case,) = run("review", "list", "--json")
    assert (case["site"], case["login"]) == ("ch-carpentras", "BEREMA1")
    (candidate,) = case["candidates"]
    assert (candidate["name"], candidate["rule"]) == ("Marie-Hélène Bérenguier", "fuzzy_name")
    shown = run("review", "show", str(case["id"]))
    assert "Marie-Hélène Bérenguier" in shown and "same profession 60" in shown
    run("review", "link", str(case["id"]), candidate["person"], "--by", "jdupont", "--note", "HR confirmed")
    nurse = run("people", "show", "marie-helene.berenguier", "--json")
    assert sorted(a["site"] for a in nurse["affiliations"]) == ["ch-avignon", "ch-carpentras"]
    assert {a["linked_by"] for a in nurse["accounts"]} == {"created", "admin:jdupont"}
    assert nurse["provenance"]["given_name"]["site"] == "ch-avignon"  # the primary site's spelling
    assert run("review", "list", "--json") == []
    again = ght("review", "link", str(case["id"]), candidate["person"], cwd=tmp_path, env=env)
    assert again.returncode == 1 and "already decided (linked) by jdupont" in again.stderr

    events = run("audit", "--person", "marie-helene.berenguier", "--json")
    assert [e["action"] for e in events][-1] == "person.created"
    linked = next(e for e in events if e["action"] == "review.linked")
    assert (linked["actor"], linked["reason"]) == ("admin:jdupont", "HR confirmed")

    split = run("review", "split", "marie-helene.berenguier", "ch-carpentras\\BEREMA1", "--by", "jdupont")
    assert "now belongs to a new person" in split
    plan = run("sync", "plan", "--json")
    assert all(not s["actions"] for s in plan["sites"])  # the split is remembered: nothing to relink

    restored = ght("people", "restore", "marie-helene.berenguier", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "nothing to restore" in restored.stderr
