"""A clinician in a real browser (Chromium): sign in at one application, pick a site, reach a second
application without typing the password again, log out, and the second application is told.

The gateway is the real `ght gateway serve` process; both applications are the sample relying party.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from directory_sync.store import open_store
from sso_gateway.sample_app import create_sample_app
from tests.servers.browser import ThreadedServer, chromium
from tests.servers.gateway import PASSWORD, REPO, GatewayProcess, ght, seed_directory, write_config
from tests.servers.slapd import free_port


@dataclass
class Stage:
    gateway: GatewayProcess
    apps: dict[str, ThreadedServer]
    browser: Any


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("browser")
    database = f"sqlite:///{tmp}/ght.db"
    seed_directory(open_store(database))
    port = free_port()
    config = write_config(tmp, database, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings")
    done = ght("people", "set-password", "--password-stdin", "hlefevre", config=config, stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    gateway = GatewayProcess(config, port=port)
    apps: dict[str, ThreadedServer] = {}
    try:
        for name in ("dpi", "pharmacie"):
            app_port = free_port()
            url = f"http://127.0.0.1:{app_port}"
            done = ght(
                "clients", "add", name, "--redirect-uri", f"{url}/callback", "--post-logout-redirect-uri",
                f"{url}/", "--backchannel-logout-uri", f"{url}/backchannel-logout", "--json", config=config,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            import json

            registered = json.loads(done.stdout)
            sample = create_sample_app(
                issuer=gateway.url,
                client_id=registered["client_id"],
                client_secret=registered["client_secret"],
                base_url=url,
                title=name.upper(),
            )
            apps[name] = ThreadedServer(sample, app_port)
        with chromium() as browser:
            yield Stage(gateway, apps, browser)
    finally:
        for app in apps.values():
            app.stop()
        gateway.stop()


def test_sign_in_pick_a_site_single_sign_on_and_back_channel_logout(stage: Stage) -> None:
    context = stage.browser.new_context(locale="fr-FR")
    page = context.new_page()
    dpi, pharmacie = stage.apps["dpi"], stage.apps["pharmacie"]

    page.goto(dpi.url)
    page.click("#login")
    page.wait_for_url(f"{stage.gateway.url}/authorize*")  # the sign-in form, shown at /authorize
    assert page.locator("h1").inner_text() == "Connectez-vous"
    page.get_by_label("Identifiant").fill("ch-avignon\\hlefevre")
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()

    page.wait_for_url(f"{stage.gateway.url}/select-site*")
    page.get_by_label("CH de Cavaillon", exact=False).check()
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url(f"{dpi.url}/")
    assert page.locator("#site").inner_text() == "ch-cavaillon"
    assert "Lefèvre" in page.locator("#who").inner_text()
    assert "rpps" in page.content() and "affiliations" in page.content()

    # A second application: signed in by the gateway's session, no password asked.
    page.goto(pharmacie.url)
    page.click("#login")
    page.wait_for_url(f"{pharmacie.url}/")
    assert page.locator("#site").inner_text() == "ch-cavaillon"

    # Log out from the first application: the gateway ends the session and tells both applications.
    page.goto(dpi.url)
    page.click("#logout")
    page.wait_for_url(f"{dpi.url}/")
    assert page.locator("#login").is_visible()
    deadline = time.monotonic() + 15
    while not pharmacie.get("/backchannel-logouts") and time.monotonic() < deadline:
        time.sleep(0.2)
    told = pharmacie.get("/backchannel-logouts")
    assert told and told[0]["ended"] == 1, "the second application was not told of the logout"
    page.goto(pharmacie.url)
    assert page.locator("#login").is_visible()  # the next person at the workstation is not signed in
    # And the gateway asks for the password again.
    page.click("#login")
    page.wait_for_url(f"{stage.gateway.url}/authorize*")  # the sign-in form, shown at /authorize
    context.close()


def test_the_sign_in_page_in_english_without_javascript(stage: Stage) -> None:
    context = stage.browser.new_context(locale="en-GB", java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{stage.gateway.url}/login")
    assert page.locator("html").get_attribute("lang") == "en"
    page.get_by_label("Login").fill("hlefevre")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong login or password."
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert "Where are you working today?" in page.content()
    page.screenshot(path=str(stage.gateway.config.parent / "site-picker.png"))
    context.close()
