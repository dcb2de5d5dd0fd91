"""Token-endpoint throughput of `ght gateway serve`, against npm oidc-provider in the same run.

Starts a gateway (`--database sqlite`, the default, or `--database postgres`: a private PostgreSQL from
tests/servers/postgres.py, or `--database-url`), and npm oidc-provider configured alike
(tests/oidc_peers/provider.mjs: RS256, JWT access tokens, client_secret_basic, refresh-token rotation).
Then, on loopback with `--concurrency` connections for `--seconds` each (grants driven by wrk and a Lua
script when wrk is installed, else by async httpx; sign-ins by signin_load.py's raw HTTP/1.1 client, a
cookie jar per connection):

- gateway: client-credentials grants; complete sign-ins (authorize -> login page -> login form POST
  checked by an LDAP bind to a private slapd whose hospital was synced into the store, or with
  `--signin local` against a local argon2id password -> code -> token, PKCE S256); refresh grants,
  rotating the refresh tokens the sign-ins left;
- oidc-provider: client-credentials grants; refresh grants (each connection rotating its own token).
  Always with its development in-memory adapter (no database at all); with `--database postgres`, also
  a second instance whose models live in the gateway's PostgreSQL server (another database, the `pg`
  adapter of provider.mjs): the comparison the gateway's design calls for, all state in the database
  so that several processes behave as one. (SQLite: node 20 has no built-in driver, not measured.)

All servers stay up for the whole run; each grant measure on the gateway is followed at once by the
same measure on each oidc-provider, so that a ratio compares measures taken under the same load of the
machine. Prints rate, p50 and p95 per measure with the 1-minute load average, and the ratios gateway /
oidc-provider, one per oidc-provider (in memory always), with their conditions (gateway worker
processes against one node process).

    npm ci --prefix tests/oidc_peers
    python benchmarks/gateway_grants.py --workers 2 --concurrency 64 --seconds 10 --database postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from directory_sync.store import open_store  # noqa: E402
from tests.servers.gateway import (  # noqa: E402
    PASSWORD,
    GatewayProcess,
    ght,
    seed_directory,
    write_config,
)
from tests.servers.slapd import free_port  # noqa: E402

PEERS = REPO / "tests" / "oidc_peers"
#: How long oidc-provider may take to say it listens.
START_TIMEOUT = 60
CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: the code is read from the redirect
LOGIN = "pgarcia"  # the seeded nurse, one active affiliation (no site to pick)


def _limits(conc: int) -> httpx.Limits:
    return httpx.Limits(max_connections=conc, max_keepalive_connections=conc)


async def drive(
    conc: int, seconds: float, step: Callable[[int, httpx.AsyncClient], Awaitable[None]], shared: bool = True
) -> list[float]:
    """Run `step(worker, client)` in a loop on `conc` connections for `seconds`; latencies in seconds.

    `shared`: one client (pool of `conc` connections) for all; otherwise one client (cookie jar) each.
    """
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    clients = [httpx.AsyncClient(limits=_limits(conc), timeout=60)] if shared else []
    clients += [httpx.AsyncClient(limits=_limits(1), timeout=60) for _ in range(0 if shared else conc)]

    async def worker(index: int) -> None:
        client = clients[0 if shared else index]
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await step(index, client)
            latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker(i) for i in range(conc)))
    finally:
        for client in clients:
            await client.aclose()
    return latencies


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    assert "access_token" in body, body
    return body


def client_credentials(token_url: str, auth: tuple[str, str], form: dict[str, str]) -> Any:
    async def step(_: int, client: httpx.AsyncClient) -> None:
        _ok(await client.post(token_url, data={"grant_type": "client_credentials", **form}, auth=auth))

    return step


def refresh(token_url: str, auth: tuple[str, str], chains: list[str]) -> Any:
    """Each worker rotates its own refresh token: a reused one would be refused (and revoke the grant)."""

    async def step(index: int, client: httpx.AsyncClient) -> None:
        body = _ok(
            await client.post(
                token_url, data={"grant_type": "refresh_token", "refresh_token": chains[index]}, auth=auth
            )
        )
        chains[index] = body["refresh_token"]

    return step


def sign_in(
    issuer: str, client_id: str, secret: str, refresh_tokens: list[str], login: str = LOGIN
) -> Callable[[int, float, int | None], list[float]]:
    """Complete sign-ins, each in a fresh browser session: authorize -> login -> code -> token.

    Driven by benchmarks/signin_load.py's lean client (raw HTTP/1.1, keep-alive, a cookie jar per
    connection emptied before each sign-in, every answer checked): the async httpx client it replaces
    took about a third of the CPU the gateway got on the same 2 cores. Returns
    `measure(connections, seconds, rounds)` -> latencies; each sign-in's refresh token is appended to
    `refresh_tokens`.
    """
    from benchmarks.signin_load import SignInFlow, event_loop_run, run_signins

    flow = SignInFlow(issuer, client_id, secret, login)

    def measure(conc: int, seconds: float, rounds: int | None) -> list[float]:
        latencies: list[float] = event_loop_run(
            run_signins(flow, conc, seconds, refresh_tokens, rounds=rounds)
        )
        return latencies

    return measure


WRK_SCRIPT = r"""
-- %(kind)s grants for gateway_grants.py: POST form bodies, counts answers other than 200.
-- Refresh: a queue of refresh tokens per thread, each answer's new token queued again. More tokens than
-- connections: wrk asks for a new request (dropping the first) when a fresh socket is not yet writable.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "%(authorization)s"
local kind, body, tokens_file = "%(kind)s", "%(body)s", "%(tokens)s"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  queue, bad = {}, 0
  if kind == "refresh" then
    local i = 0
    for line in io.lines(tokens_file) do
      if i %% tonumber(args[1]) == id then table.insert(queue, line) end
      i = i + 1
    end
  end
