"""Reading and mapping sites in a worker process, while this process correlates and writes.

A full sync is two halves of about the same weight: reading (LDAP decoding, mapping every attribute)
and reconciling (correlation, survivorship, SQL). Python runs one of them at a time per process, so on
two cores the worker reads and maps while the parent plans and applies: a run takes about as long as
the slower half, not the sum. The worker only reads; everything it found reaches the parent in
batches of mapped accounts, then its connector's watermark (or the error it met, re-raised here with
the same type, site and URL).

One worker serves a whole run (`ReadingProcess`), forked at the run's first read, as the run starts
and while this process is still small. A worker forked for each site, from a parent that by then held
the people index and the plans, cost more than it saved: after each fork the parent paid a
copy-on-write fault for every page it touched again (800,000 faults and 3.4 s of system time over a
first run of 100,000 accounts, against 180,000 and 1.9 s without). The worker reads the sites it is
asked for in order, and keeps what it read until the parent takes it, so that the next sites can be
read while the parent applies the current one (`directory_sync.sync.ReadAhead`). Delta reads go to
the worker too: a delta's decoding and mapping were about a fifth of its time, and the worker does
them for the next sites while this process applies the ones before. Where processes cannot be
forked, every read runs inline.

A scheduler (`ght sync run --every`) keeps one worker from run to run (`use` at each run): it is started
once, in the first run, and keeps its sources' connections (a delta's LDAP connection stays bound
between runs, see `LdapConnector.keep_connection`). It is started again only when a site's mapping or
the professions changed, or when it died. A scheduler's worker is a new interpreter (`spawned`), not a
fork: it holds nothing of the scheduler (no thread, no SQLite state), so it can also look a delta's
batches up in the directory, read-only (`reconcile.read_lookups`: the known accounts, the new
accounts' candidates), which then reach the run beside the batches; the run only merges them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .config import SiteMapping
from .connectors import DeltaConnector, open_connector
from .delta import Watermark, WatermarkRejected
from .errors import SourceReadIncomplete, SourceUnavailable, SyncError
from .mapping import MappedAccount, Mapper

log = logging.getLogger("ght.sync")

_BATCH = 500
#: A read's first batch is smaller: the run starts planning while the rest is read and looked up (the
#: first site of a delta is what a run waits for).
_FIRST_BATCH = 100
_LAST = ("end", "error")  # the kinds of message that end a read ("batch" and "lookups" do not)
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
_ERRORS: dict[str, type[SyncError]] = {
    cls.__name__: cls for cls in (SyncError, SourceUnavailable, SourceReadIncomplete, WatermarkRejected)
}


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class ReadingProcess:
    """The run's reading worker: reads and maps whole sites, one after the other, when asked.

    `request` a site's read (it starts at once if the worker is idle), then take its `messages`; a read
    no longer wanted is `cancel`led (what it sends is dropped). Forked at the first request; if it
    dies, the read under way fails with a clear error and the next request forks another.
    """

    def __init__(
        self,
        sites: Sequence[SiteMapping] = (),
        professions: Mapping[str, str] | None = None,
        *,
        spawned: bool = False,
    ) -> None:
        """`spawned`: start the worker as a new interpreter instead of forking this one. It then holds
        nothing of this process (SQLite's per-process state of the files it has open above all), so it
        can also look deltas up in the directory (`request`'s `lookups_in`). Starting it costs the
        imports (about half a second): for a worker that lives as long as a scheduler."""
        self._spawned = spawned
        self._sites = {site.code: site for site in sites}
        self._professions = dict(professions or {})
        self._worker: multiprocessing.process.BaseProcess | _Spawned | None = None
        self._commands: multiprocessing.connection.Connection | None = None
        self._results: multiprocessing.connection.Connection | None = None
        self._next = 0
        self._issued: set[int] = set()  # reads asked of the current worker, not yet over or cancelled
        self._held: dict[int, list[tuple[str, Any]]] = {}  # messages of reads asked later than the one read

    def use(self, sites: Sequence[SiteMapping], professions: Mapping[str, str]) -> None:
        """A new run's sites and professions. The worker stays if it knows them as they are (a
        scheduler's runs see the same mapping objects while the files are unchanged); otherwise it is
        stopped, and the next request forks one that knows them."""
        changed = dict(professions) != self._professions or any(
            self._sites.get(site.code) is not site for site in sites
        )
        if changed:
            self.close()
            self._professions = dict(professions)
        self._sites.update((site.code, site) for site in sites)

    def request(
        self, site: SiteMapping, since: Watermark | None = None, lookups_in: str | None = None
    ) -> int:
        """Ask for `site`'s full read (or, `since` given, what changed since that watermark); returns
        the read's number, for `messages`. `lookups_in`: the URL of the directory in which a delta's
        batches are also looked up (`reconcile.read_lookups`), sent as "lookups" messages before each
        batch."""
        if site.code not in self._sites or self._sites[site.code] is not site:
            self._sites[site.code] = site
            self.close()  # the worker knows the sites it was forked with: fork one that knows this one
        if self._worker is None or not self._worker.is_alive():
            self._fork()
        assert self._commands is not None
        self._next += 1
        # A forked worker must never open the directory: SQLite keeps per-process state of each open
        # database file (its locks, its shared memory), which a fork copies and two processes then share.
        lookups = lookups_in if self._spawned else None
        self._commands.send((self._next, site.code, since, lookups))
        self._issued.add(self._next)
        return self._next

    def asked(self, number: int) -> bool:
        """Whether read `number` is still to come from the current worker (not if it died since)."""
        return number in self._issued

    def cancel(self, number: int) -> None:
        """Read `number` is no longer wanted: what it sent, or sends, is dropped."""
        self._issued.discard(number)
        self._held.pop(number, None)

    def messages(self, number: int, site: SiteMapping) -> Iterator[tuple[str, Any]]:
        """The messages of read `number`, up to its end or error (then `cancel` it). The worker answers
        reads in the order they were asked: messages of cancelled reads met on the way are dropped,
        those of reads asked after this one are held for their turn."""
        held = self._held.pop(number, [])
        yield from held
        if held and held[-1][0] in _LAST:
            return
        assert self._results is not None and self._worker is not None
        while True:
            try:
                read, kind, payload = self._results.recv()
            except (EOFError, OSError):  # OSError: it died in the middle of a message
                worker = self._worker
                self.close()  # the next request forks another
                raise SourceReadIncomplete(
                    site.code,
                    site.connection.url,
                    f"the reading process died (exit code {worker.exitcode})",
                ) from None
            if read != number:
                if read in self._issued:
                    self._held.setdefault(read, []).append((kind, payload))
                continue  # else a cancelled read's
            yield kind, payload
            if kind in _LAST:
                return

    def close(self) -> None:
        self._issued.clear()
        self._held.clear()
        if self._worker is None:
            return
        assert self._commands is not None and self._results is not None
        self._commands.close()  # the worker sees the end of its commands, and stops
        self._results.close()
        self._worker.join(timeout=1)
        if self._worker.is_alive():
            self._worker.terminate()
            self._worker.join()
        self._worker = None

    def _fork(self) -> None:
        self.close()
        if self._spawned:
            self._worker, self._commands, self._results = _Spawned.start(self._sites, self._professions)
            return
        context = multiprocessing.get_context("fork")
        commands, command_sender = context.Pipe(duplex=False)
        result_receiver, results = context.Pipe(duplex=False)
        worker = context.Process(
            target=_serve, args=(self._sites, self._professions, commands, results), daemon=True
        )
        worker.start()
        commands.close()
        results.close()
        self._worker, self._commands, self._results = worker, command_sender, result_receiver


class _Spawned:
    """A worker started as a new interpreter (`python -c`, with the pipes' descriptors): unlike
    multiprocessing's spawn, it does not run the parent's main script again, which a scheduler's own
    script, written without a main guard, would not survive. Looks like a `multiprocessing.Process`
    to `ReadingProcess`."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid

    @classmethod
    def start(
        cls, sites: dict[str, SiteMapping], professions: dict[str, str]
    ) -> tuple[_Spawned, multiprocessing.connection.Connection, multiprocessing.connection.Connection]:
        command_in, command_out = os.pipe()
        result_in, result_out = os.pipe()
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from directory_sync.pipeline import _serve_spawned; _serve_spawned()",
                str(command_in),
                str(result_out),
            ],
            pass_fds=(command_in, result_out),
            stdin=subprocess.DEVNULL,  # a scheduler's own input is not the worker's
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        )
        os.close(command_in)
        os.close(result_out)
        commands = multiprocessing.connection.Connection(command_out, readable=False)
        results = multiprocessing.connection.Connection(result_in, writable=False)
        commands.send((sites, professions))
        return cls(process), commands, results

    def is_alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def terminate(self) -> None:
        self.process.terminate()


def _serve_spawned() -> None:
    """A spawned worker's start: its pipes from the command line, its sites as the first command."""
    commands = multiprocessing.connection.Connection(int(sys.argv[1]), writable=False)
    results = multiprocessing.connection.Connection(int(sys.argv[2]), readable=False)
    try:
        sites, professions = commands.recv()
    except (EOFError, OSError):
        return
    _serve(sites, professions, commands, results)


class MappedReader:
    """A site's accounts, read and mapped (by the run's `ReadingProcess` when there is one).

    Use `read_all()` or `read_changes(since)` once; afterwards `watermark` and `no_watermark_reason`
    are the connector's, as if it had run here.
    """

    def __init__(
        self, site: SiteMapping, professions: Mapping[str, str], reading: ReadingProcess | None = None
    ) -> None:
        self.site = site
        self.professions = dict(professions)
        self.connector = open_connector(site)
        self.watermark: Watermark | None = None
        self.no_watermark_reason: str | None = None
        self._reading = reading
        self._requested: int | None = None  # the number of the read asked for in advance
        self._lookups: list[Any] = []  # `reconcile.Lookups` received and not yet taken

    @property
    def url(self) -> str:
        return self.connector.url

    @property
    def supports_delta(self) -> bool:
        return isinstance(self.connector, DeltaConnector)

    def read_all(self) -> Iterator[MappedAccount]:
        return (account for batch in self._read(None) for account in batch)

    def read_changes(self, since: Watermark) -> Iterator[MappedAccount]:
        return (account for batch in self._read(since) for account in batch)

    def batches(self, since: Watermark | None = None) -> Iterator[list[MappedAccount]]:
        """The read (full, or since a watermark) in the batches it arrives in: each can be planned as
        soon as it is there."""
        return self._read(since)

    def start(self, since: Watermark | None = None, lookups_in: str | None = None) -> None:
        """Have the reading process start reading the whole site now (`since` given: what changed
        since that watermark), for a later `read_all()` (`read_changes(since)`). `lookups_in`: a
        delta's batches are also looked up in that directory (`take_lookups`)."""
        if self._reading is not None and self._requested is None and can_fork():
            self._requested = self._reading.request(self.site, since, lookups_in)

    def take_lookups(self) -> list[Any]:
        """The lookups the reading process made for the batches received so far (once each)."""
        lookups, self._lookups = self._lookups, []
        return lookups

    def close(self) -> None:
        """Forget a read asked for in advance and no longer wanted (what it sends is dropped)."""
        if self._requested is not None and self._reading is not None:
            self._reading.cancel(self._requested)
        self._requested = None

    def _read(self, since: Watermark | None) -> Iterator[list[MappedAccount]]:
        if self._reading is None or not can_fork():
            yield from self._inline(since)
            return
        number = self._requested
        if number is None or not self._reading.asked(number):  # not asked, or asked of a worker now gone
            number = self._reading.request(self.site, since)
        self._requested = None
        try:
            for kind, payload in self._reading.messages(number, self.site):
                if kind == "batch":
                    yield payload
                elif kind == "lookups":
                    self._lookups.append(payload)
                elif kind == "end":
                    self.watermark, self.no_watermark_reason = payload
                else:
                    name, url, problem = payload
                    raise _ERRORS.get(name, SyncError)(self.site.code, url, problem)
        finally:
            self._reading.cancel(number)  # over (or left midway: the rest is dropped, not held)

    def _inline(self, since: Watermark | None) -> Iterator[list[MappedAccount]]:
        mapper = Mapper(self.site, self.professions)
        connector = self.connector
        records = connector.read_all() if since is None else connector.read_changes(since)  # type: ignore[attr-defined]
        while batch := [mapper.map(record) for record in itertools.islice(records, _BATCH)]:
            yield batch
        if isinstance(connector, DeltaConnector):
            self.watermark, self.no_watermark_reason = connector.watermark, connector.no_watermark_reason


def _serve(
    sites: dict[str, SiteMapping],
    professions: dict[str, str],
    commands: multiprocessing.connection.Connection,
    results: multiprocessing.connection.Connection,
) -> None:
    """The worker: read each site asked for, send its batches, then its watermark or its error."""
    # A forked worker starts with the parent's descriptors: run locks, database sockets. It closes them
    # first, so that a worker outliving a killed run holds neither a lock nor a session.
    keep = sorted((commands.fileno(), results.fileno()))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, _MAX_FD)
    outbox: queue.SimpleQueue[tuple[int, str, Any] | None] = queue.SimpleQueue()
    # Sending blocks while the parent is busy elsewhere (applying the site before): a thread sends
    # while this one goes on reading, so that the read is done by the time the parent wants it.
    courier = threading.Thread(target=_send_all, args=(outbox, results), daemon=True)
    courier.start()
    connectors: dict[str, Any] = {}  # by site: a delta's connection stays bound for the next read
    directories: dict[str, Any] = {}  # by URL: where deltas are looked up (read-only engines)
    while True:
        try:
            number, code, since, lookups_in = commands.recv()
        except (EOFError, OSError):  # the runs are over, or the parent is gone
            break
        site = sites[code]
        connector = connectors.get(code)
        if connector is None:
            connector = connectors[code] = open_connector(site)
            if hasattr(connector, "keep_connection"):
                connector.keep_connection = True  # kept from one delta read of the site to the next
        directory = None
        if lookups_in is not None and since is not None:
            if lookups_in not in directories:
                directories[lookups_in] = _read_only_engine(lookups_in)
            directory = directories[lookups_in]
        _read_site(number, site, connector, professions, outbox, since, directory)
    for connector in connectors.values():
        if hasattr(connector, "close"):
            connector.close()
    for engine in directories.values():
        if engine is not None:
            engine.dispose()
    outbox.put(None)
    courier.join()


