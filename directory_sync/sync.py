"""Running a sync: for each site, read its source, map, plan, and apply in one transaction.

A site whose source fails (down, refused, timed out, cut short) is recorded as a failed run and
changes nothing; the other sites go on. Configuration is validated for every selected site before
any site runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from .config import Settings, SiteMapping
from .connectors import open_connector
from .errors import ConfigError, SyncError
from .mapping import Mapper
from .reconcile import ActionKind, SitePlan, SitePlanner, apply_plan
from .store import RunStatus, Site, Store, SyncRun, utcnow

#: Called as progress(site, entries_read_so_far) while a site is being read.
Progress = Callable[[str, int], None]


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
    warnings: int = 0
    errors: int = 0
    error: str | None = None
    seconds: float = 0.0
    run_id: int | None = None
    plan: SitePlan | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    def as_dict(self, *, with_plan: bool = False) -> dict[str, Any]:
        data = {
            k: getattr(self, k)
            for k in (
                "site",
                "url",
                "status",
                "dry_run",
                "read",
                "created",
                "linked",
                "updated",
                "unchanged",
                "closed",
                "suspended",
                "warnings",
                "errors",
                "error",
                "seconds",
                "run_id",
            )
        }
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
    progress: Progress | None = None,
) -> list[SiteResult]:
    """Sync every selected site (all configured ones by default), one after the other."""
    mappings = check_sites(settings, sites)
    return [sync_site(site, settings, store, dry_run=dry_run, progress=progress) for site in mappings]


def sync_site(
    site: SiteMapping,
    settings: Settings,
    store: Store,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> SiteResult:
    connector = open_connector(site)
    mapper = Mapper(site, settings.professions)
    started = time.monotonic()
    result = SiteResult(site=site.code, url=connector.url, status=RunStatus.RUNNING, dry_run=dry_run)
    run_id = None if dry_run else _start_run(store, site.code)
    result.run_id = run_id
    with store.session() as session:
        planner = SitePlanner(session, site.code)
        try:
            for record in connector.read_all():
                planner.add(mapper.map(record))
                if progress is not None and planner.plan.read % 500 == 0:
                    progress(site.code, planner.plan.read)
            plan = planner.finish(complete=True)
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
        if not dry_run:
            now = utcnow()
            applied = apply_plan(
                session, plan, Site(code=site.code, name=site.site.name, finess=site.site.finess), now
            )
            result.suspended = applied.suspended
            session.commit()
    result.status = RunStatus.SUCCEEDED
    result.seconds = time.monotonic() - started
    if run_id is not None:
        _finish_run(store, run_id, result)
    return result


def _count(result: SiteResult, plan: SitePlan) -> None:
    result.read = plan.read
    result.unchanged = plan.unchanged
    result.created = plan.count(ActionKind.CREATE)
    result.linked = plan.count(ActionKind.LINK)
    result.updated = plan.count(ActionKind.UPDATE)
    result.closed = plan.count(ActionKind.CLOSE)
    result.errors = plan.count(ActionKind.REJECT)
    result.warnings = len(plan.warnings)


def _start_run(store: Store, site: str) -> int:
    with store.session() as session:
        # A run still marked running was interrupted (killed, or the host went down): say so.
        session.execute(
            update(SyncRun)
            .where(col(SyncRun.site) == site, col(SyncRun.status) == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, error="interrupted before it finished", finished_at=utcnow())
        )
        run = SyncRun(site=site, mode="full")
        session.add(run)
        session.commit()
        assert run.id is not None
        return run.id


def _finish_run(store: Store, run_id: int, result: SiteResult) -> None:
    with store.session() as session:
        run = session.get(SyncRun, run_id)
        assert run is not None
        for name in (
            "read",
            "created",
            "linked",
            "updated",
            "unchanged",
            "closed",
            "suspended",
            "warnings",
            "errors",
            "error",
        ):
            setattr(run, name, getattr(result, name))
        run.status = result.status
        run.finished_at = utcnow()
        session.commit()


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
