"""Running a sync: for each site, read its source, map, plan, and apply in one transaction.

A site whose source fails (down, refused, timed out, cut short) is recorded as a failed run and
changes nothing; the other sites go on. Configuration is validated for every selected site before
any site runs.

A site is read completely (full) or only for what changed since its watermark (delta, see
`directory_sync.delta`): delta when a valid watermark exists, full when asked, when there is none, or
when the source refuses it, and the run says which and why. The new watermark is committed with the
changes it covers. A run that writes holds its site's run lock (`directory_sync.locking`): a second run
of the same site, from this host or another, is skipped.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from .config import Settings, SiteMapping
from .connectors import open_connector
from .delta import (
    SyncMode,
    Watermark,
    WatermarkRejected,
    choose_mode,
    load_watermark,
    mapping_scope,
    save_watermark,
)
from .errors import ConfigError, SyncError
from .locking import SiteBusy, site_lock
from .mapping import MappedAccount
from .pipeline import MappedReader, ReadingProcess
from .reconcile import (
    ActionKind,
    Actor,
    RunContext,
    SitePlan,
    SitePlanner,
    apply_plan,
    closure_threshold_problem,
    deprovision_expired,
)
from .store import RunStatus, Store, SyncRun, open_store, sa_table, utcnow

_RUN = sa_table(SyncRun)

#: Called as progress(site, entries_read_so_far) while a site is being read.
Progress = Callable[[str, int], None]


#: What a run of a site counts (its result, `ght sync run --json`, the metrics).
COUNTS = (
    "read",
    "created",
    "linked",
    "updated",
    "unchanged",
    "closed",
    "suspended",
    "reviews",
    "warnings",
    "errors",
)


@dataclass
class SiteResult:
    site: str
    url: str
    status: str
    dry_run: bool
    read: int = 0
    created: int = 0
    linked: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    suspended: int = 0
    reviews: int = 0
    warnings: int = 0
    errors: int = 0
    error: str | None = None
    seconds: float = 0.0
    run_id: int | None = None
    mode: str = SyncMode.FULL
    mode_reason: str | None = None
    plan: SitePlan | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    @property
    def skipped(self) -> bool:
        """Another run of the site held its lock: nothing was done, and nothing went wrong."""
        return self.status == RunStatus.SKIPPED

    def as_dict(self, *, with_plan: bool = False) -> dict[str, Any]:
        names = ("site", "url", "status", "dry_run", *COUNTS, "error", "seconds", "run_id", "mode")
        data = {k: getattr(self, k) for k in (*names, "mode_reason")}
        if with_plan and self.plan is not None:
            data["actions"] = [a.as_dict() for a in self.plan.actions]
            data["warning_details"] = self.plan.warnings
        return data


def check_sites(settings: Settings, only: list[str] | None = None) -> list[SiteMapping]:
    """Validate every selected site's mapping and secrets, before anything runs."""
    sites = settings.load_sites(only)
    for site in sites:
        ref = getattr(site.connection, "bind_password", None)
        if ref is not None:
            try:
                ref.read()
            except ValueError as exc:
                raise ConfigError(site.file, "connection.bind_password", str(exc)) from None
    return sites


def run_sync(
    settings: Settings,
    store: Store,
    *,
    sites: list[str] | None = None,
    dry_run: bool = False,
    allow_closures: int = 0,
    progress: Progress | None = None,
    full: bool = False,
    reading: ReadingProcess | None = None,
) -> list[SiteResult]:
    """Sync every selected site (all configured ones by default), one after the other.

    Sites share one `RunContext`: people created or linked at one site are candidates at the next.
    Then people suspended for longer than the grace period are deprovisioned. `reading`: a reading
    process kept from run to run (see `KeptRuns`); by default the run forks its own, when it reads.
    """
    with _collector_paused():
        return _run_sync(settings, store, sites, dry_run, allow_closures, progress, full, reading)