def _read_site(
    number: int,
    site: SiteMapping,
    connector: Any,
    professions: dict[str, str],
    outbox: queue.SimpleQueue[tuple[int, str, Any] | None],
    since: Watermark | None,
    directory: Any = None,
) -> None:
    try:
        mapper = Mapper(site, professions)
        batch: list[MappedAccount] = []
        new_so_far = 0
        sent = False

        def send(batch: list[MappedAccount]) -> None:
            nonlocal new_so_far, sent
            sent = True
            if directory is not None:
                lookups = _lookups(directory, site, batch, new_so_far)
                if lookups is not None:
                    new_so_far += lookups.new
                    outbox.put((number, "lookups", lookups))
            outbox.put((number, "batch", batch))

        records = connector.read_all() if since is None else connector.read_changes(since)
        for record in records:
            batch.append(mapper.map(record))
            if len(batch) >= (_BATCH if sent else _FIRST_BATCH):
                send(batch)
                batch = []
        if batch:
            send(batch)
        end: tuple[Any, Any] = (None, None)
        if isinstance(connector, DeltaConnector):
            end = (connector.watermark, connector.no_watermark_reason)
        outbox.put((number, "end", end))
    except SyncError as exc:
        outbox.put((number, "error", (type(exc).__name__, exc.url, exc.problem)))
    except Exception as exc:  # a bug in a connector must still reach the parent as one clear error
        problem = f"{type(exc).__name__}: {exc}"
        outbox.put((number, "error", ("SourceReadIncomplete", site.connection.url, problem)))


