"""Observability, against a real `ght gateway serve --workers 2`, a real slapd and real `ght sync run`s.

- /metrics: the gateway's counters (requests by route template, sign-ins by result and site, tokens by
  grant type, LDAP bind latency by site) are summed over both workers (prometheus_client's
  multiprocess mode, in a private directory `ght gateway serve` makes and removes); the sync and export
  families are read from the database at scrape time, so a `ght sync run` shows at the next scrape.
- /metrics is refused to a client outside `metrics_networks` without the bearer token.
- `ght sync run --metrics-file` writes the same families in node_exporter's textfile format.
- Request ids: a well-formed X-Request-ID is echoed (else one is made), and is in the gateway's JSON log
  lines and in the audit events of that request.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlmodel import col

from directory_sync.config import GatewaySettings, SecretRef
from directory_sync.logs import REQUEST_ID, JsonFormatter, choose_format
from directory_sync.store import AuditEvent, open_store
from sso_gateway.metrics import MetricsAccess
from tests.hospitals import ldap_connection, person, suffix_ldif, write_site
from tests.hospitals import write_config as write_sync_config
from tests.servers.gateway import (
    REPO,
    Browserless,
    GatewayProcess,
    gateway_toml,
    ght,
    pkce_pair,
    redirect_params,
    register_tokens,
)
from tests.servers.logscan import SECRETS
from tests.servers.slapd import SlapdServer, Suffix, free_port, ssha, start_slapd

SITE, SUFFIX = "ch-avignon", "dc=ch-avignon,dc=fr"
CALLBACK = "https://dpi.ght.test/cb"
NURSE_PASSWORD = SECRETS.add(f"Soins-{secrets.token_urlsafe(12)}") or ""
DOCTOR_PASSWORD = SECRETS.add(f"Urgences-{secrets.token_urlsafe(12)}") or ""
METRICS_TOKEN = SECRETS.add(secrets.token_urlsafe(24)) or ""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Served:
    tmp: Path
    config: Path
    slapd: SlapdServer
    gateway: GatewayProcess
    client_id: str
    secret: str
    batch_id: str
    batch_secret: str
    textfile: Path


def _entry(uid: str, sn: str, given: str, password: str, title: str) -> tuple[str, dict[str, Any]]:
    dn, attributes = person(SUFFIX, uid, sn, given, title=title)
    return dn, {**attributes, "userPassword": ssha(password)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("observability")
    entries = [
        _entry("pgarcia", "Garcia", "Paul", NURSE_PASSWORD, "Infirmier"),
        _entry("hlefevre", "Lefèvre", "Hélène", DOCTOR_PASSWORD, "Médecin"),
    ]
    slapd = start_slapd(tmp / "slapd", [Suffix(SUFFIX, suffix_ldif(tmp / "avignon.ldif", SUFFIX, entries))])
    try:
        bind = tmp / "bind-ch-avignon"
        bind.write_text(slapd.reader_password)
        bind.chmod(0o600)
        write_site(
            tmp, SITE, {**ldap_connection(slapd, SUFFIX, "UNUSED"), "bind_password": {"file": str(bind)}}
        )
        config = write_sync_config(tmp, [SITE], f"sqlite:///{tmp}/ght.db")
        kek = tmp / "kek"
        kek.write_text(SECRETS.add(secrets.token_urlsafe(32)) or "")
        token_file = tmp / "metrics-token"
        token_file.write_text(METRICS_TOKEN)
        port = free_port()
        config.write_text(
            config.read_text()
            + "\n"
            + gateway_toml(f"http://127.0.0.1:{port}", kek, login_ip_lockout_after=10_000)
            + 'metrics_networks = ["192.0.2.0/24"]\n'  # not the loopback: the token is needed here
            + f'metrics_token = {{ file = "{token_file}" }}\n'
        )
        textfile = tmp / "textfile" / "ght.prom"
        textfile.parent.mkdir()
        done = ght("sync", "run", "--metrics-file", str(textfile), config=config)
        assert done.returncode == 0, done.stderr
        added = ght("clients", "add", "DPI", "--redirect-uri", CALLBACK, "--json", config=config)
        assert added.returncode == 0, added.stderr
        batch = ght("clients", "add", "batch", "--json", config=config)
        assert batch.returncode == 0, batch.stderr
        client, batch_client = json.loads(added.stdout), json.loads(batch.stdout)
        gateway = GatewayProcess(config, port=port, workers=2)
        metrics_dir = None
        try:
            served = Served(
                tmp, config, slapd, gateway, client["client_id"], client["client_secret"],
                batch_client["client_id"], batch_client["client_secret"], textfile,
            )  # fmt: skip
            metrics_dir = environ(worker_pids(served)[0]).get("PROMETHEUS_MULTIPROC_DIR")
            yield served
        finally:
            gateway.stop()
        # `ght gateway serve` removed the workers' metrics directory when it stopped.
        assert metrics_dir is not None and not Path(metrics_dir).exists()
    finally:
        slapd.stop()


def scrape(served: Served, token: str | None = METRICS_TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=10) as http:  # a new connection: any worker may answer
        response = http.get(f"{served.gateway.url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def sign_in_and_redeem(
    served: Served, login: str, password: str, request_id: str | None = None
) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": served.client_id, "redirect_uri": CALLBACK,
        "scope": "openid profile", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    headers = {"X-Request-ID": request_id} if request_id else {}
    with httpx.Client(timeout=30, headers=headers) as http:
        browser = Browserless(http, served.gateway.url)
        page = browser.follow(browser.authorize(**params))
        assert page.status_code == 200, page.text[:300]
        code = redirect_params(browser.sign_in(page, login, password))["code"]
        tokens = register_tokens(
            http.post(
                f"{served.gateway.url}/token",
                data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                      "redirect_uri": CALLBACK},
                auth=(served.client_id, served.secret),
            )
        )  # fmt: skip
    assert tokens.status_code == 200, tokens.text
    return dict(tokens.json())


def worker_pids(served: Served) -> list[int]:
    parent = served.gateway.process.pid
    children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    # uvicorn's workers (multiprocessing's spawn), not its resource tracker
    return [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


# -- /metrics on two workers ------------------------------------------------------------------------


def test_counters_are_summed_over_both_workers_with_their_labels(served: Served) -> None:
    before = scrape(served)
    successes = 6
    for n in range(successes):
        sign_in_and_redeem(
            served, "pgarcia" if n % 2 else "hlefevre", NURSE_PASSWORD if n % 2 else DOCTOR_PASSWORD
        )
    with httpx.Client(timeout=30) as http:
        browser = Browserless(http, served.gateway.url)
        page = browser.follow(http.get(f"{served.gateway.url}/login"))
        refused = browser.sign_in(page, "pgarcia", "not-the-password-" + secrets.token_hex(4))
        assert refused.status_code == 401
    tokens = sign_in_and_redeem(served, "pgarcia", NURSE_PASSWORD)
    with httpx.Client(timeout=30) as http:
        refreshed = register_tokens(
            http.post(
                f"{served.gateway.url}/token",
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                auth=(served.client_id, served.secret),
            )
        )
        assert refreshed.status_code == 200, refreshed.text
        for _ in range(2):
            granted = register_tokens(
                http.post(
                    f"{served.gateway.url}/token",
                    data={"grant_type": "client_credentials"},
                    auth=(served.batch_id, served.batch_secret),
                )
            )
            assert granted.status_code == 200, granted.text
        missing = http.get(f"{served.gateway.url}/no/such/page/{secrets.token_hex(4)}")
        assert missing.status_code == 404

    # Both workers write their values in the one private directory `ght gateway serve` made.
    pids = worker_pids(served)
    assert len(pids) == 2
    directories = {environ(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in pids}
    assert len(directories) == 1 and None not in directories
    (directory,) = directories
    assert directory is not None and Path(directory).stat().st_mode & 0o077 == 0

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    signed_in = successes + 1
    scrapes = [scrape(served) for _ in range(6)]  # each on a new connection: either worker answers
    for after in scrapes:
        assert delta(after, "ght_gateway_signins_total", result="success", site=SITE) == signed_in
        assert delta(after, "ght_gateway_signins_total", result="wrong_password", site=SITE) == 1
        assert delta(after, "ght_gateway_tokens_issued_total", grant_type="authorization_code") == signed_in
        assert delta(after, "ght_gateway_tokens_issued_total", grant_type="refresh_token") == 1
        assert delta(after, "ght_gateway_tokens_issued_total", grant_type="client_credentials") == 2
        bind = "ght_gateway_ldap_bind_duration_seconds_count"
        assert delta(after, bind, site=SITE, outcome="accepted") == signed_in
        assert delta(after, bind, site=SITE, outcome="rejected") == 1
        assert delta(after, "ght_gateway_requests_total", route="/token", method="POST", status="200") == (
            signed_in + 3
        )
        assert delta(after, "ght_gateway_requests_total", route="/login", method="POST", status="401") == 1
        assert delta(after, "ght_gateway_requests_total", route="unmatched", method="GET", status="404") == 1
        count = "ght_gateway_request_duration_seconds_count"
        assert delta(after, count, route="/token", method="POST") == signed_in + 3
        assert value(after, "ght_gateway_ldap_bind_duration_seconds_sum", site=SITE, outcome="accepted") > 0
    # Route templates only: no raw path (nor its random part) becomes a label.
    routes = {
        dict(labels).get("route") for name, labels in scrapes[-1] if name == "ght_gateway_requests_total"
    }
    assert routes <= {"/authorize", "/login", "/token", "/metrics", "unmatched", "/readyz"}, routes
    assert Path(directory).is_dir() and list(Path(directory).glob("counter_*.db"))


def test_sync_and_export_metrics_come_from_the_database_at_scrape_time(served: Served) -> None:
    first = scrape(served)
    assert value(first, "ght_sync_last_run_status", site=SITE, status="succeeded") == 1
    assert value(first, "ght_sync_last_run_status", site=SITE, status="failed") == 0
    started = value(first, "ght_sync_last_run_timestamp_seconds", site=SITE)
    assert 0 < time.time() - started < 600
    assert value(first, "ght_sync_last_run_age_seconds", site=SITE) >= 0
    assert value(first, "ght_sync_last_success_timestamp_seconds", site=SITE) >= started
    assert ("ght_export_throttled_responses_total", ()) in first
    assert value(first, "ght_export_users", state="pending") == 0
    first_run_created = value(first, "ght_sync_last_run_accounts", site=SITE, kind="created")
    assert (
        first_run_created == 2 or value(first, "ght_sync_last_run_accounts", site=SITE, kind="unchanged") == 2
    )

    time.sleep(1.1)  # timestamps in whole seconds on SQLite
    done = ght("sync", "run", "--full", config=served.config)  # (a delta would read nothing new)
    assert done.returncode == 0, done.stderr
    second = scrape(served)
    assert value(second, "ght_sync_last_run_timestamp_seconds", site=SITE) > started
    assert value(second, "ght_sync_last_run_accounts", site=SITE, kind="read") == 2
    assert value(second, "ght_sync_last_run_accounts", site=SITE, kind="unchanged") == 2
    assert value(second, "ght_sync_last_run_accounts", site=SITE, kind="created") == 0
    assert value(second, "ght_sync_last_run_duration_seconds", site=SITE) >= 0


def test_metrics_are_refused_outside_the_allowed_networks_without_the_token(served: Served) -> None:
    url = f"{served.gateway.url}/metrics"
    with httpx.Client(timeout=10) as http:
        assert http.get(url).status_code == 403  # from the loopback, which this configuration leaves out
        wrong = {"Authorization": f"Bearer {METRICS_TOKEN[:-2]}xx"}
        assert http.get(url, headers=wrong).status_code == 403
        basic = http.get(url, auth=("metrics", METRICS_TOKEN))
        assert basic.status_code == 403
        good = http.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert good.status_code == 200 and "ght_gateway_requests_total" in good.text
        assert good.headers["content-type"].startswith("text/plain")


def test_metrics_access_defaults_to_the_loopback_only(tmp_path: Path) -> None:
    settings = GatewaySettings(issuer="https://sso.ght.test", key_encryption_key=SecretRef(env="UNUSED"))
    access = MetricsAccess(settings)
    assert access.allows("127.0.0.1", None) and access.allows("::1", None)
    assert not access.allows("10.1.2.3", None)
    assert not access.allows("testclient", None) and not access.allows(None, "Bearer x" * 4)
    short = tmp_path / "short"
    short.write_text("tooshort")
    with pytest.raises(Exception, match="under 16 characters"):
        MetricsAccess(settings.model_copy(update={"metrics_token": SecretRef(file=short)}))


def test_every_metric_the_guide_and_the_alerts_name_is_served(served: Served) -> None:
    sign_in_and_redeem(served, "pgarcia", NURSE_PASSWORD)  # every gateway family has a sample
    with httpx.Client(timeout=10) as http:
        text = http.get(
            f"{served.gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        ).text
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    suffixes = ("", "_bucket", "_count", "_sum", "_total", "_created")
    exported = {name + suffix for name in declared for suffix in suffixes}
    guide = (REPO / "deploy" / "README.md").read_text()
    monitoring = guide[guide.index("## Monitoring and alerting") : guide.index("## Rotating keys")]
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yaml").read_text()
    for where, source in (("deploy/README.md", monitoring), ("alerts.yaml", alerts)):
        named = set(re.findall(r"\bght_(?:gateway|sync|export)_[a-z0-9_]+", source))
        assert len(named) >= 10, where
        assert named <= exported, f"{where} names metrics that are not served: {sorted(named - exported)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_promtool_accepts_the_alerting_rules_and_lints_the_metrics_clean(served: Served) -> None:
    rules = REPO / "deploy" / "prometheus" / "alerts.yaml"
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for text in (served.textfile.read_text(), httpx.get(f"{served.gateway.url}/metrics", headers={
        "Authorization": f"Bearer {METRICS_TOKEN}"}).text):  # fmt: skip
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


# -- the textfile ---------------------------------------------------------------------------------


def test_sync_run_writes_the_textfile_for_node_exporter(served: Served) -> None:
    text = served.textfile.read_text()
    samples = parse(text)
    assert value(samples, "ght_sync_last_run_status", site=SITE, status="succeeded") == 1
    assert value(samples, "ght_sync_last_run_accounts", site=SITE, kind="read") == 2
    assert value(samples, "ght_sync_last_run_accounts", site=SITE, kind="created") == 2
    assert 0 < time.time() - value(samples, "ght_sync_last_success_timestamp_seconds", site=SITE) < 600
    assert ("ght_export_throttled_responses_total", ()) in samples
    assert not any(name.endswith("_age_seconds") for name, _ in samples)  # a file would freeze an age
    assert [p.name for p in served.textfile.parent.iterdir()] == ["ght.prom"]  # renamed into place
    # A folder that cannot be written: one error line, exit 1 (the run itself is done).
    done = ght(
        "sync", "run", "--metrics-file", str(served.tmp / "no" / "such" / "x.prom"), config=served.config
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot write the metrics file")


# -- request ids and logs -------------------------------------------------------------------------


def test_a_request_id_is_echoed_logged_and_audited(served: Served) -> None:
    request_id = f"obs-{secrets.token_hex(8)}"
    sign_in_and_redeem(served, "hlefevre", DOCTOR_PASSWORD, request_id=request_id)
    with httpx.Client(timeout=10) as http:
        echoed = http.get(f"{served.gateway.url}/healthz", headers={"X-Request-ID": request_id})
        assert echoed.headers["x-request-id"] == request_id
        made = [http.get(f"{served.gateway.url}/healthz").headers["x-request-id"] for _ in range(2)]
        assert made[0] != made[1] and all(len(m) == 32 for m in made)
        for bad in ("two words", "x" * 65, "inject\\nline"):
            replaced = http.get(f"{served.gateway.url}/healthz", headers={"X-Request-ID": bad})
            assert replaced.headers["x-request-id"] != bad and len(replaced.headers["x-request-id"]) == 32

    store = open_store(f"sqlite:///{served.tmp}/ght.db")
    with store.session() as session:
        events = session.execute(
            select(AuditEvent).where(col(AuditEvent.action) == "gateway.signin")
        ).scalars()
        ours = [e for e in events if e.changes.get("request_id") == request_id]
    assert len(ours) == 1 and ours[0].person_id

    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in served.gateway.log.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        mine = [r for r in records if r.get("request_id") == request_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= record.keys(), record
    audit = [r for r in mine if r["logger"] == "ght.audit" and r.get("action") == "gateway.signin"]
    assert len(audit) == 1 and audit[0]["person_id"] == ours[0].person_id, mine


def test_the_middleware_labels_by_route_template_and_known_methods_only() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sso_gateway.metrics import OWN
    from sso_gateway.web.observe import ObserveMiddleware

    app = FastAPI()
    seen: list[str | None] = []

    @app.api_route("/items/{item}", methods=["GET", "PURGE"])
    def item(item: str) -> dict[str, str]:
        seen.append(REQUEST_ID.get())  # in the worker thread: the request's context is copied
        return {"item": item}

    app.add_middleware(ObserveMiddleware)

    def count(route: str, method: str, status: str) -> float:
        labels = {"route": route, "method": method, "status": status}
        return OWN.get_sample_value("ght_gateway_requests_total", labels) or 0.0

    before = (count("/items/{item}", "GET", "200"), count("/items/{item}", "other", "200"))
    with TestClient(app) as http:
        for n in range(3):
            answer = http.get(f"/items/{n}-{secrets.token_hex(4)}", headers={"X-Request-ID": f"rq-{n}"})
            assert answer.headers["x-request-id"] == f"rq-{n}"
        assert http.request("PURGE", "/items/x").status_code == 200
    assert seen[:3] == ["rq-0", "rq-1", "rq-2"] and seen[3] is not None and len(seen[3]) == 32
    assert count("/items/{item}", "GET", "200") - before[0] == 3
    assert count("/items/{item}", "other", "200") - before[1] == 1


def test_json_log_lines_carry_the_request_id_and_extra_fields() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("ght.test", logging.WARNING, __file__, 1, "bind on %s failed", ("x",), None)
    record.site = "ch-avignon"
    token = REQUEST_ID.set("req-42")
    try:
        line = json.loads(formatter.format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["message"] == "bind on x failed" and line["level"] == "WARNING"
    assert line["request_id"] == "req-42" and line["site"] == "ch-avignon" and line["logger"] == "ght.test"
    assert line["time"].endswith("+00:00")
    outside = json.loads(formatter.format(record))
    assert outside["request_id"] is None
    assert choose_format(None) in ("text", "json")
    assert choose_format("JSON") == "json"
    with pytest.raises(ValueError):
        choose_format("xml")


def test_ght_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    config = write_sync_config(tmp_path, [SITE], f"sqlite:///{tmp_path}/ght.db")
    done = ght("--log-format", "xml", "sync", "status", config=config)
    assert done.returncode == 2 and "--log-format" in done.stderr