class KeptRuns:
    """What a long-lived scheduler (`ght sync run --every`) keeps from one run to the next, so that a
    quiet run costs little and a delta costs what it changes, not what the process must set up:

    - the store: SQLAlchemy's compiled statements and the pooled connections (opened again only when
      the configuration names another database);
    - its background checkpoints (`Store.checkpoints_in_background`), open for as long as the store:
      a run's last commits are checkpointed while the scheduler waits for the next run;
    - the reading process, started once (`pipeline.ReadingProcess.use`), whose delta connections stay
      bound between runs, and which also looks each delta's batches up in the directory (the known
      accounts, the new accounts' candidates) while the sites before are applied.

    A run's checkpoints wait for its end (`Store.checkpoints_held`): the scheduler does them while it
    waits for the next run.
    """

    def __init__(self) -> None:
        self.reading = ReadingProcess(spawned=True)  # it looks deltas up in the directory too
        self._store: Store | None = None
        self._url: str | None = None
        self._held = contextlib.ExitStack()

    def store(self, url: str) -> Store:
        if self._store is None or url != self._url:
            self._release_store()
            self._store, self._url = open_store(url), url
            self._held.enter_context(self._store.checkpoints_in_background())
        return self._store

    def run(self, settings: Settings, **options: Any) -> list[SiteResult]:
        """`run_sync` on the configured store, with what was kept."""
        return run_sync(settings, self.store(settings.database_url), reading=self.reading, **options)

    def close(self) -> None:
        self.reading.close()
        self._release_store()

    def _release_store(self) -> None:
        self._held.close()  # the last checkpoint
        if self._store is not None:
            self._store.engine.dispose()
        self._store = self._url = None

    def __enter__(self) -> KeptRuns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _run_sync(
    settings: Settings,
    store: Store,
    sites: list[str] | None,
    dry_run: bool,
    allow_closures: int,
    progress: Progress | None,
    full: bool,
    kept: ReadingProcess | None,
) -> list[SiteResult]:
    mappings = check_sites(settings, sites)
    config = settings.correlation
    reading = kept or ReadingProcess()
    reading.use(mappings, settings.professions)
    ahead = ReadAhead(settings, store, reading, full=full)
    if mappings and not dry_run:
        ahead.start_run(mappings)  # read while the run gets ready, and while the sites before apply
    with store.session() as session:
        context = RunContext.load(session, config)
    results = []
    # The log's checkpoints are done beside the run's work, never inside a site's commit (every other
    # delta used to pay for writing 10,000 pages back and syncing the file; see benchmarks/README); a
    # scheduler's, once the run is over (`Store.checkpoints_held`).
    held = store.checkpoints_held() if kept is not None else contextlib.nullcontext()
    with store.checkpoints_in_background(), held:
        try:
            for index, site in enumerate(mappings):
                result = sync_site(
                    site,
                    settings,
                    store,
                    context,
                    dry_run=dry_run,
                    allow_closures=allow_closures,
                    progress=progress,
                    full=full,
                    ahead=ahead,
                    following=mappings[index + 1] if index + 1 < len(mappings) else None,
                )
                if not result.ok and not dry_run:
                    changed = context.index.changed
                    with store.session() as session:  # forget what the failed site's plan put in the index
                        context = RunContext.load(session, config)
                    # but not who the sites before it changed: lookups read ahead may predate them
                    context.index.changed |= changed
                results.append(result)
        finally:
            ahead.close()
            if kept is None:
                reading.close()
    if not dry_run:
        with store.session() as session:
            deprovision_expired(session, config.safety.grace_days, utcnow(), Actor("sync: grace period"))
            session.commit()
    return results


