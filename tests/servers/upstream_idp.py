"""Upstream identity providers for the gateway's tests: npm oidc-provider looking like Pro Sante Connect
or like Entra ID (tests/oidc_peers/upstream.mjs), in a node subprocess on a loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from .gateway import REPO

PEERS = REPO / "tests" / "oidc_peers"


class UpstreamIdp:
    """`node tests/oidc_peers/upstream.mjs` with one configuration; stopped with `stop()`."""

    def __init__(
        self,
        kind: str,
        port: int,
        *,
        clients: list[dict[str, Any]],
        accounts: dict[str, dict[str, Any]],
        log_dir: Path,
        acr: str | None = None,
        amr: list[str] | None = None,
    ) -> None:
        if shutil.which("node") is None or not (PEERS / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("oidc-provider is not installed: run `make node-packages`")
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "port": port,
            "kind": kind,
            "clients": clients,
            "accounts": accounts,
            "acr": acr,
            "amr": amr,
        }
        self.log = log_dir / f"upstream-{kind}-{port}.log"
        self._log = self.log.open("ab")
        self.process = subprocess.Popen(
            ["node", str(PEERS / "upstream.mjs")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "UPSTREAM_CONFIG": json.dumps(config)},
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"upstream {kind} exited:\n{self.log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"upstream {kind} not ready:\n{self.log.read_text(errors='replace')}")

    def tamper_next_nonce(self) -> None:
        """The next ID token this provider issues carries a nonce the gateway never sent."""
        assert httpx.post(f"{self.url}/__test__/tamper-nonce", timeout=5).status_code == 204

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
