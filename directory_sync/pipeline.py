"""Reading and mapping a site in a worker process, while this process correlates and writes.

A full sync is two halves of about the same weight: reading (LDAP decoding, mapping every attribute)
and reconciling (correlation, survivorship, SQL). Python runs one of them at a time per process, so on
two cores the worker reads and maps while the parent plans and applies: a run takes about as long as
the slower half, not the sum. The worker only reads; everything it found reaches the parent in
batches of mapped accounts, then its connector's watermark (or the error it met, re-raised here with
the same type, site and URL). A delta read (what changed since the watermark: little, as a rule) runs
inline, where starting a worker would cost more than it saves; so does every read where processes
cannot be forked.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
from collections.abc import Iterator, Mapping
from typing import Any

from .config import SiteMapping
from .connectors import DeltaConnector, open_connector
from .delta import Watermark, WatermarkRejected
from .errors import SourceReadIncomplete, SourceUnavailable, SyncError
from .mapping import MappedAccount, Mapper

_BATCH = 500
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
_ERRORS: dict[str, type[SyncError]] = {
    cls.__name__: cls for cls in (SyncError, SourceUnavailable, SourceReadIncomplete, WatermarkRejected)
}


class MappedReader:
    """A site's accounts, read and mapped (in a worker process when the platform can fork).

    Use `read_all()` or `read_changes(since)` once; afterwards `watermark` and `no_watermark_reason`
    are the connector's, as if it had run here.
    """

    def __init__(self, site: SiteMapping, professions: Mapping[str, str]) -> None:
        self.site = site
        self.professions = dict(professions)
        self.connector = open_connector(site)
        self.watermark: Watermark | None = None
        self.no_watermark_reason: str | None = None

    @property
    def url(self) -> str:
        return self.connector.url

    @property
    def supports_delta(self) -> bool:
        return isinstance(self.connector, DeltaConnector)

    def read_all(self) -> Iterator[MappedAccount]:
        return self._read(None)

    def read_changes(self, since: Watermark) -> Iterator[MappedAccount]:
        return self._read(since)

    def _read(self, since: Watermark | None) -> Iterator[MappedAccount]:
        if since is not None or "fork" not in multiprocessing.get_all_start_methods():
            yield from self._inline(since)
            return
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_work, args=(self.site, self.professions, since, sender), daemon=True)
        worker.start()
        sender.close()
        try:
            while True:
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    raise SourceReadIncomplete(
                        self.site.code, self.url, f"the reading process died (exit code {worker.exitcode})"
                    ) from None
                if kind == "batch":
                    yield from payload
                elif kind == "end":
                    self.watermark, self.no_watermark_reason = payload
                    return
                else:
                    name, url, problem = payload
                    raise _ERRORS.get(name, SyncError)(self.site.code, url, problem)
        finally:
            receiver.close()
            if worker.is_alive():
                worker.terminate()
            worker.join()

    def _inline(self, since: Watermark | None) -> Iterator[MappedAccount]:
        mapper = Mapper(self.site, self.professions)
        connector = self.connector
        records = connector.read_all() if since is None else connector.read_changes(since)  # type: ignore[attr-defined]
        for record in records:
            yield mapper.map(record)
        if isinstance(connector, DeltaConnector):
            self.watermark, self.no_watermark_reason = connector.watermark, connector.no_watermark_reason


def _work(
    site: SiteMapping,
    professions: dict[str, str],
    since: Watermark | None,
    sender: multiprocessing.connection.Connection,
) -> None:
    """The worker: read, map, send batches; then the watermark, or the error."""
    # A forked worker starts with the parent's descriptors: the site's run lock, database sockets. It
    # closes them first, so that a worker outliving a killed run holds neither the lock nor a session.
    keep = sender.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, _MAX_FD)
    try:
        connector = open_connector(site)
        mapper = Mapper(site, professions)
        records = connector.read_all() if since is None else connector.read_changes(since)  # type: ignore[attr-defined]
        batch: list[MappedAccount] = []
        for record in records:
            batch.append(mapper.map(record))
            if len(batch) >= _BATCH:
                sender.send(("batch", batch))
                batch = []
        if batch:
            sender.send(("batch", batch))
        end: tuple[Any, Any] = (None, None)
        if isinstance(connector, DeltaConnector):
            end = (connector.watermark, connector.no_watermark_reason)
        sender.send(("end", end))
    except SyncError as exc:
        sender.send(("error", (type(exc).__name__, exc.url, exc.problem)))
    except Exception as exc:  # a bug in a connector must still reach the parent as one clear error
        sender.send(("error", ("SourceReadIncomplete", site.connection.url, f"{type(exc).__name__}: {exc}")))
    finally:
        sender.close()