class ReadAhead:
    """The next site's read, started while this one applies the current site.

    Applying a site's plan (SQL, then the commit) left the other core idle. The run's reading process
    now reads and maps the next site in the meantime, whole or only what changed since its watermark,
    and keeps what it read until asked. A read started ahead is used only if it is still the read the
    site's run would start: the same kind of read (full, or a delta from the same watermark), and no
    other run of the site started in between (that run may have read a newer state of the source than
    ours: the read is then done again, under the lock). When a run of the site is under way
    elsewhere, nothing is read ahead.
    """

    def __init__(self, settings: Settings, store: Store, reading: ReadingProcess, *, full: bool) -> None:
        self.settings, self.store, self.reading, self.full = settings, store, reading, full
        self._started: dict[str, _Started] = {}
        # A delta's batches are looked up in the directory by the reading process too (see
        # `reconcile.read_lookups`), unless it cannot open the directory (one in memory).
        url = store.engine.url
        in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        self._lookups_in = None if in_memory else url.render_as_string(hide_password=False)

    def start_run(self, sites: Sequence[SiteMapping]) -> None:
        """As a run begins: ask for the reads of its sites in their order, every delta at once (they
        are small; the reading process reads each while the sites before it are applied), up to and
        including the first full read (large: the sites after it are started one at a time, `start`,
        as the sites before them are applied)."""
        with self.store.session() as session:
            for site in sites:
                started = self.start(site, session)
                if started is None or not started.delta:
                    return

    def start(self, site: SiteMapping, session: Session | None = None) -> _Started | None:
        """Start `site`'s read (unless it is started already, or a run of the site is under way
        elsewhere). `session`: where to read the site's last run and watermark (else one of its own)."""
        if site.code in self._started:
            return self._started[site.code]
        if session is None:
            with self.store.session() as own:
                return self.start(site, own)
        reader = MappedReader(site, self.settings.professions, self.reading)
        latest = session.execute(_LATEST_RUN, {"site": site.code, "ours": -1}).first()
        if latest is not None and latest.status == RunStatus.RUNNING:
            return None  # under way elsewhere (or interrupted): the run will see to it
        choice = choose_mode(
            load_watermark(session, site.code),
            mapping_scope(site),
            supports_delta=reader.supports_delta,
            full=self.full,
            kind=site.connection.kind,
        )
        since = choice.since if reader.supports_delta else None
        reader.start(since, self._lookups_in if since is not None else None)
        started = self._started[site.code] = _Started(reader, since, latest.id if latest else None)
        return started

    def take(
        self,
        session: Session,
        site: SiteMapping,
        run_id: int | None,
        since: Watermark | None,
    ) -> MappedReader | None:
        """The read started for `site`, if it is still the one to use (else it is stopped): a full
        read (`since` None), or a delta from `since`."""
        started = self._started.pop(site.code, None)
        if started is None:
            return None
        latest = session.execute(_LATEST_RUN, {"site": site.code, "ours": run_id or -1}).first()
        if started.since == since and (latest.id if latest else None) == started.last_run:
            return started.reader
        started.reader.close()
        return None

    def close(self) -> None:
        for started in self._started.values():
            started.reader.close()
        self._started.clear()


@dataclass
class _Started:
    """A site's read asked for ahead: its reader, the watermark a delta reads from (None: a full read),
    and the site's latest run then (the read is used only if no other run of the site started since)."""

    reader: MappedReader
    since: Watermark | None
    last_run: int | None

    @property
    def delta(self) -> bool:
        return self.since is not None


