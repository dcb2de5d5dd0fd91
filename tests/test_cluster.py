"""The service as a cluster on loopback: PostgreSQL, two `ght gateway serve` processes, nginx in front.

nginx (Debian's package) balances round-robin over the two gateways with passive health checks
(tests/servers/nginx.py). One gateway process is killed (SIGKILL, by its PID) in the middle of a series
of sign-ins; sessions established before, authorization codes the dead process issued and refresh
tokens keep working through the survivor, and no sign-in fails except requests that were in flight on
the killed process, which the client retries. A real browser (Chromium) signs in through nginx across
a kill too. Finally two `ght sync run --every` schedulers on the same PostgreSQL database never run the
same site at once (the per-site advisory lock; tests/test_scheduling.py covers the lock itself against
both stores, this runs two real schedulers side by side).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col

from directory_sync.store import SyncRun, open_store
from sso_gateway.sample_app import create_sample_app
from tests.ad_sites import ght_command, ght_env
from tests.hospitals import person, suffix_ldif, write_site
from tests.hospitals import write_config as write_sync_config
from tests.servers.browser import ThreadedServer, chromium
from tests.servers.gateway import (
    PASSWORD,
    REPO,
    Browserless,
    GatewayProcess,
    form_fields,
    ght,
    pkce_pair,
    redirect_params,
    register_tokens,
    seed_directory,
    write_config,
)
from tests.servers.nginx import NginxServer, start_nginx
from tests.servers.postgres import PostgresServer
from tests.servers.slapd import free_port

CALLBACK = "https://dpi.ght.test/cb"
LOGIN = "pgarcia"  # one site (ch-carpentras): the sign-in ends without a site picker
RETRYABLE = (502, 503, 504)
FAIL_TIMEOUT = 2  # seconds nginx leaves a failed upstream out (short, so a restarted one is back soon)


@dataclass
class Cluster:
    nginx: NginxServer
    gateways: list[GatewayProcess]
    config: Path
    client_id: str
    secret: str
    apps: dict[str, ThreadedServer] = field(default_factory=dict)

    def kill(self, index: int) -> GatewayProcess:
        """SIGKILL gateway `index` (its process group, by its PID: uvicorn and any worker)."""
        victim = self.gateways[index]
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)
        return victim

    def restart(self, index: int) -> None:
        """A new `ght gateway serve` on the killed one's port (nginx takes it back after fail_timeout)."""
        old = self.gateways[index]
        old.stop()
        self.gateways[index] = GatewayProcess(self.config, port=old.port)
        upstream = f"127.0.0.1:{old.port}"
        deadline = time.monotonic() + FAIL_TIMEOUT + 10
        while True:  # until nginx sends it requests again
            seen = len(self.nginx.entries())
            with httpx.Client(timeout=5) as http:
                for _ in range(4):
                    http.get(f"{self.nginx.url}/readyz")
            if any(e.upstreams[-1:] == (upstream,) for e in self.nginx.entries()[seen:]):
                return
            assert time.monotonic() < deadline, f"nginx never took {upstream} back"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    url = postgres_server.create_database()
    seed_directory(open_store(url))
    lb_port = free_port()
    issuer = f"http://127.0.0.1:{lb_port}"  # the public URL is the load balancer's
    config = write_config(tmp, url, issuer, mappings_dir=REPO / "mappings")
    done = ght("people", "set-password", "--password-stdin", LOGIN, config=config, stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    added = ght("clients", "add", "DPI", "--redirect-uri", CALLBACK, "--json", config=config)
    assert added.returncode == 0, added.stderr
    client = json.loads(added.stdout)
    gateways: list[GatewayProcess] = []
    nginx: NginxServer | None = None
    apps: dict[str, ThreadedServer] = {}
    try:
        gateways += [GatewayProcess(config), GatewayProcess(config)]
        nginx = start_nginx(
            [f"127.0.0.1:{g.port}" for g in gateways],
            port=lb_port,
            prefix=tmp / "nginx",
            fail_timeout=FAIL_TIMEOUT,
        )
        for name in ("dpi", "pharmacie"):
            app_port = free_port()
            app_url = f"http://127.0.0.1:{app_port}"
            done = ght(
                "clients", "add", name, "--redirect-uri", f"{app_url}/callback",
                "--post-logout-redirect-uri", f"{app_url}/", "--json", config=config,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            registered = json.loads(done.stdout)
            apps[name] = ThreadedServer(
                create_sample_app(
                    issuer=issuer,
                    client_id=registered["client_id"],
                    client_secret=registered["client_secret"],
                    base_url=app_url,
                    title=name.upper(),
                ),
                app_port,
            )
        yield Cluster(nginx, gateways, config, client["client_id"], client["client_secret"], apps)
    finally:
        for app in apps.values():
            app.stop()
        if nginx is not None:
            nginx.cleanup()
        for gateway in gateways:
            gateway.stop()
        postgres_server.drop_database(url.rsplit("/", 1)[1])


# --------------------------------------------------------------------------- a client that retries


class Retried(Exception):
    """A step got a 502/503/504 or lost its connection: the sign-in is started again."""


def _step(send: Callable[[], httpx.Response]) -> httpx.Response:
    try:
        response = send()
    except httpx.TransportError as error:
        raise Retried(repr(error)) from error
    if response.status_code in RETRYABLE:
        raise Retried(f"{response.status_code} {response.request.method} {response.request.url.path}")
    return response


def sign_in(http: httpx.Client, base: str, client_id: str, secret: str) -> dict[str, Any]:
    """One complete sign-in, as a relying party and a browser without JavaScript do it: /authorize,
    the login form, the redirect with a code, the code redeemed at /token. Returns the tokens."""
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "scope": "openid profile",
        "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    browser = Browserless(http, base)
    page = _step(lambda: http.get(f"{base}/authorize?{urlencode(params)}"))
    while page.status_code in (302, 303):
        target = page.headers["location"]
        target = target if target.startswith("http") else base + target
        page = _step(functools.partial(http.get, target))
    assert page.status_code == 200 and "password" in page.text, (page.status_code, page.text[:300])
    fields = form_fields(page.text)
    assert "__action__" in fields
    callback = _step(lambda: browser.sign_in(page, LOGIN, PASSWORD))
    code = redirect_params(callback)["code"]
    tokens = _step(
        lambda: http.post(
            f"{base}/token",
            data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                  "redirect_uri": CALLBACK},
            auth=(client_id, secret),
        )
    )  # fmt: skip
    assert tokens.status_code == 200, tokens.text
    return dict(register_tokens(tokens).json())  # secrets the log scan looks for


@dataclass
class Series:
    done: int = 0
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_series(cluster: Cluster, total: int, workers: int, on_progress: Callable[[int], None]) -> Series:
    """`total` sign-ins through nginx by `workers` threads (each its own cookie jar per sign-in)."""
    series = Series()

    def worker() -> None:
        while True:
            with series.lock:
                if series.done >= total or len(series.failed) > 5:
                    return
            for _attempt in range(3):
                with httpx.Client(timeout=30) as http:
                    try:
                        sign_in(http, cluster.nginx.url, cluster.client_id, cluster.secret)
                    except Retried as why:
                        with series.lock:
                            series.retried.append(str(why))
                        continue
                    except Exception as error:  # a real failure: recorded, not retried
                        with series.lock:
                            series.failed.append(repr(error))
                        break
                with series.lock:
                    series.done += 1
                    done = series.done
                on_progress(done)
                break

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return series


# --------------------------------------------------------------------------- tests


def test_nginx_spreads_sign_ins_over_both_gateways(cluster: Cluster) -> None:
    before = len(cluster.nginx.entries())
    with httpx.Client(timeout=30) as http:
        for _ in range(4):
            http.cookies.clear()
            sign_in(http, cluster.nginx.url, cluster.client_id, cluster.secret)
    served = {e.upstreams[-1] for e in cluster.nginx.entries()[before:] if e.upstreams}
    assert served == {f"127.0.0.1:{g.port}" for g in cluster.gateways}


def test_sessions_codes_and_refresh_tokens_survive_a_gateway_killed_mid_series(cluster: Cluster) -> None:
    victim, survivor = cluster.gateways[0], cluster.gateways[1]
    auth = (cluster.client_id, cluster.secret)
    # Issued by the process about to die, straight at its port (no load balancer in between).
    direct = httpx.Client(timeout=30)
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": cluster.client_id, "redirect_uri": CALLBACK,
        "scope": "openid profile", "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    at_victim = Browserless(direct, victim.url)
    page = at_victim.follow(at_victim.authorize(**params))
    pending_code = redirect_params(at_victim.sign_in(page, LOGIN, PASSWORD))["code"]  # not redeemed yet
    direct2 = httpx.Client(timeout=30)
    early_tokens = sign_in(direct2, victim.url, cluster.client_id, cluster.secret)  # a refresh token

    # A session established through nginx before the kill.
    via_lb = httpx.Client(timeout=30)
    lb_tokens = sign_in(via_lb, cluster.nginx.url, cluster.client_id, cluster.secret)

    killed_at: list[float] = []

    def kill_midway(done: int) -> None:
        if done == 12 and not killed_at:
            cluster.kill(0)
            killed_at.append(time.time())

    series = run_series(cluster, total=30, workers=4, on_progress=kill_midway)
    assert killed_at, "the gateway was never killed"
    assert series.failed == [], series.failed
    assert series.done >= 30  # every thread finishes the sign-in it started
    # Only requests in flight on the killed process may have been lost (at most one per client thread).
    assert len(series.retried) <= 4, series.retried

    lb = cluster.nginx.url
    # The code the dead process issued is redeemed through nginx (at the survivor).
    redeemed = direct.post(
        f"{lb}/token",
        data={"grant_type": "authorization_code", "code": pending_code, "code_verifier": verifier,
              "redirect_uri": CALLBACK},
        auth=auth,
    )  # fmt: skip
    assert redeemed.status_code == 200, redeemed.text
    # Refresh tokens issued before (one by the dead process, one through nginx) still work, rotated.
    for tokens in (early_tokens, lb_tokens):
        refreshed = direct.post(
            f"{lb}/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=auth,
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
        bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert direct.get(f"{lb}/userinfo", headers=bearer).status_code == 200
    # Sessions established before (the dead process's cookie and one through nginx) still sign in
    # silently (prompt=none) through nginx.
    for jar in (direct, via_lb):
        silent = Browserless(jar, lb).authorize(**{**params, "prompt": "none", "code_challenge": challenge})
        assert "code" in redirect_params(silent), silent.headers.get("location")

    # After the kill, nginx sent every request to the survivor (a refused connection to the dead one was
    # passed on at once: the access log lists both upstreams for that request).
    after = [e for e in cluster.nginx.entries() if e.time > killed_at[0] + 0.5]
    assert after and all(e.upstreams[-1] == f"127.0.0.1:{survivor.port}" for e in after if e.upstreams)
    assert all(e.status not in RETRYABLE for e in after)
    for http in (direct, direct2, via_lb):
        http.close()
    cluster.restart(0)
    assert httpx.get(f"{cluster.gateways[0].url}/readyz", timeout=5).status_code == 200


def test_a_browser_signs_in_through_nginx_across_a_gateway_kill(cluster: Cluster) -> None:
    dpi, pharmacie = cluster.apps["dpi"], cluster.apps["pharmacie"]
    lb = cluster.nginx.url
    with chromium() as browser:
        context = browser.new_context(locale="fr-FR")
        page = context.new_page()
        page.goto(dpi.url)
        page.click("#login")
        page.wait_for_url(f"{lb}/authorize*")  # the sign-in form, shown at /authorize
        page.get_by_label("Identifiant").fill(LOGIN)
        page.get_by_label("Mot de passe").fill(PASSWORD)
        page.get_by_role("button", name="Se connecter").click()
        page.wait_for_url(f"{dpi.url}/")
        assert "Garcia" in page.locator("#who").inner_text()

        cluster.kill(1)  # the other one this time
        # The session established before: the second application signs in without a password.
        page.goto(pharmacie.url)
        page.click("#login")
        page.wait_for_url(f"{pharmacie.url}/")
        assert "Garcia" in page.locator("#who").inner_text()
        # A complete sign-in in a fresh browser, through nginx, with one gateway dead.
        fresh = browser.new_context(locale="fr-FR")
        other = fresh.new_page()
        other.goto(pharmacie.url)
        other.click("#login")
        other.wait_for_url(f"{lb}/authorize*")  # the sign-in form, shown at /authorize
        other.get_by_label("Identifiant").fill(LOGIN)
        other.get_by_label("Mot de passe").fill(PASSWORD)
        other.get_by_role("button", name="Se connecter").click()
        other.wait_for_url(f"{pharmacie.url}/")
        assert "Garcia" in other.locator("#who").inner_text()
        fresh.close()
        context.close()
    cluster.restart(1)


# --------------------------------------------------------------------------- two schedulers


def test_two_schedulers_on_one_database_never_run_a_site_at_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    try:
        suffix = "dc=ch-orange,dc=fr"
        people = [
            person(suffix, f"u{n:04d}", f"Nom{n}", f"Prenom{n}", title="Infirmier") for n in range(1500)
        ]
        export = suffix_ldif(tmp_path / "orange.ldif", suffix, people)
        write_site(tmp_path, "ch-orange", {"kind": "ldif", "path": str(export), "anchor": "dn"})
        write_sync_config(tmp_path, ["ch-orange"], url)
        schedulers = [
            subprocess.Popen(
                ght_command("sync", "run", "--every", "1s"),
                cwd=tmp_path,
                env=ght_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        store = open_store(url)
        try:
            deadline = time.monotonic() + 40
            while len(_runs(store)) < 4:
                assert all(s.poll() is None for s in schedulers), "a scheduler exited"
                assert time.monotonic() < deadline, "fewer than four runs in 40 s"
                time.sleep(0.2)
            for scheduler in schedulers:
                scheduler.send_signal(signal.SIGTERM)  # by its PID; the current run finishes first
            errors = [s.communicate(timeout=60)[1] for s in schedulers]
        finally:
            for scheduler in schedulers:
                if scheduler.poll() is None:
                    scheduler.kill()
                    scheduler.wait()
        assert all(s.returncode == 0 for s in schedulers), errors
        runs = _runs(store)
        assert runs and all(r.status == "succeeded" for r in runs), [(r.status, r.error) for r in runs]
        spans = sorted((r.started_at, r.finished_at) for r in runs)
        for (_, finished), (started, _) in itertools.pairwise(spans):
            assert finished is not None and finished <= started, f"two runs of ch-orange overlapped: {spans}"
        # Both schedulers ran (each did some of the runs) and at least one found the site held.
        skipped = sum(e.count("skipped: site ch-orange") for e in errors)
        assert skipped >= 1, errors
    finally:
        postgres_server.drop_database(url.rsplit("/", 1)[1])


def _runs(store: Any) -> list[SyncRun]:
    with store.session() as session:
        return list(
            session.execute(
                select(SyncRun).where(col(SyncRun.site) == "ch-orange").order_by(col(SyncRun.started_at))
            ).scalars()
        )
