"""Sign-ins per second through nginx in front of two `ght gateway serve` processes, and the errors seen
while one of them is killed (SIGKILL) and restarted.

Everything on loopback, started here and stopped at the end: a private PostgreSQL
(tests/servers/postgres.py), two gateways on it (tests/servers/gateway.py), nginx as a round-robin load
balancer with passive health checks (tests/servers/nginx.py). The load generator is async httpx with
`--concurrency` clients; each runs complete sign-ins (authorize -> login page -> login form POST checked
against a local argon2id password -> code -> token, PKCE S256), one cookie jar per sign-in.

Three phases of `--seconds` each:
- steady: both gateways up, through nginx;
- one gateway, direct: the reference, the same load on one gateway without nginx;
- failover: gateway one is killed at `--kill-at` seconds and started again `--down` seconds later.

A step that gets 502/503/504 or loses its connection is a request that was in flight on the killed
process (nginx passes idempotent requests, and POSTs that never reached the dead process, to the
survivor itself): the client starts that sign-in again, up to 3 times. A sign-in that fails otherwise,
or after 3 attempts, is a failure. Bounded: at most 60 s per phase, 64 clients.

    python benchmarks/cluster_failover.py --concurrency 8 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from directory_sync.store import open_store  # noqa: E402
from tests.servers.gateway import (  # noqa: E402
    PASSWORD,
    GatewayProcess,
    form_fields,
    ght,
    pkce_pair,
    seed_directory,
    write_config,
)
from tests.servers.nginx import NginxServer, start_nginx  # noqa: E402
from tests.servers.postgres import start_postgres  # noqa: E402
from tests.servers.slapd import free_port  # noqa: E402

CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: the code is read from the redirect
LOGIN = "pgarcia"  # the seeded nurse, one active affiliation (no site to pick)
RETRYABLE = (502, 503, 504)


class Retry(Exception):
    pass


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    per_second: dict[int, int] = field(default_factory=dict)


async def _step(request: Any) -> httpx.Response:
    try:
        response: httpx.Response = await request
    except httpx.TransportError as error:
        raise Retry(type(error).__name__) from error
    if response.status_code in RETRYABLE:
        raise Retry(f"{response.status_code} {response.request.method} {response.request.url.path}")
    return response


async def sign_in(http: httpx.AsyncClient, base: str, client_id: str, secret: str) -> None:
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK, "scope": "openid profile",
        "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    page = await _step(http.get(f"{base}/authorize?{urlencode(params)}"))
    while page.status_code in (302, 303):
        page = await _step(http.get(urljoin(base + "/", page.headers["location"])))
    if page.status_code != 200:
        raise RuntimeError(f"login page: {page.status_code}")
    fields = form_fields(page.text)
    action = fields.pop("__action__")
    done = await _step(
        http.post(urljoin(base + "/", action), data={**fields, "login": LOGIN, "password": PASSWORD})
    )
    if done.status_code not in (302, 303) or not done.headers["location"].startswith(CALLBACK):
        raise RuntimeError(f"login form: {done.status_code} {done.text[:200]}")
    code = parse_qs(urlsplit(done.headers["location"]).query)["code"][0]
    tokens = await _step(
        http.post(
            f"{base}/token",
            data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                  "redirect_uri": CALLBACK},
            auth=(client_id, secret),
        )
    )  # fmt: skip
    if tokens.status_code != 200 or "id_token" not in tokens.json():
        raise RuntimeError(f"token: {tokens.status_code} {tokens.text[:200]}")


async def load(base: str, client_id: str, secret: str, conc: int, seconds: float, tally: Tally) -> None:
    start = time.monotonic()
    deadline = start + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            began = time.monotonic()
            for attempt in range(3):
                async with httpx.AsyncClient(timeout=30) as http:
                    try:
                        await sign_in(http, base, client_id, secret)
                    except Retry as why:
                        tally.retried.append(str(why))
                        if attempt == 2:
                            tally.failed.append(f"3 attempts: {why}")
                        continue
                    except Exception as error:  # counted and reported
                        tally.failed.append(repr(error)[:200])
                        break
                now = time.monotonic()
                tally.latencies.append(now - began)
                second = int(now - start)
                tally.per_second[second] = tally.per_second.get(second, 0) + 1
                break

    await asyncio.gather(*(worker() for _ in range(conc)))


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    lat = sorted(tally.latencies)
    return {
        "sign_ins": len(lat),
        "rate_per_s": round(len(lat) / seconds, 1),
        "p50_ms": round(statistics.median(lat) * 1000) if lat else None,
        "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000) if lat else None,
        "retried_steps": len(tally.retried),
        "retried_reasons": sorted(set(tally.retried)),
        "failed_sign_ins": len(tally.failed),
        "failures": tally.failed[:5],
        "per_second": [tally.per_second.get(s, 0) for s in range(int(seconds) + 1)],
    }


def nginx_view(nginx: NginxServer, since: float) -> dict[str, Any]:
    entries = [e for e in nginx.entries() if e.time >= since]
    by_upstream: dict[str, int] = {}
    for e in entries:
        if e.upstreams:
            by_upstream[e.upstreams[-1]] = by_upstream.get(e.upstreams[-1], 0) + 1
    return {
        "requests": len(entries),
        "answered_502_504": sum(1 for e in entries if e.status in RETRYABLE),
        "passed_to_next_upstream": sum(1 for e in entries if len(e.upstreams) > 1),
        "served_by": by_upstream,
    }


def conditions() -> dict[str, Any]:
    def out(*cmd: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"

    return {
        "cpu": out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "nginx": out("nginx", "-v"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15, help="per phase (at most 60)")
    parser.add_argument("--kill-at", type=float, default=4, help="seconds into the failover phase")
    parser.add_argument("--down", type=float, default=4, help="seconds the killed gateway stays down")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per gateway")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 2.0), 60.0)
    conc = min(max(args.concurrency, 1), 64)
    print("conditions:", json.dumps(conditions()), flush=True)

    with tempfile.TemporaryDirectory(prefix="ght-cluster-bench-") as scratch:
        tmp = Path(scratch)
        postgres = start_postgres(tmp / "postgres")
        gateways: list[GatewayProcess] = []
        nginx: NginxServer | None = None
        try:
            url = postgres.create_database()
            seed_directory(open_store(url))
            lb_port = free_port()
            issuer = f"http://127.0.0.1:{lb_port}"
            config = write_config(tmp / "ght", url, issuer, mappings_dir=REPO / "mappings")
            done = ght("people", "set-password", "--password-stdin", LOGIN, config=config, stdin=PASSWORD)
            assert done.returncode == 0, done.stderr
            added = ght("clients", "add", "bench", "--redirect-uri", CALLBACK, "--json", config=config)
            assert added.returncode == 0, added.stderr
            client = json.loads(added.stdout)
            cid, secret = client["client_id"], client["client_secret"]
            gateways = [GatewayProcess(config, workers=args.workers) for _ in range(2)]
            nginx = start_nginx(
                [f"127.0.0.1:{g.port}" for g in gateways], port=lb_port, prefix=tmp / "nginx", fail_timeout=5
            )
            asyncio.run(load(nginx.url, cid, secret, min(conc, 4), 2, Tally()))  # warm-up

            steady = Tally()
            since = time.time()
            asyncio.run(load(nginx.url, cid, secret, conc, seconds, steady))
            print("steady:", json.dumps({**summary(steady, seconds), "nginx": nginx_view(nginx, since)}))

            direct = Tally()  # the reference: one gateway, no nginx, same clients
            asyncio.run(load(gateways[1].url, cid, secret, conc, seconds, direct))
            print("one gateway, direct:", json.dumps(summary(direct, seconds)))

            failover = Tally()
            events: dict[str, float] = {}

            async def chaos() -> None:
                t0 = time.monotonic()
                await asyncio.sleep(args.kill_at)
                victim = gateways[0]
                os.killpg(victim.process.pid, signal.SIGKILL)  # by its PID: uvicorn and its workers
                victim.process.wait()
                events["killed_at_s"] = round(time.monotonic() - t0, 2)
                await asyncio.sleep(args.down)
                victim.stop()
                gateways[0] = await asyncio.to_thread(
                    GatewayProcess, config, port=victim.port, workers=args.workers
                )
                events["restarted_ready_at_s"] = round(time.monotonic() - t0, 2)

            async def phase() -> None:
                await asyncio.gather(load(nginx.url, cid, secret, conc, seconds, failover), chaos())

            since = time.time()
            asyncio.run(phase())
            print(
                "failover:",
                json.dumps({**summary(failover, seconds), **events, "nginx": nginx_view(nginx, since)}),
            )
        finally:
            if nginx is not None:
                nginx.cleanup()
            for gateway in gateways:
                gateway.stop()
            postgres.cleanup()


if __name__ == "__main__":
    main()