#: The most recent run of a site other than run `ours`.
_LATEST_RUN = (
    select(_RUN.c.id, _RUN.c.status)
    .where(_RUN.c.site == bindparam("site"), _RUN.c.id != bindparam("ours"))
    .order_by(_RUN.c.id.desc())
    .limit(1)
)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector stays off during a run. A run builds large, long-lived structures (the
    people index, the plan); each time they grow by a quarter the collector walked all of them, which
    took 18% of a first run's time at 100,000 accounts (4.5 s of 25 s, 15 full passes) and a tenth of a
    delta's, to find about 600 objects in cycles. Reference counting still frees everything else as
    it is dropped; the few cycles wait for the collector's next pass after the run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sync_site(
    site: SiteMapping,
    settings: Settings,
    store: Store,
    context: RunContext,
    *,
    dry_run: bool = False,
    allow_closures: int = 0,
    progress: Progress | None = None,
    full: bool = False,
    ahead: ReadAhead | None = None,
    following: SiteMapping | None = None,
) -> SiteResult:
    """Sync one site under its run lock (a dry run, which writes nothing, takes none). With `ahead`,
    the site's read may have been started while the site before it was applied, and `following`'s
    read is started while this one is applied."""
    options: dict[str, Any] = {
        "allow_closures": allow_closures,
        "progress": progress,
        "full": full,
        "ahead": ahead,
        "following": following,
    }
    if dry_run:
        return _sync_site(site, settings, store, context, dry_run=True, **options)
    try:
        with site_lock(store, site.code):
            return _sync_site(site, settings, store, context, dry_run=False, **options)
    except SiteBusy as busy:
        url = open_connector(site).url
        return SiteResult(site.code, url, RunStatus.SKIPPED, dry_run=False, error=busy.holder)


def _sync_site(
    site: SiteMapping,
    settings: Settings,
    store: Store,
    context: RunContext,
    *,
    dry_run: bool,
    allow_closures: int,
    progress: Progress | None,
    full: bool,
    ahead: ReadAhead | None,
    following: SiteMapping | None,
) -> SiteResult:
    reader = MappedReader(site, settings.professions, ahead.reading if ahead else None)
    started = time.monotonic()
    result = SiteResult(site=site.code, url=reader.url, status=RunStatus.RUNNING, dry_run=dry_run)
    run_id = None if dry_run else _start_run(store, site.code)
    result.run_id = run_id
    with store.session() as session, _reading_through(context, session):
        scope = mapping_scope(site)
        delta_capable = reader.supports_delta
        choice = choose_mode(
            load_watermark(session, site.code),
            scope,
            supports_delta=delta_capable,
            full=full,
            kind=site.connection.kind,
        )
        result.mode, result.mode_reason = choice.mode, choice.reason
        delta = choice.since is not None and reader.supports_delta
        if ahead is not None and not dry_run:
            reader = ahead.take(session, site, run_id, choice.since if delta else None) or reader
        planner = SitePlanner(session, site.code, context, delta=delta)

        def feed(batches: Iterable[list[MappedAccount]]) -> None:
            for batch in batches:  # planned as they arrive
                # A delta's known accounts, new accounts' candidates: per batch (most of them read by the
                # reading process already).
                planner.look_up(batch, reader.take_lookups())
                for account in batch:
                    planner.add(account)
                if progress is not None:
                    progress(site.code, planner.plan.read)

        try:
            if delta and choice.since is not None:
                try:
                    feed(reader.batches(choice.since))
                except WatermarkRejected as rejected:  # raised before the first record: nothing planned
                    result.mode, result.mode_reason = SyncMode.FULL, rejected.problem
                    planner.load_all()
                    feed(reader.batches())
            else:
                feed(reader.batches())
            # Only a full read proves that an account not seen is gone; a delta closes what it reports.
            plan = planner.finish(complete=result.mode == SyncMode.FULL, describe=dry_run)
        except SyncError as exc:
            session.rollback()
            result.url = exc.url
            result.status, result.error = RunStatus.FAILED, exc.problem
            result.read = planner.plan.read
            result.seconds = time.monotonic() - started
            if run_id is not None:
                _finish_run(store, run_id, result)
            return result
        if progress is not None:
            progress(site.code, plan.read)
        result.plan = plan
        _count(result, plan)
        problem = closure_threshold_problem(
            plan, settings.correlation.safety, already_closed=context.closures, allowed=allow_closures
        )
        if problem:
            session.rollback()
            result.status = RunStatus.FAILED
            result.error = (
                f"stopped before applying: {problem}. Nothing was changed. If the source is right, "
                f"re-run with --allow-deletes {plan.count(ActionKind.CLOSE)}"
            )
            result.seconds = time.monotonic() - started
            if run_id is not None:
                _finish_run(store, run_id, result)
            return result
        if not dry_run:
            if ahead is not None and following is not None:
                ahead.start(following)  # read (or asked for) while this site is applied (see ReadAhead)
            session.commit()  # planning only read: the changes start from what is committed now
            now = utcnow()
            applied = apply_plan(
                session,
                plan,
                site.site,
                now,
                context,
                Actor(f"sync run {run_id}", run_id),
            )
            result.suspended = applied.suspended
            watermark = reader.watermark
            if watermark is None and reader.supports_delta and reader.no_watermark_reason:
                result.mode_reason = f"{result.mode_reason}; no watermark taken: {reader.no_watermark_reason}"
            # In the same transaction as the changes: an interrupted run leaves the old watermark, and
            # the run's record says it succeeded only if its changes were committed.
            save_watermark(session, site.code, watermark, scope=scope, run_id=run_id, now=now)
            result.status = RunStatus.SUCCEEDED
            result.seconds = time.monotonic() - started
            if run_id is not None:
                _record_finish(session, run_id, result)
            session.commit()
            return result
    result.status = RunStatus.SUCCEEDED
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def _reading_through(context: RunContext, session: Session) -> Iterator[None]:
    """The run's lookups read through the site's session while it is synchronised (see `RunReads`)."""
    context.reads.session = session
    try:
        yield
    finally:
        context.reads.session = None


