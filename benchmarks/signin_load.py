"""Complete sign-ins per second against `ght gateway serve`, from a lean HTTP/1.1 client, with the CPU split.

Each connection is one browser at a shared workstation: one keep-alive socket, and a cookie jar emptied
before every sign-in (a new person: no gateway session to reuse). One sign-in is

    GET /authorize (code, PKCE S256, state, nonce) -> the login page (followed if redirected to it)
    -> POST the login form with its CSRF field -> 302/303 to the application with `code`, the same
    `state` and `iss` (RFC 9207) -> POST /token (code + verifier, client_secret_basic)
    -> 200 JSON with an access token, a refresh token and an ID token whose `nonce` is ours.

Every answer is checked (status, redirect target, fields): one wrong answer stops the measure with an
error. The client is raw asyncio (uvloop when installed) over HTTP/1.1 with keep-alive: the async httpx
client it replaces took a large share of the 2 cores it shares with the gateway (see
benchmarks/README.md, "Gateway").

Standalone, it starts the gateway as `gateway_grants.py` does (2 workers, LDAP bind to a private slapd,
SQLite or PostgreSQL) and measures sign-ins only, printing the CPU seconds each party used during the
measure (gateway workers, this client, slapd, the database, everything else on the machine):

    python benchmarks/signin_load.py --workers 2 --concurrency 64 --seconds 10 --database postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.servers.gateway import PASSWORD, pkce_pair  # noqa: E402

CALLBACK = "http://127.0.0.1:9/cb"  # never contacted: the code is read from the redirect
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


class SignInError(RuntimeError):
    """An answer was not what a working gateway gives: the measure is void."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; Set-Cookie values joined by "\n"
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Browser:
    """One keep-alive HTTP/1.1 connection to the gateway and a cookie jar."""

    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        """One request on the kept-alive connection (reopened once if the server had closed it)."""
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None and self.writer is not None
            lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
            if self.cookies:
                lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
            if method == "POST":
                lines.append("Content-Type: application/x-www-form-urlencoded")
                lines.append(f"Content-Length: {len(body)}")
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            try:
                return await self._answer()
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _answer(self) -> Answer:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                self._set_cookie(value)
            headers[name] = f"{headers[name]}\n{value}" if name in headers else value
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, headers, body)

    def _set_cookie(self, value: str) -> None:
        pair, *attributes = value.split(";")
        name, _, content = pair.strip().partition("=")
        expired = any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes)
        if expired or content in ("", '""'):
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = content