end
function request()
  if kind ~= "refresh" then return wrk.format(nil, nil, nil, body) end
  local token = table.remove(queue, 1) or "exhausted"
  return wrk.format(nil, nil, nil, "grant_type=refresh_token&refresh_token=" .. token)
end
function response(status, headers, answer)
  if status ~= 200 and bad == 0 then io.stderr:write(status .. " " .. answer .. "\n") end
  if status ~= 200 then bad = bad + 1 end
  if kind == "refresh" then
    local token = answer:match('"refresh_token":"([^"]+)"')
    if token then table.insert(queue, token) end
  end
end
function done(summary, latency, requests)
  io.write(string.format('WRK {"requests": %%d, "seconds": %%f, "non2xx": %%d, "errors": %%d, '
    .. '"p50_ms": %%f, "p95_ms": %%f}\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000))
end
"""


def wrk(
    name: str,
    url: str,
    auth: tuple[str, str],
    kind: str,
    *,
    body: str = "",
    tokens: list[str] | None = None,
    conc: int,
    seconds: float,
    threads: int,
    directory: Path,
    parties: dict[str, list[int]] | None = None,
) -> dict[str, float]:
    """Drive `url` with wrk (Lua script above) and report its figures; every answer must be a 200.

    `parties`: name -> the processes (with their descendants) whose CPU per grant is printed too (the
    server, its database): a figure that the machine's other load changes much less than the rate."""
    basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    tokens_file = directory / f"{name.replace(' ', '_')}.tokens"
    tokens_file.write_text("\n".join(tokens or []) + "\n")
    script = directory / f"{name.replace(' ', '_')}.lua"
    script.write_text(
        WRK_SCRIPT % {"kind": kind, "authorization": f"Basic {basic}", "body": body, "tokens": tokens_file}
    )
    parties = parties or {}
    cpu_before = {party: tree_cpu(pids) for party, pids in parties.items()}
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{seconds:g}s", "--timeout", "30s",
         "-s", str(script), url, "--", str(threads)],
        capture_output=True, text=True, timeout=seconds + 120,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    figures = json.loads(line[4:])
    if figures["non2xx"] or figures["errors"]:
        raise RuntimeError(
            f"{name}: {figures['non2xx']} answers other than 200, {figures['errors']} errors: "
            f"{done.stderr[:500]}"
        )
    figures["per_second"] = figures["requests"] / figures["seconds"]
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {party: tree_cpu(pids) - cpu_before[party] for party, pids in parties.items()}
    used["wrk"] = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    requests = max(figures["requests"], 1)
    figures["cpu_ms_per_grant"] = {party: round(1000 * cpu / requests, 3) for party, cpu in used.items()}
    print(
        f"{name:<34}{figures['per_second']:>8.0f}/s   p50 {figures['p50_ms']:7.1f} ms   "
        f"p95 {figures['p95_ms']:7.1f} ms   ({figures['requests']} in {figures['seconds']:.1f} s, wrk; "
        f"load {os.getloadavg()[0]:.1f})"
    )
    print(
        "    CPU per grant: "
        + ", ".join(f"{party} {ms:.2f} ms" for party, ms in figures["cpu_ms_per_grant"].items())
    )
    return dict(figures)


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds used so far by these processes and their live descendants (from /proc)."""
    from benchmarks.signin_load import _processes

    children: dict[int, list[int]] = defaultdict(list)
    cpu: dict[int, float] = {}
    for pid, ppid, _, _, used in _processes():
        children[ppid].append(pid)
        cpu[pid] = used
    total, stack, seen = 0.0, list(roots), set()
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            total += cpu.get(pid, 0.0)
            stack.extend(children[pid])
    return total


def report(name: str, latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    figures = {
        "per_second": len(ordered) / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))],
        "count": len(ordered),
    }
    rate, p50, p95 = figures["per_second"], figures["p50_ms"], figures["p95_ms"]
    print(
        f"{name:<34}{rate:>8.0f}/s   p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   "
        f"({len(ordered)} in {seconds:g} s; load {os.getloadavg()[0]:.1f})"
    )
    return figures


LDAP_SITE, LDAP_SUFFIX, LDAP_LOGIN = "ch-avignon", "dc=ch-avignon,dc=fr", "ch-avignon\\hlefevre"


def ldap_directory(directory: Path, url: str, issuer: str) -> tuple[Path, Any]:
    """A real slapd for one hospital, synced into the store; a ght.toml whose gateway binds to it."""
    from directory_sync.config import load_settings
    from directory_sync.sync import run_sync
    from tests.hospitals import ldap_connection, person, suffix_ldif, write_site
    from tests.hospitals import write_config as write_sites_config
    from tests.servers.gateway import gateway_toml
    from tests.servers.slapd import Suffix, ssha, start_slapd

    dn, attributes = person(LDAP_SUFFIX, "hlefevre", "Lefèvre", "Hélène", title="Médecin")
    entries = [(dn, {**attributes, "userPassword": ssha(PASSWORD)})]
    ldif = suffix_ldif(directory / "site.ldif", LDAP_SUFFIX, entries)
    server = start_slapd(directory / "slapd", [Suffix(LDAP_SUFFIX, ldif)])
    os.environ["GHT_BENCH_LDAP_READER"] = server.reader_password  # the served gateway inherits it
    write_site(directory, LDAP_SITE, ldap_connection(server, LDAP_SUFFIX, "GHT_BENCH_LDAP_READER"))
    config = write_sites_config(directory, [LDAP_SITE], url)
    kek = directory / "kek"
    kek.write_text(secrets.token_urlsafe(32))
    config.write_text(config.read_text() + "\n" + gateway_toml(issuer, kek, login_ip_lockout_after=100_000))
    results = run_sync(load_settings(config), open_store(url))
    if not all(r.ok for r in results):
        server.stop()
        raise RuntimeError(f"sync failed: {[r.error for r in results]}")
    return config, server


class OidcProvider:
    """npm oidc-provider (tests/oidc_peers/provider.mjs) in a subprocess on a free loopback port."""

    def __init__(self, client_id: str, secret: str, database_url: str | None = None) -> None:
        """`database_url`: a PostgreSQL database for its models (`pg` adapter), else in memory."""
        if shutil.which("node") is None or not (PEERS / "node_modules" / "oidc-provider").exists():
            raise SystemExit("oidc-provider is not installed: run `npm ci --prefix tests/oidc_peers`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.adapter = "postgres" if database_url else "memory"  # `pg` adapter, or its development one
        extra = [database_url.replace("postgresql+psycopg://", "postgresql://")] if database_url else []
        # What node says if it fails; open as long as the provider runs (closed by `stop`).
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            ["node", str(PEERS / "provider.mjs"), str(self.port), client_id, secret, *extra],
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("{"):
            self.process.kill()
            self.process.wait()
            self.errors.seek(0)
            said = self.errors.read()[-2000:]
            self.stop()
            raise RuntimeError(
                f"oidc-provider ({self.adapter}) did not start within {START_TIMEOUT} s: {line!r} {said}"
            )
        self.version = json.loads((PEERS / "node_modules/oidc-provider/package.json").read_text())["version"]

    def refresh_tokens(self, n: int) -> list[str]:
        response = httpx.post(f"{self.url}/bench/refresh-tokens", params={"n": n}, timeout=60)
        response.raise_for_status()
        return list(response.json()["refresh_tokens"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", default=None, help="an existing, empty database instead")
    parser.add_argument("--skip-peer", action="store_true", help="the gateway only (no oidc-provider)")
    parser.add_argument(
        "--load", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator of the grants (sign-ins always use httpx: a multi-step browser flow)",
    )  # fmt: skip
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--signin", choices=("ldap", "local"), default="ldap",
        help="sign-ins checked by an LDAP bind to a private slapd (default) or by a local argon2id password",
    )  # fmt: skip
    args = parser.parse_args()
    conc, seconds = args.concurrency, args.seconds
    results: dict[str, dict[str, float]] = {}

    def grants(
        name: str,
        url: str,
        auth: tuple[str, str],
        *,
        form: str = "",
        chains: list[str] | None = None,
        server: subprocess.Popen[Any] | None = None,
        database: bool = False,
    ) -> None:
        """`server`: its process, whose CPU per grant is printed (and the database server's, if it
        uses one: PostgreSQL, shared by the gateway and the second oidc-provider)."""
        if args.load == "wrk":
            kind = "refresh" if chains is not None else "client_credentials"
            parties = {"server": [server.pid]} if server is not None else {}
            if database and postgres is not None:
                parties["PostgreSQL"] = [postgres.postmaster_pid()]
            results[name] = wrk(
                name, url, auth, kind, body=f"grant_type=client_credentials{form}", tokens=chains, conc=conc,
                seconds=seconds, threads=args.wrk_threads, directory=directory, parties=parties,
            )  # fmt: skip
            return
        extra = dict(parse_qs(form.lstrip("&")).items())
        step = (
            refresh(url, auth, chains)
            if chains is not None
            else client_credentials(url, auth, {k: v[0] for k, v in extra.items()})
        )
        results[name] = report(name, asyncio.run(drive(conc, seconds, step)), seconds)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        postgres = None
        if args.database_url:
            url = args.database_url
        elif args.database == "postgres":
            from tests.servers.postgres import start_postgres

            postgres = start_postgres(directory / "pg")
            url = postgres.create_database()
        else:
            url = f"sqlite:///{directory}/ght.db"
        gateway = peer = peer_db = slapd = None
        try:
            port = free_port()
            if args.signin == "ldap":
                config, slapd = ldap_directory(directory, url, f"http://127.0.0.1:{port}")
                login = LDAP_LOGIN
            else:
                seed_directory(open_store(url))
                config = write_config(
                    directory, url, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings",
                    login_ip_lockout_after=100_000,  # every sign-in comes from 127.0.0.1
                )  # fmt: skip
                done = ght("people", "set-password", "--password-stdin", f"ch-carpentras\\{LOGIN}",
                           config=config, stdin=PASSWORD)  # fmt: skip
                assert done.returncode == 0, done.stderr
                login = LOGIN
            service = json.loads(
                ght(
                    "clients", "add", "bench", "--grant", "client_credentials", "--json", config=config
                ).stdout
            )
            app = json.loads(
                ght("clients", "add", "app", "--redirect-uri", CALLBACK, "--json", config=config).stdout
            )
            gateway = GatewayProcess(config, port=port, workers=args.workers)
            print(
                f"gateway: {args.workers} worker(s), {url.split(':', 1)[0]}, RS256, JWT access tokens; "
                f"load: {args.load} for grants, signin_load.py for sign-ins, {conc} connections, "
                f"{seconds:g} s per measure, loopback; "
                f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average {load_average()}"
            )
            if not args.skip_peer:
                secret = secrets.token_urlsafe(32)
                peer = OidcProvider("bench", secret)
                print(f"oidc-provider {peer.version}: node {platform_node()}, one process, in-memory adapter")
                if postgres is not None:  # the fairer reference: its state in the same PostgreSQL
                    peer_db = OidcProvider("bench", secret, postgres.create_database())
                    print(
                        f"oidc-provider {peer_db.version}, second instance: one node process, its models in "
                        "the gateway's PostgreSQL server (another database, `pg` adapter, 8 connections)"
                    )
                else:
                    print(
                        "oidc-provider with a database adapter: not measured (only with --database postgres: "
                        f"node {platform_node()} has no built-in SQLite, node:sqlite needs node 22.5)"
                    )
            peers = [(f"oidc-provider ({p.adapter})", p) for p in (peer, peer_db) if p is not None]
            # Each gateway measure is followed at once by the same measure on oidc-provider (both
            # servers stay up, idle when not measured), so that a ratio compares two runs made under the
            # same load of the machine.
            cc_auth = (service["client_id"], service["client_secret"])
            token = f"{gateway.url}/token"
            grants("gateway client_credentials", token, cc_auth, server=gateway.process, database=True)
            for name, server in peers:
                grants(
                    f"{name} client_credentials", f"{server.url}/token", ("bench", secret), form="&scope=api",
                    server=server.process, database=server.adapter == "postgres",
                )  # fmt: skip
            issued: list[str] = []
            signins = sign_in(gateway.url, app["client_id"], app["client_secret"], issued, login)
            results["gateway sign-in"] = report(
                f"gateway complete sign-in ({args.signin})", signins(conc, seconds, None), seconds
            )
            while len(issued) < 2 * conc:  # spare chains: wrk drops a request it could not write at once
                signins(conc, 0, 1)
            chains = issued[: 2 * conc]
            app_auth = (app["client_id"], app["client_secret"])
            peer_chains = [server.refresh_tokens(2 * conc) for _, server in peers]
            grants("gateway refresh", token, app_auth, chains=chains, server=gateway.process, database=True)
            for (name, server), minted in zip(peers, peer_chains, strict=True):
                grants(
                    f"{name} refresh", f"{server.url}/token", ("bench", secret), chains=minted,
                    server=server.process, database=server.adapter == "postgres",
                )  # fmt: skip
            for name, _ in peers:  # both ratios: the in-memory one is never left out
                for grant in ("client_credentials", "refresh"):
                    ours, theirs = results[f"gateway {grant}"], results[f"{name} {grant}"]
                    print(
                        f"ratio gateway ({args.workers} worker processes, {url.split(':', 1)[0]}) / "
                        f"{name} (1 node process), {grant}: {ours['per_second'] / theirs['per_second']:.2f}"
                    )
            print(f"load average at the end: {load_average()}")
        finally:
            if gateway is not None:
                gateway.stop()
            if peer is not None:
                peer.stop()
            if peer_db is not None:
                peer_db.stop()
            if slapd is not None:
                slapd.stop()
            if postgres is not None:
                postgres.stop()
                postgres.cleanup()
    print(json.dumps(results))


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages (other work on the machine skews every figure)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def platform_node() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers (finally) when killed
    main()
