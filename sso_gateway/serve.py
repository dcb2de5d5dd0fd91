"""`ght gateway serve`: uvicorn running the gateway, in one process or several workers."""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn

from directory_sync.config import CONFIG_ENV, Settings
from directory_sync.logs import LogFormat, dict_config

from .gateway import Gateway
from .metrics import MetricsAccess, worker_metrics_dir


def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int = 1,
    *,
    log_level: str = "info",
    log_format: LogFormat = "json",
) -> None:
    """Serve until interrupted. Checks the configuration (and creates a first signing key) before binding.

    Every worker logs with `directory_sync.logs` (`log_format`); with several workers, their metrics
    meet in a private directory made for this run (`sso_gateway.metrics.worker_metrics_dir`).
    """
    gateway = Gateway(settings)
    gateway.keys.ensure_key()
    gateway.keys.signing_key()  # fails here, in one line, if the key-encryption key is not the right one
    MetricsAccess(gateway.config, str(settings.config_file or "ght.toml"))  # so does an unreadable token
    if settings.config_file is not None:
        os.environ[CONFIG_ENV] = str(Path(settings.config_file).resolve())
    os.environ.setdefault("GHT_DATABASE_URL", settings.database_url)
    with worker_metrics_dir(workers):
        uvicorn.run(
            "sso_gateway.web.app:create_app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            log_config=dict_config(log_format, default_level=log_level),
            proxy_headers=True,
            http="sso_gateway.web.protocol:GatheringHttpToolsProtocol",  # a response in one write
            access_log=False,  # URLs carry codes and states: the audit trail says what matters
        )
