"""Prometheus metrics of the sync and the Entra ID export, read from the database when asked.

The sync and the export run as short jobs (cron, systemd timer, CronJob): a job has no process to
scrape. What they did is in the database (`sync_run`, `azure_export_run`, `azure_export_state`,
`review_case`), so `DirectoryCollector` reads it at scrape time. The gateway serves it from its own
`/metrics` (`sso_gateway.metrics`); `ght sync run --metrics-file` writes the same families in the
node_exporter textfile-collector format for hosts without the gateway (`write_textfile`, atomic).

Every value is a gauge of the last known state (the last run of each site, the last push); the one
counter, `ght_export_throttled_responses_total`, adds up the 429/503 answers of every push recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from .store import Person, ReviewCase, RunStatus, Store, SyncRun
from .store.models import ExportRun, ExportState, ExportStatus, ReviewStatus
from .sync import COUNTS

#: The counts of a sync run exposed as `ght_sync_last_run_accounts{kind=...}`.
SYNC_COUNTS = COUNTS
SYNC_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.RUNNING)


def _aware(when: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; the store writes UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _ts(when: datetime | None) -> float | None:
    when = _aware(when)
    return when.timestamp() if when is not None else None


def sync_metrics(session: Session, sites: list[str], now: datetime | None = None) -> list[Metric]:
    """Per site: the last run's status, start, end, duration and counts, and the last success.

    With `now`, also the ages (seconds since the last run started and since the last success): a
    scrape computes them; a textfile would freeze them, so it leaves them to `time() - ..._timestamp`.
    """
    status = GaugeMetricFamily(
        "ght_sync_last_run_status",
        "Status of the last sync run of each site: 1 for the current status, 0 for the others.",
        labels=["site", "status"],
    )
    started = GaugeMetricFamily(
        "ght_sync_last_run_timestamp_seconds", "When the last sync run of the site started.", labels=["site"]
    )
    finished = GaugeMetricFamily(
        "ght_sync_last_run_finished_timestamp_seconds",
        "When the last sync run of the site ended (absent while it runs).",
        labels=["site"],
    )
    duration = GaugeMetricFamily(
        "ght_sync_last_run_duration_seconds", "How long the last finished sync run took.", labels=["site"]
    )
    counts = GaugeMetricFamily(
        "ght_sync_last_run_accounts",
        "What the last sync run of the site counted: read, created, linked, updated, closed...",
        labels=["site", "kind"],
    )
    success = GaugeMetricFamily(
        "ght_sync_last_success_timestamp_seconds",
        "When the last successful sync run of the site ended.",
        labels=["site"],
    )
    reviews = GaugeMetricFamily(
        "ght_sync_review_cases_open", "Open review cases (accounts waiting for a human).", labels=["site"]
    )
    families: list[Metric] = [status, started, finished, duration, counts, success, reviews]
    age = last_age = None
    if now is not None:
        age = GaugeMetricFamily(
            "ght_sync_last_run_age_seconds",
            "Seconds since the last sync run of the site started.",
            labels=["site"],
        )
        last_age = GaugeMetricFamily(
            "ght_sync_last_success_age_seconds",
            "Seconds since the last successful sync run of the site ended.",
            labels=["site"],
        )
        families += [age, last_age]

    from .sync import last_runs  # here: the gateway's workers import this module, not the sync engine

    successes = dict(
        session.execute(
            select(col(SyncRun.site), func.max(col(SyncRun.finished_at)))
            .where(col(SyncRun.status) == RunStatus.SUCCEEDED)
            .group_by(col(SyncRun.site))
        ).all()
    )
    open_cases = dict(
        session.execute(
            select(col(ReviewCase.site), func.count())
            .where(col(ReviewCase.status) == ReviewStatus.OPEN)
            .group_by(col(ReviewCase.site))
        ).all()
    )
    for site, run in last_runs(session, sites).items():
        reviews.add_metric([site], open_cases.get(site, 0))
        if run is None:
            continue
        for value in SYNC_STATUSES:
            status.add_metric([site, value], 1 if run.status == value else 0)
        start = _ts(run.started_at)
        assert start is not None
        started.add_metric([site], start)
        end = _ts(run.finished_at)
        if end is not None:
            finished.add_metric([site], end)
            duration.add_metric([site], max(0.0, end - start))
        for name in SYNC_COUNTS:
            counts.add_metric([site, name], getattr(run, name))
        last = _ts(successes.get(site))
        if last is not None:
            success.add_metric([site], last)
        if now is not None and age is not None and last_age is not None:
            age.add_metric([site], max(0.0, now.timestamp() - start))
            if last is not None:
                last_age.add_metric([site], max(0.0, now.timestamp() - last))
    return families


def export_metrics(session: Session, now: datetime | None = None) -> list[Metric]:
    """The Entra ID export: the last push, what waits for the next one, and the throttling seen."""
    last = session.execute(
        select(ExportRun)
        .where(col(ExportRun.mode) == "push")
        .order_by(col(ExportRun.started_at).desc(), col(ExportRun.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    status = GaugeMetricFamily(
        "ght_export_last_push_status",
        "Status of the last `ght azure push`: 1 for the current status, 0 for the others.",
        labels=["status"],
    )
    started = GaugeMetricFamily(
        "ght_export_last_push_timestamp_seconds", "When the last `ght azure push` started."
    )
    duration = GaugeMetricFamily(
        "ght_export_last_push_duration_seconds", "How long the last finished push took."
    )
    throttled_last = GaugeMetricFamily(
        "ght_export_last_push_throttled_responses",
        "Graph answers 429 or 503 (throttled) during the last push.",
    )
    throttled = CounterMetricFamily(
        "ght_export_throttled_responses",
        "Graph answers 429 or 503 (throttled), over every push recorded.",
    )
    users = GaugeMetricFamily(
        "ght_export_users",
        "Cloud users by export state: pending (a create's outcome unknown), rejected (retried at the next "
        "push), exported, deleted.",
        labels=["state"],
    )
    changed = GaugeMetricFamily(
        "ght_export_people_changed_since_last_push",
        "People of the directory changed since the last push started: what the next push looks at "
        "(`ght azure plan` gives the exact changes).",
    )
    families: list[Metric] = [status, started, duration, throttled_last, throttled, users, changed]
    if now is not None:
        age = GaugeMetricFamily(
            "ght_export_last_push_age_seconds", "Seconds since the last `ght azure push` started."
        )
        families.append(age)
    total = session.execute(select(func.coalesce(func.sum(col(ExportRun.throttled)), 0))).scalar_one()
    throttled.add_metric([], float(total))
    for state, count in session.execute(
        select(col(ExportState.status), func.count()).group_by(col(ExportState.status))
    ).all():
        users.add_metric([str(state)], count)
    seen = {s.labels["state"] for s in users.samples}
    for state in ExportStatus:
        if state.value not in seen:
            users.add_metric([state.value], 0)
    if last is None:
        return families
    for value in SYNC_STATUSES:
        status.add_metric([value], 1 if last.status == value else 0)
    start = _ts(last.started_at)
    assert start is not None
    started.add_metric([], start)
    end = _ts(last.finished_at)
    if end is not None:
        duration.add_metric([], max(0.0, end - start))
    throttled_last.add_metric([], last.throttled)
    changed.add_metric(
        [],
        session.execute(
            select(func.count()).select_from(Person).where(col(Person.updated_at) > last.started_at)
        ).scalar_one(),
    )
    if now is not None:
        age.add_metric([], max(0.0, now.timestamp() - start))
    return families


class DirectoryCollector(Collector):
    """The sync and export families, read from the database at each collection.

    `sites`: the configured site codes (a function, so that a configuration reloaded is seen); sites
    with a recorded run are added, so a site removed from the configuration does not vanish silently.
    """

    def __init__(self, store: Store, sites: Callable[[], list[str]], *, with_ages: bool = True) -> None:
        self.store = store
        self.sites = sites
        self.with_ages = with_ages

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC) if self.with_ages else None
        with self.store.session() as session:
            recorded = session.execute(select(col(SyncRun.site)).distinct()).scalars().all()
            sites = list(dict.fromkeys([*self.sites(), *sorted(recorded)]))
            yield from sync_metrics(session, sites, now)
            yield from export_metrics(session, now)


def write_textfile(path: Path, store: Store, sites: list[str]) -> None:
    """The sync and export families in node_exporter's textfile format, replaced atomically (a temporary
    file in the same folder, renamed). node_exporter reads only files named `*.prom`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectoryCollector(store, lambda: sites, with_ages=False))
    write_to_textfile(str(path), registry)
