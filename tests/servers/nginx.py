"""A private nginx as a round-robin load balancer on loopback, in front of N upstreams.

Why nginx: it is what a GHT's IT team puts in front of two gateway processes (Debian's package
``nginx``; ``make system-packages`` installs it). This module never touches the system's nginx (its
configuration, pid file, logs or service): every file of the private instance lives in a temp dir that
serves as its prefix, the master runs in the foreground (``-g 'daemon off;'``) under
``subprocess.Popen``, and it is stopped by its PID.

Passive health checks only (open-source nginx has no active ones): an upstream that refuses a
connection or times out is marked failed for ``fail_timeout`` after ``max_fails`` failures, and the
request is passed to the next upstream (``proxy_next_upstream error timeout``). nginx passes a POST to
the next upstream only if it was not sent yet (a refused connection); a POST that was in flight on a
process that died is answered 502 to the client, which retries it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from .slapd import free_port

__all__ = ["AccessEntry", "NginxError", "NginxServer", "find_nginx", "start_nginx"]

APT_HINT = "install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y nginx"
# One access-log line per request: what the tests read to see which upstream(s) served it.
_LOG_FORMAT = "$msec\\t$status\\t$request_method\\t$uri\\t$upstream_addr\\t$upstream_status\\t$request_time"


class NginxError(RuntimeError):
    """nginx is missing, its configuration is refused, or it did not start; includes its error log."""


@dataclass(frozen=True)
class AccessEntry:
    """One request as nginx logged it. ``upstreams`` lists every upstream tried, in order."""

    time: float
    status: int
    method: str
    path: str
    upstreams: tuple[str, ...]
    upstream_statuses: tuple[str, ...]
    seconds: float


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NginxError(f"nginx not found; {APT_HINT}")


def nginx_config(
    port: int,
    upstreams: Sequence[str],
    prefix: Path,
    *,
    max_fails: int = 1,
    fail_timeout: int = 10,
    worker_processes: int = 1,
) -> str:
    """The whole nginx.conf of a private load balancer (``upstreams`` are ``host:port``)."""
    servers = "\n".join(
        f"        server {u} max_fails={max_fails} fail_timeout={fail_timeout}s;" for u in upstreams
    )
    # As root, the workers would switch to `nobody`, who cannot enter pytest's private temp dirs.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {worker_processes};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format upstreams '{_LOG_FORMAT}';
    access_log {prefix}/access.log upstreams;

    upstream gateways {{
        # round-robin (the default); passive health checks: a refused connection or a timeout marks
        # the upstream failed for fail_timeout, and the request goes to the next one.
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Idempotent requests go to the next upstream on error or timeout; a POST only if it was
            # not sent yet (nginx never replays a non-idempotent request that reached an upstream).
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


class NginxServer:
    """A running private nginx: ``url`` is the load balancer, ``upstreams`` what it balances."""

    def __init__(self, prefix: Path, port: int, upstreams: Sequence[str], binary: str) -> None:
        self.prefix = prefix
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.upstreams = list(upstreams)
        self.binary = binary
        self.config = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.access_log = prefix / "access.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._owns_prefix = False

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.config),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def start(self, timeout: float = 10) -> None:
        check = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise NginxError(f"nginx -t refused {self.config}:\n{check.stdout}{check.stderr}")
        self.process = subprocess.Popen(
            self._command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._listening():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise NginxError(f"nginx not listening on {self.url} within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """SIGQUIT (graceful) to the master by its PID, then SIGKILL to its process group if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the master and its workers, by the master's PID
            process.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._owns_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return "(no nginx error log)"
        return "--- nginx error log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def entries(self) -> list[AccessEntry]:
        """The access log so far (nginx writes each line when the request ends)."""
        if not self.access_log.exists():
            return []
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) != 7:
                continue
            found.append(
                AccessEntry(
                    time=float(parts[0]),
                    status=int(parts[1]),
                    method=parts[2],
                    path=parts[3],
                    upstreams=tuple(u.strip() for u in parts[4].split(",") if u.strip() not in ("", "-")),
                    upstream_statuses=tuple(s.strip() for s in parts[5].split(",") if s.strip() != "-"),
                    seconds=float(parts[6]),
                )
            )
        return found

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<NginxServer {self.url} -> {', '.join(self.upstreams)}>"


def start_nginx(
    upstreams: Sequence[str],
    *,
    port: int | None = None,
    prefix: Path | None = None,
    max_fails: int = 1,
    fail_timeout: int = 10,
    worker_processes: int = 1,
) -> NginxServer:
    """Start nginx on 127.0.0.1:``port`` (free if not given), balancing round-robin over ``upstreams``.

    ``prefix`` (created if needed) receives nginx.conf, nginx.pid, error.log, access.log and the temp
    dirs; without it a temp dir is made and removed by ``cleanup``.
    """
    if not upstreams:
        raise ValueError("nginx needs at least one upstream")
    binary = find_nginx()
    owns = prefix is None
    prefix = Path(prefix) if prefix is not None else Path(tempfile.mkdtemp(prefix="ght-nginx-"))
    prefix.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # the free port may be taken by someone else meanwhile
        server = NginxServer(prefix, port or free_port(), upstreams, binary)
        server._owns_prefix = owns
        server.config.write_text(
            nginx_config(
                server.port,
                upstreams,
                prefix,
                max_fails=max_fails,
                fail_timeout=fail_timeout,
                worker_processes=worker_processes,
            )
        )
        try:
            server.start()
            return server
        except NginxError as error:
            if port is not None or attempt == 2 or "Address already in use" not in str(error):
                server.cleanup()
                raise
    raise AssertionError("unreachable")  # pragma: no cover