def _read_only_engine(url: str) -> Any:
    """An engine on the directory at `url` for lookups only (SQLite connections refuse to write), or
    None if none can be made here: the runs then look their batches up themselves."""
    from sqlalchemy import create_engine, event

    try:
        engine = create_engine(url)
    except Exception as exc:  # a driver this process cannot load, say: lookups are only a head start
        # (only the error's kind: its text may quote the URL, and the URL may hold a password)
        name = type(exc).__name__
        log.warning("the reading process cannot open the directory (%s): the runs look deltas up", name)
        return None
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA query_only=ON")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

    return engine


def _lookups(directory: Any, site: SiteMapping, batch: list[MappedAccount], new_so_far: int) -> Any:
    """`reconcile.read_lookups` for a batch, or None if the directory could not answer: the run then
    looks the batch up itself, as it would have without a reading process."""
    from sqlalchemy.exc import SQLAlchemyError

    from .reconcile import read_lookups

    try:
        return read_lookups(directory, site.code, batch, new_so_far)
    except SQLAlchemyError as exc:
        problem = getattr(exc, "orig", None) or type(exc).__name__  # the driver's words, not the SQL
        log.warning(
            "%s: the reading process could not look a batch up (%s): the run will", site.code, problem
        )
        return None


def _send_all(
    outbox: queue.SimpleQueue[tuple[int, str, Any] | None], results: multiprocessing.connection.Connection
) -> None:
    while (message := outbox.get()) is not None:
        try:
            results.send(message)
        except OSError:  # the parent is gone: nobody will read the rest
            os._exit(0)
