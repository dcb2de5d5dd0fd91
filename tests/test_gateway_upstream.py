"""Signing in through upstream identity providers, in a real browser: Pro Sante Connect and Entra ID.

Both are the npm oidc-provider (tests/oidc_peers/upstream.mjs), one configured to look like Pro Sante
Connect (scope scope_all, acr eidas1, SubjectNameID / SubjectRefPro in userinfo), one like the group's
Entra ID tenant (oid, tid, employeeId in the ID token). Chromium goes from the sample application to the
real `ght gateway serve`, on to the upstream's login form, and back; the application checks the ID token
the gateway gives it. Tampered `iss`, a wrong `nonce`, a replayed `state` and a state from another browser
are refused; a PSC professional the directory does not know is refused, or, where the provider admits
external professionals, admitted to the configured applications only, with the limited role.
"""

from __future__ import annotations

import html
import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col

from directory_sync.config import GatewaySettings
from directory_sync.identifiers import luhn_key
from directory_sync.store import AuditEvent, Person, PersonStatus, Store, open_store
from directory_sync.store.models import ExportState, ExportStatus
from sso_gateway.models import GatewayClient, UpstreamIdentity
from sso_gateway.sample_app import create_sample_app
from sso_gateway.upstream import psc_national_ids
from tests.servers.browser import ThreadedServer, chromium
from tests.servers.gateway import (
    REPO,
    Clinician,
    GatewayProcess,
    form_fields,
    ght,
    pkce_pair,
    seed_directory,
    write_config,
)
from tests.servers.logscan import SECRETS
from tests.servers.slapd import free_port
from tests.servers.upstream_idp import UpstreamIdp

TENANT = "5f1c0a5e-1b2c-4d3e-8f90-0a1b2c3d4e5f"
NURSE_OID = "0c9d7e3a-5b1f-4c2d-9e8f-7a6b5c4d3e2f"
CITY_RPPS = "1000000010" + luhn_key("1000000010")  # a valid RPPS the directory does not hold
ACR_SUBSTANTIAL = "urn:ght:acr:substantial"


@dataclass
class Stage:
    tmp: Path
    store: Store
    people: dict[str, Clinician]
    gateway: GatewayProcess
    strict_port: int  # a second gateway on the same database, without admit_external
    psc: UpstreamIdp
    entra: UpstreamIdp
    apps: dict[str, ThreadedServer]
    browser: Any

    def events(self, action: str) -> list[AuditEvent]:
        with self.store.session() as session:
            return list(
                session.execute(
                    select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.id))
                ).scalars()
            )

    def last_failure(self) -> str:
        failures = [e for e in self.events("gateway.signin_failed") if e.changes.get("method") == "upstream"]
        assert failures, "no upstream sign-in failure was audited"
        return str(failures[-1].changes["reason"])