def _expect(condition: bool, what: str, answer: Answer | None = None) -> None:
    if not condition:
        detail = f": {answer.status} {answer.text[:300]!r}" if answer is not None else ""
        raise SignInError(f"{what}{detail}")


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class SignInFlow:
    """The complete sign-in of one person in a new browser session; returns the refresh token."""

    def __init__(
        self, issuer: str, client_id: str, secret: str, login: str, password: str = PASSWORD
    ) -> None:
        self.issuer = issuer.rstrip("/")
        parts = urlsplit(self.issuer)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.client_id, self.login, self.password = client_id, login, password
        basic = base64.b64encode(f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()
        self.token_headers = {"Authorization": f"Basic {basic}"}

    def browser(self) -> Browser:
        return Browser(self.host, self.port)

    def _target(self, location: str) -> str | None:
        """The request target of a redirect that stays on the gateway, else None."""
        url = urljoin(self.issuer + "/", location)
        if not url.startswith(self.issuer + "/"):
            return None
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _follow(self, browser: Browser, answer: Answer) -> Answer:
        for _ in range(5):
            if answer.status not in (302, 303):
                return answer
            target = self._target(answer.headers.get("location", ""))
            if target is None:
                return answer
            answer = await browser.request("GET", target)
        raise SignInError("too many redirects on the gateway")

    async def __call__(self, browser: Browser) -> str:
        browser.cookies.clear()  # a new person at the workstation
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": CALLBACK,
            "scope": "openid offline_access", "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })  # fmt: skip
        page = await self._follow(browser, await browser.request("GET", f"/authorize?{query}"))
        _expect(page.status == 200, "the login page", page)
        html = page.text
        action = _ACTION.search(html)
        fields = {unescape(k): unescape(v) for k, v in _HIDDEN.findall(html)}
        _expect(action is not None and "csrf_token" in fields, "a login form with its CSRF field", page)
        assert action is not None
        target = self._target(unescape(action.group(1)))
        _expect(target is not None, "a login form posting to the gateway", page)
        assert target is not None
        form = urlencode({**fields, "login": self.login, "password": self.password}).encode()
        done = await self._follow(browser, await browser.request("POST", target, form))
        location = done.headers.get("location", "")
        _expect(
            done.status in (302, 303) and location.startswith(CALLBACK + "?"), "a redirect with a code", done
        )
        back = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        _expect(back.get("state") == state, f"the same state back ({location})")
        _expect(back.get("iss") == self.issuer, f"iss in the redirect (RFC 9207) ({location})")
        _expect(bool(back.get("code")), f"a code ({location})")
        body = urlencode({
            "grant_type": "authorization_code", "code": back["code"], "code_verifier": verifier,
            "redirect_uri": CALLBACK,
        }).encode()  # fmt: skip
        answer = await browser.request("POST", "/token", body, self.token_headers)
        _expect(answer.status == 200, "tokens", answer)
        tokens = json.loads(answer.body)
        for name in ("access_token", "refresh_token", "id_token"):
            _expect(bool(tokens.get(name)), f"{name} in the token answer", answer)
        claims = _claims(tokens["id_token"])
        _expect(
            claims.get("nonce") == nonce and claims.get("iss") == self.issuer, "the ID token's nonce and iss"
        )
        _expect(claims.get("aud") in (self.client_id, [self.client_id]), "the ID token's audience")
        return str(tokens["refresh_token"])


async def run_signins(
    flow: SignInFlow,
    conc: int,
    seconds: float,
    refresh_tokens: list[str] | None = None,
    *,
    rounds: int | None = None,
) -> list[float]:
    """Sign-ins in a loop on `conc` browsers for `seconds` (or `rounds` each); latencies in seconds."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    browsers = [flow.browser() for _ in range(conc)]

    async def worker(browser: Browser) -> None:
        done = 0
        while (done < rounds) if rounds is not None else (time.monotonic() < deadline):
            done += 1
            start = time.perf_counter()
            token = await flow(browser)
            latencies.append(time.perf_counter() - start)
            if refresh_tokens is not None:
                refresh_tokens.append(token)

    try:
        await asyncio.gather(*(worker(b) for b in browsers))
    finally:
        for browser in browsers:
            await browser.close()
    return latencies


def event_loop_run(coroutine: Any) -> Any:
    """asyncio.run on uvloop when it is installed (less CPU per request for the client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# ------------------------------------------------------------------------------------ CPU split


SYSTEM_TIME: dict[int, float] = {}  # of each process, at the last _processes()


def _processes() -> Iterator[tuple[int, int, int, str, float]]:
    """(pid, ppid, session id, command name, CPU seconds) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        # fields after the name: state ppid pgrp session ... utime(12) stime(13) cutime cstime
        SYSTEM_TIME[int(entry)] = int(rest[12]) / tick
        yield int(entry), int(rest[1]), int(rest[3]), name, (int(rest[11]) + int(rest[12])) / tick


class CpuSplit:
    """CPU seconds used between `start()` and `stop()`, by party: processes found by the callables."""

    def __init__(self, parties: dict[str, Any]) -> None:
        self.parties = parties  # name -> callable(pid, ppid, sid, name) -> bool; first match wins
        self.before: dict[int, tuple[str, float, float]] = {}
        self.used: dict[str, float] = {}
        self.system: dict[str, float] = {}

    def _snapshot(self) -> dict[int, tuple[str, float, float]]:
        found: dict[int, tuple[str, float, float]] = {}
        for pid, ppid, sid, name, cpu in _processes():
            party = next((p for p, test in self.parties.items() if test(pid, ppid, sid, name)), "other")
            found[pid] = (party, cpu, SYSTEM_TIME[pid])
        return found

    def start(self) -> None:
        self.before = self._snapshot()
        self.started = time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._snapshot()
        self.wall = time.monotonic() - self.started
        used: dict[str, float] = {}
        system: dict[str, float] = {}
        for pid, (party, cpu, sys_cpu) in after.items():
            _, cpu0, sys0 = self.before.get(pid, (party, 0.0, 0.0))
            used[party] = used.get(party, 0.0) + cpu - cpu0
            system[party] = system.get(party, 0.0) + sys_cpu - sys0
        self.used, self.system = used, system
        return used

    def describe(self) -> str:
        total = sum(self.used.values()) or 1.0
        parts = [
            f"{party} {cpu:.1f} s ({100 * cpu / total:.0f}%; system {self.system[party]:.1f} s)"
            for party, cpu in sorted(self.used.items(), key=lambda x: -x[1])
        ]
        return f"CPU over {self.wall:.1f} s wall ({os.cpu_count()} cores): " + ", ".join(parts)


def report(name: str, latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    figures = {
        "per_second": len(ordered) / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))],
        "count": len(ordered),
    }
    print(
        f"{name:<34}{figures['per_second']:>8.0f}/s   p50 {figures['p50_ms']:7.1f} ms   "
        f"p95 {figures['p95_ms']:7.1f} ms   ({len(ordered)} in {seconds:g} s; "
        f"load {os.getloadavg()[0]:.1f})"
    )
    return figures


def httpx_sign_in(issuer: str, client_id: str, secret: str, login: str) -> Any:
    """The former client (async httpx, as gateway_grants.py had it), kept to compare: `--client httpx`."""
    import httpx

    from tests.servers.gateway import form_fields

    async def on_gateway(client: httpx.AsyncClient, response: httpx.Response) -> httpx.Response:
        while response.status_code in (302, 303) and response.headers["location"].startswith(("/", issuer)):
            response = await client.get(urljoin(issuer + "/", response.headers["location"]))
        return response

    async def step(index: int, client: httpx.AsyncClient) -> None:
        client.cookies.clear()
        verifier, challenge = pkce_pair()
        params = {
            "response_type": "code", "client_id": client_id, "redirect_uri": CALLBACK,
            "scope": "openid offline_access", "state": secrets.token_urlsafe(8),
            "code_challenge": challenge, "code_challenge_method": "S256",
        }  # fmt: skip
        page = await on_gateway(client, await client.get(f"{issuer}/authorize?{urlencode(params)}"))
        fields = form_fields(page.text)
        action = fields.pop("__action__")
        form = {**fields, "login": login, "password": PASSWORD}
        done = await on_gateway(client, await client.post(urljoin(issuer + "/", action), data=form))
        location = done.headers.get("location", "")
        _expect(done.status_code in (302, 303) and location.startswith(CALLBACK), "a redirect with a code")
        code = parse_qs(urlsplit(location).query)["code"][0]
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
        answer = await client.post(
            f"{issuer}/token", data={**form, "redirect_uri": CALLBACK}, auth=(client_id, secret)
        )
        _expect(answer.status_code == 200 and "id_token" in answer.json(), "tokens")

    return step


def profile(gateway_sid: int, directory: str, seconds: float) -> list[Any]:
    """py-spy on each worker process of the gateway (the session's processes but its leader)."""
    import subprocess

    Path(directory).mkdir(parents=True, exist_ok=True)
    found = [pid for pid, _, sid, name, _ in _processes() if sid == gateway_sid and pid != gateway_sid]
    workers = found or [gateway_sid]  # one worker: uvicorn serves in its own process
    spy = str(Path(sys.executable).parent / "py-spy")
    options = ["record", "--format", "raw", "--rate", "250", "--gil", "-d", str(int(seconds))]
    return [
        subprocess.Popen(
            [spy, *options, "-p", str(pid), "-o", f"{directory}/worker-{pid}.txt"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in workers
    ]


def main() -> None:
    import httpx

    from benchmarks.gateway_grants import LDAP_LOGIN, ldap_directory, load_average
    from tests.servers.gateway import GatewayProcess, ght
    from tests.servers.slapd import free_port

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="httpx: the former client")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record each gateway worker into DIR (raw)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        postgres = gateway = slapd = None
        try:
            if args.database == "postgres":
                from tests.servers.postgres import start_postgres

                postgres = start_postgres(directory / "pg")
                url = postgres.create_database()
            else:
                url = f"sqlite:///{directory}/ght.db"
            port = free_port()
            config, slapd = ldap_directory(directory, url, f"http://127.0.0.1:{port}")
            app = json.loads(
                ght("clients", "add", "app", "--redirect-uri", CALLBACK, "--json", config=config).stdout
            )
            gateway = GatewayProcess(config, port=port, workers=args.workers)
            flow = SignInFlow(gateway.url, app["client_id"], app["client_secret"], LDAP_LOGIN)
            print(
                f"gateway: {args.workers} worker(s), {url.split(':', 1)[0]}, LDAP bind (slapd); client: "
                f"{args.client}, {args.concurrency} browsers, {args.seconds:g} s; {os.cpu_count()} CPUs; "
                f"load average {load_average()}"
            )
            me = os.getpid()
            gateway_sid, slapd_pid = gateway.process.pid, slapd.pid
            split = CpuSplit({
                "gateway": lambda pid, ppid, sid, name: sid == gateway_sid,
                "client": lambda pid, ppid, sid, name: pid == me,
                "slapd": lambda pid, ppid, sid, name: pid == slapd_pid,
                "database": lambda pid, ppid, sid, name: name.startswith("postgres"),
            })  # fmt: skip

            if args.client == "httpx":
                from benchmarks.gateway_grants import drive

                step = httpx_sign_in(gateway.url, app["client_id"], app["client_secret"], LDAP_LOGIN)
                asyncio.run(drive(args.concurrency, args.warmup, step, shared=False))
                split.start()
                latencies = asyncio.run(drive(args.concurrency, args.seconds, step, shared=False))
            else:
                event_loop_run(run_signins(flow, args.concurrency, args.warmup))
                spies = profile(gateway_sid, args.profile, args.seconds) if args.profile else []
                split.start()
                latencies = event_loop_run(run_signins(flow, args.concurrency, args.seconds))
            split.stop()
            for spy in spies:
                spy.wait()
            report(f"gateway complete sign-in ({args.client})", latencies, args.seconds)
            print(split.describe())
            # Per sign-in: a figure that the machine's other load changes much less than the rate.
            per_signin = {p: 1000 * cpu / max(len(latencies), 1) for p, cpu in split.used.items()}
            print(
                "CPU per sign-in: "
                + ", ".join(f"{p} {ms:.2f} ms" for p, ms in sorted(per_signin.items(), key=lambda x: -x[1]))
            )
            print(f"load average at the end: {load_average()}")
            httpx.get(f"{gateway.url}/healthz").raise_for_status()
        finally:
            if gateway is not None:
                gateway.stop()
            if slapd is not None:
                slapd.stop()
            if postgres is not None:
                postgres.stop()
                postgres.cleanup()


if __name__ == "__main__":
    main()
