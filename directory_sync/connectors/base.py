"""What every connector offers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..records import SourceRecord


class Connector(Protocol):
    """Reads one site's source.

    `read_all` yields every account entry, then returns normally only if the source was read
    completely (all pages, no error, no truncation): that is the proof a full sync needs before it
    treats a missing account as gone. Any failure raises a `SyncError` naming the site and URL.
    """

    site: str

    @property
    def url(self) -> str: ...

    def read_all(self) -> Iterator[SourceRecord]: ...

    def count(self) -> int:
        """Connect, authenticate and count the account entries (for `ght sites test`)."""
        ...