def _count(result: SiteResult, plan: SitePlan) -> None:
    result.read = plan.read
    result.unchanged = plan.unchanged
    result.created = plan.count(ActionKind.CREATE)
    result.linked = plan.count(ActionKind.LINK)
    result.updated = plan.count(ActionKind.UPDATE)
    result.closed = plan.count(ActionKind.CLOSE)
    result.reviews = plan.reviews
    result.errors = plan.count(ActionKind.REJECT)
    result.warnings = len(plan.warnings)


# A run's record, written with statements built once: every site's run starts and finishes one.
_INTERRUPTED = (
    update(_RUN)
    .where(_RUN.c.site == bindparam("run_site"), _RUN.c.status == RunStatus.RUNNING)
    .values(status=RunStatus.FAILED, error="interrupted before it finished", finished_at=bindparam("now"))
)
_NEW_RUN = insert(_RUN)
_FINISH_RUN = update(_RUN).where(_RUN.c.id == bindparam("finished_run"))


def _start_run(store: Store, site: str) -> int:
    with store.engine.begin() as connection:
        now = utcnow()
        # A run still marked running was interrupted (killed, or the host went down): say so.
        connection.execute(_INTERRUPTED, {"run_site": site, "now": now})
        new = connection.execute(
            _NEW_RUN, {"site": site, "mode": "full", "status": RunStatus.RUNNING, "started_at": now}
        )
        key = new.inserted_primary_key
        assert key is not None and key[0] is not None
        return int(key[0])


def _finish_run(store: Store, run_id: int, result: SiteResult) -> None:
    with store.session() as session:
        _record_finish(session, run_id, result)
        session.commit()


def _record_finish(session: Session, run_id: int, result: SiteResult) -> None:
    values = {name: getattr(result, name) for name in (*COUNTS, "error", "mode", "mode_reason")}
    session.execute(
        _FINISH_RUN, {"finished_run": run_id, **values, "status": result.status, "finished_at": utcnow()}
    )


def last_runs(session: Session, sites: list[str]) -> dict[str, SyncRun | None]:
    """The most recent run of each site (None for a site never run)."""
    runs: dict[str, SyncRun | None] = {}
    for site in sites:
        runs[site] = session.execute(
            select(SyncRun)
            .where(col(SyncRun.site) == site)
            .order_by(col(SyncRun.started_at).desc(), col(SyncRun.id).desc())
            .limit(1)
        ).scalar_one_or_none()
    return runs