def upstream_toml(name: str, kind: str, issuer: str, client_id: str, secret_file: Path, **extra: Any) -> str:
    lines = [
        f"[gateway.upstream.{name}]",
        f'kind = "{kind}"',
        f'issuer = "{issuer}"',
        f'client_id = "{client_id}"',
        f'client_secret = {{ file = "{secret_file}" }}',
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def configure(
    tmp: Path, database: str, port: int, psc_url: str, entra_url: str, psc_extra: dict[str, Any]
) -> Path:
    folder = tmp / f"gateway-{port}"
    folder.mkdir(exist_ok=True)
    if (tmp / "kek").exists():  # every gateway on this database opens the same signing keys
        shutil.copy(tmp / "kek", folder / "kek")
    config = write_config(folder, database, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings")
    text = config.read_text()
    text += "\n" + upstream_toml(
        "psc", "pro_sante_connect", psc_url, "ght-gateway", tmp / "psc-secret", **psc_extra
    )
    text += "\n" + upstream_toml(
        "entra", "entra_id", entra_url, "ght-gateway", tmp / "entra-secret", tenant_id=TENANT
    )
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("upstream")
    database = f"sqlite:///{tmp}/ght.db"
    store = open_store(database)
    people = seed_directory(store)
    doctor, nurse = people["doctor"], people["nurse"]
    with store.session() as session:  # what `ght azure push` left: the nurse's and doctor's cloud users
        session.add(
            ExportState(
                person_id=nurse.id,
                object_id=NURSE_OID,
                employee_id=nurse.id[:16],
                status=ExportStatus.EXPORTED,
            )
        )
        session.add(
            ExportState(
                person_id=doctor.id,
                object_id="0d0d0d0d-0000-4000-8000-000000000001",
                employee_id=doctor.id[:16],
                status=ExportStatus.EXPORTED,
            )
        )
        session.commit()
    port, strict_port, psc_port, entra_port = free_port(), free_port(), free_port(), free_port()
    for name in ("psc", "entra", "kek"):
        value = SECRETS.add(secrets.token_urlsafe(32)) or ""  # never to be found in a log
        (tmp / name if name == "kek" else tmp / f"{name}-secret").write_text(value)
    callbacks = [f"http://127.0.0.1:{p}/upstream/{{}}/callback" for p in (port, strict_port)]
    psc = UpstreamIdp(
        "psc",
        psc_port,
        clients=[
            {
                "client_id": "ght-gateway",
                "client_secret": (tmp / "psc-secret").read_text(),
                "redirect_uris": [c.format("psc") for c in callbacks],
            }
        ],
        accounts={
            "helene": {
                "sub": "f:550dc1c8-d97b-4b1e-ac8c-8eb4471cf9dd:810000000072",
                "SubjectNameID": "810000000072",
                "preferred_username": "810000000072",
                "family_name": "LEFEVRE",
                "given_name": "HELENE",
                "SubjectRefPro": {
                    "codeCivilite": "MME",
                    "exercices": [{"codeProfession": "10", "codeCategorieProfessionnelle": "C"}],
                },
            },
            "citydoc": {
                "sub": f"f:9a1b2c3d-0000-4000-8000-00000000000a:8{CITY_RPPS}",
                "SubjectNameID": f"8{CITY_RPPS}",
                "preferred_username": f"8{CITY_RPPS}",
                "family_name": "BERNARD",
                "given_name": "CLAIRE",
                "SubjectRefPro": {"codeCivilite": "DR", "exercices": [{"codeProfession": "10"}]},
            },
        },
        acr="eidas1",
        amr=["sc", "pin"],  # a CPS card and its PIN code
        log_dir=tmp,
    )
    entra = UpstreamIdp(
        "entra",
        entra_port,
        clients=[
            {
                "client_id": "ght-gateway",
                "client_secret": (tmp / "entra-secret").read_text(),
                "redirect_uris": [c.format("entra") for c in callbacks],
            }
        ],
        accounts={
            "paul": {
                "sub": "pairwise-paul",
                "oid": NURSE_OID,
                "tid": TENANT,
                "name": "Paul Garcia",
                "preferred_username": "paul.garcia@ght.test",
            },
            "helene": {
                "sub": "pairwise-helene",
                "oid": "7e7e7e7e-0000-4000-8000-00000000000b",
                "tid": TENANT,
                "preferred_username": "helene.lefevre@ght.test",
                "employeeId": doctor.id[:16],
            },
            "stranger": {
                "sub": "pairwise-stranger",
                "oid": "5a5a5a5a-0000-4000-8000-00000000000c",
                "tid": TENANT,
                "preferred_username": "stranger@ght.test",
            },
        },
        amr=["pwd", "mfa"],
        log_dir=tmp,
    )
    gateway: GatewayProcess | None = None
    apps: dict[str, ThreadedServer] = {}
    try:
        config = configure(tmp, database, port, psc.url, entra.url, {})
        registered = {}
        for name in ("dpi", "portail"):
            app_port = free_port()
            url = f"http://127.0.0.1:{app_port}"
            done = ght(
                "clients", "add", name, "--redirect-uri", f"{url}/callback", "--post-logout-redirect-uri",
                f"{url}/", "--json", config=config,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            registered[name] = (app_port, url, json.loads(done.stdout))
        external = {
            "admit_external": True,
            "external_role": "portail-ville",
            "external_clients": [registered["portail"][2]["client_id"]],
        }
        config = configure(tmp, database, port, psc.url, entra.url, external)
        configure(tmp, database, strict_port, psc.url, entra.url, {})
        gateway = GatewayProcess(config, port=port)
        for name, (app_port, url, client) in registered.items():
            sample = create_sample_app(
                issuer=gateway.url,
                client_id=client["client_id"],
                client_secret=client["client_secret"],
                base_url=url,
                title=name.upper(),
            )
            apps[name] = ThreadedServer(sample, app_port)
        with chromium() as browser:
            yield Stage(tmp, store, people, gateway, strict_port, psc, entra, apps, browser)
    finally:
        for app in apps.values():
            app.stop()
        if gateway is not None:
            gateway.stop()
        psc.stop()
        entra.stop()


# ----------------------------------------------------------------------------------------- helpers


def claim(page: Any, name: str) -> Any:
    """A claim of the ID token the sample application shows."""
    cell = page.locator(f"tr:has(th:text-is('{name}')) td")
    return json.loads(cell.inner_text()) if cell.count() else None


def to_upstream(stage: Stage, page: Any, app: str, button: str) -> None:
    """From the application to the gateway's sign-in page, then to the upstream's login form."""
    page.goto(stage.apps[app].url)
    page.click("#login")
    page.wait_for_url(f"{stage.gateway.url}/authorize*")  # the sign-in form, shown at /authorize
    page.get_by_role("link", name=button).click()


def upstream_login(page: Any, login: str) -> None:
    page.get_by_label("Identifiant").fill(login)
    page.get_by_role("button", name="Valider").click()


def hold_callback(context: Any, upstream: UpstreamIdp, gateway_url: str) -> list[str]:
    """Stop the browser before the gateway's callback; returns the list its URL will be put in.

    A browser does not let a test intercept the hops of a redirect chain, so the upstream's login form
    is submitted here and its redirects followed (with the browser's cookies) up to the gateway.
    """
    held: list[str] = []

    def handler(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        location = route.fetch(max_redirects=0).headers["location"]
        while not location.startswith(gateway_url):
            location = context.request.get(urljoin(upstream.url, location), max_redirects=0).headers[
                "location"
            ]
        held.append(location)
        route.fulfill(status=200, content_type="text/html", body="<p id='held'>held</p>")

    context.route(f"{upstream.url}/interaction/*", handler)
    return held


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


# ------------------------------------------------------------------------------------------- flows


def test_pro_sante_connect_signs_a_known_doctor_in_at_substantial_level(stage: Stage) -> None:
    context = stage.browser.new_context(locale="fr-FR")
    page = context.new_page()
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    assert page.url.startswith(stage.psc.url)
    upstream_login(page, "helene")
    page.wait_for_url(f"{stage.gateway.url}/select-site*")  # the doctor works at two hospitals
    page.get_by_label("CH de Cavaillon", exact=False).check()
    page.get_by_role("button", name="Continuer").click()
    page.wait_for_url(f"{stage.apps['dpi'].url}/")
    doctor = stage.people["doctor"]
    assert claim(page, "sub") == doctor.id
    assert claim(page, "acr") == ACR_SUBSTANTIAL  # PSC eidas1 counts as eIDAS substantial
    assert set(claim(page, "amr")) == {"sc", "pin", "mfa"}
    assert claim(page, "rpps") == "10000000072" and claim(page, "current_site") == "ch-cavaillon"
    assert claim(page, "external") is None
    signin = [e for e in stage.events("gateway.signin") if e.changes.get("provider") == "psc"]
    assert signin[-1].person_id == doctor.id and signin[-1].changes["method"] == "upstream"
    assert signin[-1].changes["linked_by"] == "rpps" and signin[-1].changes["upstream_acr"] == "eidas1"
    # Single sign-on: the portal gets the same session without another trip to PSC.
    page.goto(stage.apps["portail"].url)
    page.click("#login")
    page.wait_for_url(f"{stage.apps['portail'].url}/")
    assert claim(page, "sub") == doctor.id and claim(page, "acr") == ACR_SUBSTANTIAL
    context.close()


def test_entra_id_links_by_object_id_then_by_employee_id(stage: Stage) -> None:
    context = stage.browser.new_context(locale="en-GB")
    page = context.new_page()
    to_upstream(stage, page, "dpi", "Entra ID")
    upstream_login(page, "paul")
    page.wait_for_url(f"{stage.apps['dpi'].url}/")  # one hospital: no site to pick
    assert claim(page, "sub") == stage.people["nurse"].id
    assert claim(page, "amr") == ["pwd", "mfa"] and claim(page, "acr") == ACR_SUBSTANTIAL
    assert claim(page, "current_site") == "ch-carpentras"
    context.close()

    context = stage.browser.new_context(locale="en-GB")
    page = context.new_page()
    to_upstream(stage, page, "dpi", "Entra ID")
    upstream_login(page, "helene")  # an oid the export does not know, but the employeeId it wrote
    page.wait_for_url(f"{stage.gateway.url}/select-site*")
    page.get_by_label("CH d'Avignon", exact=False).check()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{stage.apps['dpi'].url}/")
    assert claim(page, "sub") == stage.people["doctor"].id
    with stage.store.session() as session:
        links = {
            link.subject: link.linked_by
            for link in session.execute(
                select(UpstreamIdentity).where(col(UpstreamIdentity.provider) == "entra")
            ).scalars()
        }
    assert links[NURSE_OID] == "oid" and links["7e7e7e7e-0000-4000-8000-00000000000b"] == "employeeId"
    context.close()


def test_an_entra_identity_with_no_territorial_person_is_refused(stage: Stage) -> None:
    context = stage.browser.new_context(locale="fr-FR")
    page = context.new_page()
    to_upstream(stage, page, "dpi", "Entra ID")
    upstream_login(page, "stranger")
    page.wait_for_url(f"{stage.gateway.url}/upstream/entra/callback*")
    assert page.locator("h1").inner_text() == "Connexion avec Entra ID impossible"
    assert "n'est rattachée à aucun professionnel" in page.get_by_role("alert").inner_text()
    assert stage.last_failure() == "no_person"
    page.get_by_role("link", name="Revenir à la page de connexion").click()  # back to the password form
    page.wait_for_url(f"{stage.gateway.url}/login*")
    context.close()


@pytest.mark.parametrize(("iss", "reason"), [("http://127.0.0.1:1", "iss_mismatch"), (None, "iss_missing")])
def test_a_tampered_or_missing_iss_is_refused(stage: Stage, iss: str | None, reason: str) -> None:
    context = stage.browser.new_context(locale="en-GB")
    held = hold_callback(context, stage.psc, stage.gateway.url)
    page = context.new_page()
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    upstream_login(page, "helene")
    page.wait_for_selector("#held")
    assert dict(parse_qsl(urlsplit(held[0]).query))["iss"] == stage.psc.url  # RFC 9207: the PSC sends it
    response = page.goto(with_query(held[0], iss=iss))
    assert response.status == 400
    assert page.locator("h1").inner_text() == "Signing in with Pro Santé Connect failed"
    assert stage.last_failure() == reason
    # The state was spent by the refused answer: the genuine one cannot be played after it.
    page.goto(held[0])
    assert stage.last_failure() == "state_replayed"
    context.close()


def test_a_wrong_nonce_in_the_id_token_is_refused(stage: Stage) -> None:
    context = stage.browser.new_context(locale="en-GB")
    page = context.new_page()
    stage.psc.tamper_next_nonce()
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    upstream_login(page, "helene")
    page.wait_for_url(f"{stage.gateway.url}/upstream/psc/callback*")
    assert page.locator("h1").inner_text() == "Signing in with Pro Santé Connect failed"
    assert stage.last_failure() == "nonce_mismatch"
    context.close()


def test_a_replayed_state_or_one_from_another_browser_is_refused(stage: Stage) -> None:
    context = stage.browser.new_context(locale="en-GB")
    page = context.new_page()
    seen: list[str] = []
    context.on(
        "request",
        lambda request: seen.append(request.url) if "/upstream/psc/callback" in request.url else None,
    )
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    upstream_login(page, "helene")
    page.wait_for_url(f"{stage.gateway.url}/select-site*")
    assert seen
    response = page.goto(seen[0])  # the same answer again
    assert response.status == 400 and stage.last_failure() == "state_replayed"
    context.close()

    # An answer meant for one browser, opened in another (a login CSRF): refused.
    victim = stage.browser.new_context(locale="en-GB")
    held = hold_callback(victim, stage.psc, stage.gateway.url)
    page = victim.new_page()
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    upstream_login(page, "helene")
    page.wait_for_selector("#held")
    other = stage.browser.new_context(locale="en-GB")
    response = other.new_page().goto(held[0])
    assert response.status == 400 and stage.last_failure() == "state_other_browser"
    other.close()
    victim.close()


def test_an_unknown_professional_is_refused_without_admit_external(stage: Stage) -> None:
    strict = GatewayProcess(stage.tmp / f"gateway-{stage.strict_port}" / "ght.toml", port=stage.strict_port)
    try:
        context = stage.browser.new_context(locale="fr-FR")
        page = context.new_page()
        page.goto(f"{strict.url}/login")
        page.get_by_role("link", name="Pro Santé Connect").click()
        upstream_login(page, "citydoc")
        page.wait_for_url(f"{strict.url}/upstream/psc/callback*")
        assert page.locator("h1").inner_text() == "Connexion avec Pro Santé Connect impossible"
        assert "n'est rattachée à aucun professionnel" in page.get_by_role("alert").inner_text()
        assert stage.last_failure() == "no_person"
        with stage.store.session() as session:
            assert session.execute(select(Person).where(col(Person.rpps) == CITY_RPPS)).first() is None
        context.close()
    finally:
        strict.stop()


def test_an_external_professional_is_admitted_to_the_portal_only_with_the_limited_role(stage: Stage) -> None:
    context = stage.browser.new_context(locale="fr-FR")
    page = context.new_page()
    # The DPI is not open to external professionals.
    to_upstream(stage, page, "dpi", "Pro Santé Connect")
    upstream_login(page, "citydoc")
    page.wait_for_url(f"{stage.gateway.url}/upstream/psc/callback*")
    assert "réservée aux professionnels du groupement" in page.get_by_role("alert").inner_text()
    assert stage.last_failure() == "external_client_not_allowed"
    # The city doctors' portal is (PSC remembers the doctor: no second login form).
    page.goto(stage.apps["portail"].url)
    page.click("#login")
    page.wait_for_url(f"{stage.gateway.url}/authorize*")  # the sign-in form, shown at /authorize
    page.get_by_role("link", name="Pro Santé Connect").click()
    page.wait_for_url(f"{stage.apps['portail'].url}/")
    with stage.store.session() as session:
        person = session.execute(select(Person).where(col(Person.rpps) == CITY_RPPS)).scalar_one()
    assert person.status == PersonStatus.EXTERNAL and person.family_name == "BERNARD"
    assert claim(page, "sub") == person.id
    assert claim(page, "external") is True and claim(page, "roles") == ["portail-ville"]
    assert claim(page, "acr") == ACR_SUBSTANTIAL and claim(page, "affiliations") == []
    assert claim(page, "rpps") == CITY_RPPS
    assert stage.events("gateway.external_admitted")[-1].person_id == person.id
    # No single sign-on for an external professional: the DPI asks again, and refuses again.
    page.goto(stage.apps["dpi"].url)
    page.click("#login")
    page.wait_for_url(f"{stage.gateway.url}/authorize*")  # the sign-in form, shown at /authorize
    page.get_by_role("link", name="Pro Santé Connect").click()
    page.wait_for_url(f"{stage.gateway.url}/upstream/psc/callback*")
    assert stage.last_failure() == "external_client_not_allowed"
    context.close()


# ------------------------------------------------------------------------------------ without servers


def test_national_ids_from_pro_sante_connect_claims() -> None:
    assert psc_national_ids({"SubjectNameID": "810000000072"}) == ("10000000072", None)
    assert psc_national_ids({"SubjectNameID": "8100000000"}) == (None, None)  # not an idNat_PS
    adeli = "12345678" + luhn_key("12345678")
    assert psc_national_ids({"SubjectNameID": f"0{adeli}"}) == (None, adeli)
    assert psc_national_ids({"SubjectRefPro": {"idNatPS": "810000000072"}}) == ("10000000072", None)


def test_upstream_settings_are_checked() -> None:
    base = {"issuer": "http://127.0.0.1:1", "key_encryption_key": {"env": "KEK"}}
    provider = {"issuer": "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet", "client_id": "c",
                "client_secret": {"env": "PSC_SECRET"}}  # fmt: skip
    settings = GatewaySettings(**base, upstream={"psc": {**provider, "kind": "pro_sante_connect"}})
    psc = settings.upstream["psc"]
    assert psc.effective_scope == "openid scope_all" and psc.effective_acr_values == "eidas1"
    with pytest.raises(ValueError, match="must not be written"):
        GatewaySettings(
            **base, upstream={"psc": {**provider, "kind": "pro_sante_connect", "client_secret": "x"}}
        )
    with pytest.raises(ValueError, match="Pro Sante Connect only"):
        GatewaySettings(**base, upstream={"e": {**provider, "kind": "entra_id", "admit_external": True,
                                                "external_clients": ["c"]}})  # fmt: skip
    with pytest.raises(ValueError, match="external_clients"):
        GatewaySettings(
            **base, upstream={"psc": {**provider, "kind": "pro_sante_connect", "admit_external": True}}
        )
    with pytest.raises(ValueError, match="https"):
        GatewaySettings(**base, upstream={"psc": {**provider, "kind": "pro_sante_connect",
                                                  "issuer": "http://psc.example"}})  # fmt: skip


def test_a_provider_is_offered_only_to_the_clients_it_lists(stage: Stage) -> None:
    """`clients` under a provider: its button shows on those applications' sign-in pages only, and
    starting it for another application is refused."""
    with stage.store.session() as session:
        registered = {c.name: c for c in session.execute(select(GatewayClient)).scalars()}
    dpi, portal = registered["dpi"], registered["portail"]
    port = free_port()
    database = f"sqlite:///{stage.tmp}/ght.db"
    config = configure(
        stage.tmp, database, port, stage.psc.url, stage.entra.url, {"clients": [portal.client_id]}
    )
    gateway = GatewayProcess(config, port=port)
    try:
        for client, offered in ((dpi, False), (portal, True)):
            with httpx.Client(base_url=gateway.url, follow_redirects=True) as http:
                _, challenge = pkce_pair()
                page = http.get(
                    "/authorize",
                    params={
                        "response_type": "code",
                        "client_id": client.client_id,
                        "redirect_uri": client.redirect_uris[0],
                        "scope": "openid",
                        "state": secrets.token_urlsafe(8),
                        "code_challenge": challenge,
                        "code_challenge_method": "S256",
                    },
                )
                assert page.status_code == 200, page.text
                assert ("/upstream/psc/start" in page.text) is offered
                assert "/upstream/entra/start" in page.text  # no list: offered to every application
                action = form_fields(page.text)["__action__"]  # the form is shown at /authorize itself
                request_id = dict(parse_qsl(urlsplit(action).query))["request"]
                started = http.get(
                    "/upstream/psc/start", params={"request": request_id}, follow_redirects=False
                )
                if offered:
                    assert started.status_code == 303
                    assert started.headers["location"].startswith(stage.psc.url)
                else:
                    assert started.status_code == 403
                    assert (
                        "Cette application n'accepte pas la connexion avec Pro Santé Connect"
                        in html.unescape(started.text)
                    )
    finally:
        gateway.stop()
