"""What every connector offers, and what a connector that can read deltas offers on top."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from ..delta import Watermark
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


@runtime_checkable
class DeltaConnector(Connector, Protocol):
    """A connector whose source keeps a change log, so that a run can read only what changed.

    `read_all` also takes a watermark, *before* reading, so that nothing changed during the read is
    missed (a change seen twice is harmless). `read_changes(since)` yields the entries changed since
    `since`, each whole (every requested attribute, not only the changed ones), and deletions as records
    with `deleted` True; an entry that left the scope (moved out of the base DN, no longer matching the
    filter) is reported as deleted too. It raises `WatermarkRejected` before yielding anything when it
    cannot continue from `since` (another DC, an expired cookie).

    After a read completed, `watermark` is where the next delta starts; it is None while a read is under
    way, after a failed read, or when the source could not give one (`no_watermark_reason` says why).
    """

    watermark: Watermark | None
    no_watermark_reason: str | None

    def read_changes(self, since: Watermark) -> Iterator[SourceRecord]: ...
