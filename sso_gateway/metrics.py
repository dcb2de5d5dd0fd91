"""The gateway's Prometheus metrics, served at `/metrics` to the networks or the token allowed.

What the gateway counts itself (defined here, incremented where it happens):

| metric | labels | where |
|---|---|---|
| `ght_gateway_requests_total` | route (template), method, status | `web/observe.py` (pure ASGI) |
| `ght_gateway_request_duration_seconds` (histogram) | route, method | `web/observe.py` |
| `ght_gateway_signins_total` | result (`success` or the failure), site | `signin.py` |
| `ght_gateway_tokens_issued_total` | grant_type | `web/app.py` `/token` (a 200 answer) |
| `ght_gateway_ldap_bind_duration_seconds` (histogram) | site, outcome | `passthrough.py` |

plus the sync and export families read from the database at scrape time
(`directory_sync.metrics.DirectoryCollector`): the sync and the export are jobs that no one scrapes.

Several workers (`ght gateway serve --workers N`): each worker is a process with its own counters, and a
scrape reaches one of them. prometheus_client's multiprocess mode makes every worker write its values
to memory-mapped files in `$PROMETHEUS_MULTIPROC_DIR`, and the worker that answers a scrape sums the
files of all (`MultiProcessCollector`), those of workers that died or were restarted included: counters
never go back. `ght gateway serve` creates a fresh private directory (0700, in $TMPDIR) for it when it
starts more than one worker, and removes it when it stops; a worker that exits cleanly calls
`mark_process_dead` (only live gauges care; the gateway defines none). The mode must be chosen before
prometheus_client is imported: the workers are fresh interpreters (uvicorn spawns them) that inherit
the variable. One worker per process (Kubernetes pods): plain in-process metrics.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from directory_sync.config import GatewaySettings, Settings
from directory_sync.errors import ConfigError
from directory_sync.metrics import DirectoryCollector
from directory_sync.store import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: The gateway's own metrics, for a single process; with several workers the files are collected.
OWN = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "ght_gateway_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=OWN,
)
REQUEST_DURATION = Histogram(
    "ght_gateway_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=OWN,
)
SIGNINS = Counter(
    "ght_gateway_signins",
    "Sign-ins with a password, by result (success, wrong_password, unknown_login, throttled, "
    "directory_unavailable...) and by the site whose directory checked the password (local: a "
    "gateway password; none: not checked).",
    ["result", "site"],
    registry=OWN,
)
TOKENS_ISSUED = Counter(
    "ght_gateway_tokens_issued",
    "Token responses issued at /token, by grant type.",
    ["grant_type"],
    registry=OWN,
)
LDAP_BIND_DURATION = Histogram(
    "ght_gateway_ldap_bind_duration_seconds",
    "Time to check a password by LDAP bind on a site's directory (failover to its other URLs "
    "included), by site and outcome (accepted, rejected, unavailable).",
    ["site", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=OWN,
)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@contextmanager
def worker_metrics_dir(workers: int) -> Iterator[str | None]:
    """For `ght gateway serve`: with several workers, a fresh private directory for the workers' metric
    files, in the environment they inherit, removed afterwards. One given in the environment is used
    as it is (it must be empty when the gateway starts, and is left in place)."""
    if workers <= 1 or multiprocess_dir():
        yield multiprocess_dir()
        return
    directory = tempfile.mkdtemp(prefix="ght-metrics-")  # 0700
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def worker_exit() -> None:
    """A worker stops: its live gauges no longer count (its counters and histograms still do)."""
    directory = multiprocess_dir()
    if directory:
        multiprocess.mark_process_dead(os.getpid(), directory)


def scrape_registry(settings: Settings, store: Store) -> CollectorRegistry:
    """What /metrics answers: this worker's metrics (or every worker's), and the directory's."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory:
        multiprocess.MultiProcessCollector(registry, directory)
    else:
        registry.register(OWN)
    registry.register(DirectoryCollector(store, lambda: list(settings.sites)))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class MetricsAccess:
    """Who may read /metrics: an allowed network, or the bearer token. The token is read at start-up
    (a missing secret file stops the gateway there, in one line, not at the first scrape)."""

    def __init__(self, config: GatewaySettings, where: str | None = None) -> None:
        self.networks = list(config.metrics_networks)
        ref, token = config.metrics_token, None
        if ref is not None:
            try:
                token = ref.read()
            except ValueError as exc:
                raise ConfigError(where, "gateway.metrics_token", str(exc)) from None
            if len(token) < 16:
                raise ConfigError(where, "gateway.metrics_token", f"{ref.describe()}: under 16 characters")
        self._token = token.encode() if token else None

    def allows(self, address: str | None, authorization: str | None) -> bool:
        if self._token is not None and authorization:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), self._token):
                return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.networks)
