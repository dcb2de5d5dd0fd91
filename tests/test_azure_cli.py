"""`ght azure` as IT staff run it: a real process against the fake tenant, its output, exit codes and
one-line errors; and no secret anywhere (logs, output, database)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.logscan import record_cli
from tests.test_azure_support import SECRET, SECRET_ENV, World, azure_world, small_ght

ROOT = Path(__file__).resolve().parents[1]


def ght(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script's code (`cli.main`) in a fresh process, as IT staff run it."""
    done = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )
    record_cli(args, done.stderr)  # kept with the logs the suite scans for secrets
    return done


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with azure_world(tmp_path) as w:
        small_ght(w)
        yield w


def ok_json(world: World, *args: str) -> Any:
    done = ght("azure", *args, "--json", cwd=world.root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plan_push_status_and_a_second_plan_with_nothing_to_do(world: World) -> None:
    plan = ok_json(world, "plan")
    assert plan["summary"]["create"] == 7 and plan["summary"]["groups_created"] == 7
    create = next(a for a in plan["users"] if a["upn"] == "paul.garcia@ght-test.fr")
    assert create["attributes"]["jobTitle"] == "Infirmier" and "passwordProfile" not in create["attributes"]

    table = ght("azure", "plan", cwd=world.root)
    assert table.returncode == 0 and "paul.garcia@ght-test.fr" in table.stdout

    pushed = ok_json(world, "push")
    assert (pushed["created"], pushed["groups_created"], pushed["rejected"]) == (7, 7, [])
    world.assert_tenant_is_the_directory()

    status = ok_json(world, "status")
    assert status["last_push"]["status"] == "succeeded" and status["last_push"]["created"] == 7
    assert status["users"]["enabled"] == 7 and status["groups"] == 7

    again = ght("azure", "plan", cwd=world.root)
    assert "Entra ID is in step with the directory: nothing to push." in again.stdout
    human = ght("azure", "push", cwd=world.root)
    assert human.returncode == 0 and "Push to Entra ID" in human.stdout
    assert "last push" in ght("azure", "status", cwd=world.root).stdout


def test_changes_show_as_old_to_new_in_the_plan(world: World) -> None:
    ok_json(world, "push")
    world.hire("ch-orange", "mdupont", "Dupont", "Marie", title="Infirmière", ou="Gériatrie")
    world.sync()
    table = ght("azure", "plan", cwd=world.root)
    assert "jobTitle: Aide-soignante -> Infirmière" in table.stdout
    plan = ok_json(world, "plan")
    (update,) = plan["users"]
    assert update["changes"]["employeeType"] == {"from": "Aide-soignant", "to": "Infirmier"}
    assert {m["group"] for m in plan["memberships"]} == {"profession:35", "profession:60"}


def test_a_wrong_secret_exits_1_with_one_line_and_no_secret(world: World) -> None:
    done = ght("azure", "push", cwd=world.root, env={SECRET_ENV: "wrong-secret-value"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: Entra ID refused the token request (AADSTS7000215): the client secret in environment "
        f"variable {SECRET_ENV} is not valid for application '5b1e0c2a-ght-export': give the secret's value "
        "(not its id), and check that it has not been replaced"
    ]
    assert "wrong-secret-value" not in done.stderr + done.stdout


def test_without_an_azure_table_the_commands_say_so_and_exit_2(world: World) -> None:
    config = world.root / "ght.toml"
    config.write_text(config.read_text().split("[azure]")[0])
    done = ght("azure", "plan", cwd=world.root)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: ght.toml: azure: no [azure] table: set tenant_id, client_id, domain and client_secret "
        "or certificate"
    )


def test_the_deletion_threshold_exits_1_and_says_how_to_override(world: World) -> None:
    world.configure(deletion_threshold=0, deletion_grace_days=0)
    ok_json(world, "push")
    world.leave("ch-apt", "cdelafontaine")
    world.sync()
    plan = ght("azure", "plan", cwd=world.root)
    assert "a push stops unless given --allow-deletes 1" in plan.stderr
    done = ght("azure", "push", cwd=world.root)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the push would delete 1 users, more than the deletion threshold (0): nothing was changed. "
        "Review them with `ght azure plan`, then run `ght azure push --allow-deletes 1`"
    )
    assert ok_json(world, "push", "--allow-deletes", "1")["deleted"] == 1


def test_rejections_are_listed_and_exit_1(world: World) -> None:
    world.fake.add_user(
        accountEnabled=True,
        displayName="Other",
        mailNickname="x",
        userPrincipalName="paul.garcia@ght-test.fr",
    )
    done = ght("azure", "push", cwd=world.root)
    assert done.returncode == 1
    assert (
        "rejected: paul.garcia@ght-test.fr (create): Another object with the same value for property "
        "userPrincipalName already exists." in done.stderr
    )
    assert "error: 1 change(s) rejected by Graph, 0 left for the next push; everything else was applied" in (
        done.stderr
    )


def test_adopt_lists_what_it_links_and_what_it_leaves(world: World) -> None:
    world.fake.add_user(
        accountEnabled=True,
        displayName="P. Garcia",
        mailNickname="pg",
        userPrincipalName="paul.garcia@ght-test.fr",
    )
    world.fake.add_user(
        accountEnabled=True, displayName="Admin", mailNickname="adm", userPrincipalName="adm@ght-test.fr"
    )
    adopted = ok_json(world, "adopt", "--match", "upn")
    assert [a["upn"] for a in adopted["adopted"]] == ["paul.garcia@ght-test.fr"]
    assert [u["upn"] for u in adopted["unmatched"]] == ["adm@ght-test.fr"]
    wrong = ght("azure", "adopt", "--match", "name", cwd=world.root)
    assert wrong.returncode == 2 and "expected one of employeeId, upn, mail" in wrong.stderr


def test_no_secret_token_or_password_is_logged_printed_or_stored(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = world.client()
    token = client.tokens.token()
    world.fake.faults.inner_rate = 0.2  # retries are logged too
    world.push(client=client)
    client.close()
    printed = (
        ght("azure", "push", cwd=world.root).stdout + ght("azure", "status", "--json", cwd=world.root).stdout
    )
    passwords = world.fake.passwords
    assert len(passwords) >= 7
    secrets = [SECRET, token, *passwords]
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    with sqlite3.connect(world.root / "ght.db") as db:
        stored = "\n".join(
            repr(row)
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for row in db.execute(f'SELECT * FROM "{table}"')
        )
    for secret in secrets:
        assert secret not in logged and secret not in printed and secret not in stored
