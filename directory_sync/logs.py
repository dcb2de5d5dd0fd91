"""One logging set-up for `ght` and the gateway: human text or JSON lines, with the request id.

`configure(fmt)` installs it in this process; `dict_config(fmt)` is the same as a `logging.config`
dictionary, which `ght gateway serve` hands to uvicorn so that every worker process (a fresh
interpreter) logs the same way. The format is, first found: the `--log-format` option, `$GHT_LOG_FORMAT`,
then the command's default (text for the CLI, JSON for `ght gateway serve`).

A JSON line holds `time` (UTC, ISO 8601), `level`, `logger`, `message`, `request_id` (the HTTP request
being served, from `REQUEST_ID`; null outside a request) and any `extra=` fields of the call. The
audit trail is not a log: it is the `audit` table; the `ght.audit` logger only echoes it.

Nothing here redacts: no secret is ever passed to a logger (tests/test_zz_log_secrets.py scans the
logs of the whole test suite for the secrets the tests used).
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
FORMATS: tuple[str, ...] = ("text", "json")
FORMAT_ENV = "GHT_LOG_FORMAT"
LEVEL_ENV = "GHT_LOG_LEVEL"

#: The id of the HTTP request this code runs for (set by the gateway's middleware; copied into the
#: worker threads that serve the request with the rest of the context).
REQUEST_ID: ContextVar[str | None] = ContextVar("ght_request_id", default=None)

#: Libraries whose INFO lines are full URLs (httpx logs every request it sends): a URL may carry a
#: secret (an `id_token_hint`, a code), so only their warnings and errors are logged.
QUIET_LOGGERS = ("httpx", "httpcore")

#: Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "color_message"}  # uvicorn's colours: for terminals only
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (`-` in text outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def choose_format(explicit: str | None, default: LogFormat = "text") -> LogFormat:
    """The option if given, else $GHT_LOG_FORMAT, else `default`. Raises ValueError for another word."""
    value = (explicit or os.environ.get(FORMAT_ENV) or default).strip().lower()
    if value not in FORMATS:
        raise ValueError(f"log format {value!r}: expected text or json")
    return "json" if value == "json" else "text"


def dict_config(fmt: LogFormat, level: str | None = None, *, default_level: str = "INFO") -> dict[str, Any]:
    """The `logging.config.dictConfig` of this set-up: one stderr handler on the root logger; uvicorn's
    loggers propagate to it (their own handlers are dropped). Level: `level`, $GHT_LOG_LEVEL, default."""
    level = (level or os.environ.get(LEVEL_ENV) or default_level).upper()
    formatter = f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"ght": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "ght",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
            },
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
    }


def configure(fmt: LogFormat, level: str | None = None, *, default_level: str = "INFO") -> None:
    """Install the set-up in this process (replaces the root logger's handlers)."""
    logging.config.dictConfig(dict_config(fmt, level, default_level=default_level))
