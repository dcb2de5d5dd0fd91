"""Token-endpoint throughput of `ght gateway serve`: client-credentials grants per second.

Starts a gateway on SQLite (or `--database-url`), registers a client, then drives the token endpoint
from an async httpx load generator on loopback with `--concurrency` connections for `--seconds` per
grant, and prints grants/s with p50/p95 latency and the conditions. Refresh grants, complete sign-ins
and the same run against npm oidc-provider are not measured yet (see benchmarks/README.md).

    python benchmarks/gateway_grants.py --workers 2 --concurrency 64 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from directory_sync.store import open_store  # noqa: E402
from tests.servers.gateway import GatewayProcess, ght, seed_directory, write_config  # noqa: E402
from tests.servers.slapd import free_port  # noqa: E402


async def hammer(
    url: str, forms: list[dict[str, str]], auth: tuple[str, str], seconds: float, conc: int
) -> list[float]:
    """Post token requests for `seconds` with `conc` concurrent connections; latencies in seconds."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(index: int) -> None:
            form = forms[index % len(forms)]
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await client.post(url, data=form, auth=auth)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code} {response.text[:200]}")
                body = response.json()
                assert "access_token" in body

        await asyncio.gather(*(worker(i) for i in range(conc)))
    return latencies


def report(name: str, latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    figures = {
        "per_second": len(ordered) / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))],
    }
    rate, p50, p95 = figures["per_second"], figures["p50_ms"], figures["p95_ms"]
    print(f"{name:<20}{rate:>10.0f}/s   p50 {p50:.1f} ms   p95 {p95:.1f} ms")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        url = args.database_url or f"sqlite:///{directory}/ght.db"
        seed_directory(open_store(url))
        port = free_port()
        config = write_config(directory, url, f"http://127.0.0.1:{port}", mappings_dir=REPO / "mappings")
        done = ght("clients", "add", "bench", "--grant", "client_credentials", "--json", config=config)
        client = json.loads(done.stdout)
        gateway = GatewayProcess(config, port=port, workers=args.workers)
        try:
            auth = (client["client_id"], client["client_secret"])
            token = f"{gateway.url}/token"
            print(
                f"gateway: {args.workers} worker(s), {url.split(':', 1)[0]}, RS256, JWT access tokens; "
                f"load: httpx async, {args.concurrency} connections, {args.seconds:g} s per grant, loopback; "
                f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
            )
            cc = asyncio.run(
                hammer(token, [{"grant_type": "client_credentials"}], auth, args.seconds, args.concurrency)
            )
            report("client_credentials", cc, args.seconds)
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
