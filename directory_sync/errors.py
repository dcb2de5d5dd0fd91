"""Typed errors. Raised where the problem is known, caught where it can be handled.

Every `GhtError` is an *expected* failure: the CLI prints its message as one line and exits non-zero,
without a traceback. Anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class GhtError(Exception):
    """Base of every expected failure."""

    exit_code = 1


class ConfigError(GhtError):
    """A configuration or mapping file is wrong. Nothing runs."""

    exit_code = 2

    def __init__(
        self, file: Path | str | None, key: str | None, problem: str, *, line: int | None = None
    ) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.problem = problem
        self.line = line
        where = self.file or "configuration"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {problem}")


class SyncError(GhtError):
    """A sync of one site could not be completed. That site's run changes nothing."""

    def __init__(self, site: str, url: str, problem: str) -> None:
        self.site = site
        self.url = url
        self.problem = problem
        super().__init__(f"site {site} ({url}): {problem}")


class SourceUnavailable(SyncError):
    """The source could not be reached, refused the credentials, or did not answer in time."""


class SourceReadIncomplete(SyncError):
    """The source answered, but the read was cut short (size limit, lost page, malformed export).

    A partial read is never proof that an account is gone: nothing is closed or suspended.
    """


class StoreError(GhtError):
    """The territorial directory (database) cannot be used as asked."""


class NotFound(GhtError):
    """A person, site or run asked for by name does not exist."""
