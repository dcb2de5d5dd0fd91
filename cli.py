"""`ght`: how hospital IT staff run and inspect the territorial identity service.

This module only parses arguments and prints; the work is done in `directory_sync` (and later
`sso_gateway`), where tests can call it. Expected failures (`GhtError`) are printed as one line on
stderr with a non-zero exit code: 1 for a failed run, 2 for a configuration or usage error.
"""

from __future__ import annotations

import getpass
import json
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from directory_sync import review
from directory_sync.audit import event_dict, query_events
from directory_sync.config import Settings, load_settings
from directory_sync.connectors import open_connector
from directory_sync.errors import GhtError, SyncError
from directory_sync.logs import choose_format
from directory_sync.logs import configure as configure_logging
from directory_sync.people import get_person, restore_person, search_people
from directory_sync.reconcile import RunContext
from directory_sync.schedule import parse_interval, run_every
from directory_sync.store import Store, open_store
from directory_sync.sync import KeptRuns, SiteResult, check_sites, last_runs, run_sync

HERE = Path(__file__).resolve().parent
DEMO_CONFIG = HERE / "deploy" / "demo" / "ght.toml"

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Territorial identity service for a GHT: directory sync and single sign-on.",
)
sync_app = typer.Typer(
    no_args_is_help=True, help="Synchronise the hospitals' directories into the territorial directory."
)
people_app = typer.Typer(no_args_is_help=True, help="Look people up in the territorial directory.")
sites_app = typer.Typer(no_args_is_help=True, help="The hospitals (sites) and their sources.")
db_app = typer.Typer(no_args_is_help=True, help="The territorial directory's database schema.")
app.add_typer(sync_app, name="sync")
app.add_typer(people_app, name="people")
app.add_typer(sites_app, name="sites")
app.add_typer(db_app, name="db")

# Piped output (a file, grep, a CI log) gets full-width tables instead of 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $GHT_CONFIG, else ./ght.toml).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SiteOption = Annotated[list[str] | None, typer.Option("--site", "-s", help="Only this site (repeatable).")]
AdminOption = Annotated[
    str,
    typer.Option("--by", help="Who decides (recorded in the audit trail).", default_factory=getpass.getuser),
]
NoteOption = Annotated[str | None, typer.Option("--note", help="Why (recorded in the audit trail).")]


LogFormatOption = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="Log lines as text or json (default: $GHT_LOG_FORMAT, else text; json for `gateway serve`).",
        show_default=False,
    ),
]


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None, log_format: LogFormatOption = None) -> None:
    try:
        configure_logging(choose_format(log_format), default_level="WARNING")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    ctx.obj = {"config": config, "log_format": log_format}


def _settings(ctx: typer.Context) -> Settings:
    return load_settings(ctx.obj.get("config") if ctx.obj else None)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


# -- sync ---------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "read",
    "created",
    "linked",
    "reviews",
    "updated",
    "unchanged",
    "closed",
    "suspended",
    "errors",
)


def _summary_table(results: list[SiteResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("site")
    table.add_column("mode")
    for name in SUMMARY_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("status")
    for r in results:
        status = "[green]ok[/]" if r.ok else f"[red]failed[/]: {r.error}"
        if r.ok and r.dry_run:
            status = "[yellow]dry run[/]"
        if r.skipped:
            status = "[yellow]skipped[/]: another sync of this site is running"
        mode = "" if r.skipped else r.mode
        table.add_row(r.site, mode, *(str(getattr(r, n)) for n in SUMMARY_COLUMNS), status)
    return table


def _run_with_progress(
    settings: Settings, store: Store, sites: list[str] | None, dry_run: bool, quiet: bool, **options: Any
) -> list[SiteResult]:
    if quiet:
        return run_sync(settings, store, sites=sites, dry_run=dry_run, **options)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} entries"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}

        def report(site: str, count: int) -> None:
            if site not in tasks:
                tasks[site] = progress.add_task(f"reading {site}", total=None)
            progress.update(tasks[site], completed=count)

        return run_sync(settings, store, sites=sites, dry_run=dry_run, progress=report, **options)


def _plan_table(results: list[SiteResult]) -> Table:
    """Every planned action with its reason: what a run would do, account by account."""
    table = Table(title="Plan", title_justify="left")
    for column in ("site", "action", "source login", "person", "reason", "changes"):
        table.add_column(column)
    for result in results:
        for action in result.plan.actions if result.plan else []:
            person = action.territorial_login or (action.person_id or "")[:12]
            kind = "create + review" if action.review is not None else action.kind.value
            changes = "; ".join(f"{k}: {old} -> {new}" for k, (old, new) in action.changes.items())
            table.add_row(result.site, kind, action.login, person, action.reason, changes)
    return table


@sync_app.command("run")
def sync_run(
    ctx: typer.Context,
    site: SiteOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and plan, change nothing.")] = False,
    allow_deletes: Annotated[
        int,
        typer.Option(
            "--allow-deletes", min=0, help="Apply even if up to N accounts close (safety threshold)."
        ),
    ] = 0,
    full: Annotated[
        bool,
        typer.Option(
            "--full/--delta",
            help="Read every site completely, or only what changed since its watermark "
            "(the default: a site without a valid watermark is read completely, and the run says why).",
        ),
    ] = False,
    every: Annotated[
        str | None,
        typer.Option("--every", help="Run again on this interval (30s, 10m, 1h) until stopped (SIGTERM)."),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="After the run, write every site's sync and export metrics to this file (Prometheus "
            "node_exporter textfile format, replaced atomically; name it *.prom).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Read every site's directory and bring the territorial directory in step with it."""
    if every is not None:
        _sync_every(ctx, parse_interval(every), site, dry_run, allow_deletes, full, as_json, metrics_file)
        return
    _sync_once(_settings(ctx), None, site, dry_run, allow_deletes, full, as_json, metrics_file)


def _sync_once(
    settings: Settings,
    kept: KeptRuns | None,
    site: list[str] | None,
    dry_run: bool,
    allow_deletes: int,
    full: bool,
    as_json: bool,
    metrics_file: Path | None,
) -> None:
    """One `ght sync run` (`kept`: what a scheduler keeps from its earlier runs)."""
    check_sites(settings, site)
    store = kept.store(settings.database_url) if kept is not None else open_store(settings.database_url)
    results = _run_with_progress(
        settings,
        store,
        site,
        dry_run,
        quiet=as_json,
        allow_closures=allow_deletes,
        full=full,
        reading=kept.reading if kept is not None else None,
    )
    if metrics_file is not None:
        _write_metrics(metrics_file, store, settings)
    if as_json:
        _print_json({"dry_run": dry_run, "sites": [r.as_dict(with_plan=dry_run) for r in results]})
    else:
        if dry_run:
            out.print(_plan_table(results))
        out.print(_summary_table(results, "Dry run: nothing was changed" if dry_run else "Sync"))
        for r in results:
            if r.mode == "full" and not r.skipped and r.mode_reason:
                err.print(f"{r.site}: full read: {r.mode_reason.removesuffix(': full read')}")
            if r.warnings:
                err.print(
                    f"{r.site}: {r.warnings} warning(s); see `ght sync run --dry-run --json --site {r.site}`"
                )
    for r in results:
        if r.skipped:
            err.print(f"skipped: site {r.site}: another sync of this site is running ({r.error})")
    failed = [r for r in results if not r.ok and not r.skipped]
    for r in failed:
        err.print(f"error: site {r.site} ({r.url}): {r.error}")
    if failed:
        raise typer.Exit(1)


def _write_metrics(path: Path, store: Store, settings: Settings) -> None:
    """`--metrics-file`: the directory's sync and export metrics, for node_exporter's textfile collector."""
    from directory_sync.metrics import write_textfile

    try:
        write_textfile(path, store, settings.sites)
    except OSError as exc:
        err.print(f"error: cannot write the metrics file {path}: {exc.strerror}", markup=False)
        raise typer.Exit(1) from None


def _sync_every(
    ctx: typer.Context,
    interval: float,
    site: list[str] | None,
    dry_run: bool,
    allow_deletes: int,
    full: bool,
    as_json: bool,
    metrics_file: Path | None = None,
) -> None:
    """`ght sync run --every`: a run now, then one per interval, until SIGTERM or Ctrl-C.

    A failed run does not stop the schedule (the next one may succeed); a signal lets the current run
    finish, then ends the loop with exit code 0.
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def once() -> None:
        err.print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: sync run")
        try:
            # The configuration is read again for every run: an edited mapping is used at the next.
            _sync_once(_settings(ctx), kept, site, dry_run, allow_deletes, full, as_json, metrics_file)
        except typer.Exit:
            pass  # the failures are printed; the schedule goes on
        except GhtError as exc:
            err.print(f"error: {exc}", markup=False)
        sys.stdout.flush()

    with KeptRuns() as kept:  # the store, its checkpoints and the reading process, from run to run
        runs = run_every(interval, once, stop)
    err.print(f"stopped after {runs} run(s)")


@sync_app.command("plan")
def sync_plan(
    ctx: typer.Context,
    site: SiteOption = None,
    as_json: JsonOption = False,
) -> None:
    """What `ght sync run` would do now, action by action with the reason; changes nothing."""
    sync_run(ctx, site=site, dry_run=True, allow_deletes=0, as_json=as_json)


@sync_app.command("status")
def sync_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The last run of every site."""
    settings = _settings(ctx)
    store = open_store(settings.database_url)
    with store.session() as session:
        runs = last_runs(session, settings.sites)
    if as_json:
        _print_json([r.model_dump() if r else None for r in runs.values()])
        return
    table = Table(title="Last sync per site", title_justify="left")
    for column in ("site", "status", "mode", "started", "seconds", *SUMMARY_COLUMNS, "error"):
        table.add_column(column)
    for code, run in runs.items():
        if run is None:
            table.add_row(code, "never run")
            continue
        table.add_row(
            code,
            run.status,
            run.mode,
            f"{run.started_at:%Y-%m-%d %H:%M:%S}",
            f"{(run.finished_at - run.started_at).total_seconds():.1f}" if run.finished_at else "",
            *(str(getattr(run, n)) for n in SUMMARY_COLUMNS),
            run.error or "",
        )
    out.print(table)


# -- people -------------------------------------------------------------------------------------------


@people_app.command("list")
def people_list(
    ctx: typer.Context,
    search: Annotated[str | None, typer.Argument(help="Name, login, email, RPPS or territorial id.")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Only people affiliated with this site.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="active, suspended or deprovisioned.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    as_json: JsonOption = False,
) -> None:
    """List or search people."""
    settings = _settings(ctx)
    store = open_store(settings.database_url)
    with store.session() as session:
        views = search_people(session, search, site=site, status=status, limit=limit)
        if as_json:
            _print_json([v.as_dict() for v in views])
            return
        table = Table()
        for column in ("login", "name", "RPPS", "status", "sites (active*, primary+)", "source accounts"):
            table.add_column(column)
        for v in views:
            p = v.person
            sites = ", ".join(
                f"{a.site}{'*' if a.active else ''}{'+' if a.primary else ''}" for a, _ in v.affiliations
            )
            logins = ", ".join(f"{a.site}\\{a.login}" for a in v.accounts)
            table.add_row(
                p.login or p.id[:12],
                f"{p.family_name} {p.given_name or ''}".strip(),
                p.rpps or "",
                p.status,
                sites,
                logins,
            )
        out.print(table)
        out.print(f"{len(views)} people" + (" (limit reached: use --limit)" if len(views) == limit else ""))


@people_app.command("show")
def people_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id, RPPS, login, SITE\\login or email.")],
    as_json: JsonOption = False,
) -> None:
    """Everything the directory knows of one person: affiliations and source accounts."""
    settings = _settings(ctx)
    store = open_store(settings.database_url)
    with store.session() as session:
        data = get_person(session, key).as_dict()
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]{data['given_name'] or ''} {data['family_name']}[/]  ({data['status']})")
    for name in (
        "login",
        "id",
        "email",
        "rpps",
        "birth_date",
        "merged_into",
        "created_at",
        "updated_at",
        "suspended_at",
    ):
        if data[name]:
            out.print(f"  {name:<13}{data[name]}")
    table = Table(title="Affiliations", title_justify="left")
    for column in (
        "site",
        "FINESS",
        "profession",
        "department",
        "title",
        "employee id",
        "roles",
        "active",
        "since",
        "until",
    ):
        table.add_column(column)
    for a in data["affiliations"]:
        table.add_row(
            a["site"],
            a["finess"] or "",
            a["profession"] or "",
            a["department"] or "",
            a["title"] or "",
            a["employee_id"] or "",
            a["roles"] or "",
            ("yes, primary" if a["primary"] else "yes") if a["active"] else "no",
            a["started_at"][:10],
            (a["ended_at"] or "")[:10],
        )
    out.print(table)
    table = Table(title="Source accounts", title_justify="left")
    for column in ("site", "login", "state", "linked by", "DN", "facts"):
        table.add_column(column)
    for a in data["accounts"]:
        facts = ", ".join(f"{k}={v}" for k, v in sorted(a["facts"].items()) if v not in ("false", ""))
        table.add_row(a["site"], a["login"], a["state"], a["linked_by"], a["dn"], facts)
    out.print(table)
    table = Table(title="Where each value comes from", title_justify="left")
    for column in ("attribute", "value", "site", "account anchor", "since"):
        table.add_column(column)
    for name, source in sorted(data["provenance"].items()):
        table.add_row(name, str(data.get(name) or ""), source["site"], source["anchor"], source["since"][:19])
    out.print(table)


@people_app.command("restore")
def people_restore(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id or login, RPPS, SITE\\login or email.")],
    by: AdminOption,
) -> None:
    """Undo a bad sync for one person: reopen the accounts sync closed, lift suspension or deprovisioning."""
    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        view = restore_person(session, key, by, settings.correlation)
    out.print(f"{view.person.given_name or ''} {view.person.family_name}: {view.person.status}")


# -- sites --------------------------------------------------------------------------------------------


@sites_app.command("list")
def sites_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The configured sites and where their sources are."""
    settings = _settings(ctx)
    sites = settings.load_sites()
    rows = [
        {
            "site": s.code,
            "name": s.site.name,
            "finess": s.site.finess,
            "kind": s.connection.kind,
            "source": s.connection.url,
            "mapping": str(s.file),
        }
        for s in sites
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for column in ("site", "name", "finess", "kind", "source", "mapping"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    out.print(table)


@sites_app.command("test")
def sites_test(
    ctx: typer.Context,
    site: SiteOption = None,
    as_json: JsonOption = False,
) -> None:
    """Connect to each site's source, authenticate and count its accounts. Changes nothing."""
    settings = _settings(ctx)
    results: list[dict[str, Any]] = []
    for mapping in check_sites(settings, site):
        connector = open_connector(mapping)
        try:
            count = connector.count()
            results.append(
                {"site": mapping.code, "source": connector.url, "ok": True, "accounts": count, "error": None}
            )
        except SyncError as exc:
            results.append(
                {"site": mapping.code, "source": exc.url, "ok": False, "accounts": None, "error": exc.problem}
            )
    if as_json:
        _print_json(results)
    else:
        table = Table()
        for column in ("site", "source", "result", "accounts"):
            table.add_column(column)
        for r in results:
            table.add_row(
                r["site"],
                r["source"],
                "[green]ok[/]" if r["ok"] else f"[red]{r['error']}[/]",
                str(r["accounts"] if r["ok"] else ""),
            )
        out.print(table)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


# -- db -----------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Bring the database schema to this version's (safe to run twice; never downgrades)."""
    settings = _settings(ctx)
    store = open_store(settings.database_url, create=False)
    before, after = store.upgrade()
    if before == after:
        out.print(f"{store.display_url}: schema already at revision {after}")
    else:
        out.print(f"{store.display_url}: schema upgraded from {before or 'empty'} to {after}")


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """The schema revision of the database, and the one this version needs."""
    settings = _settings(ctx)
    store = open_store(settings.database_url, create=False)
    out.print(
        f"{store.display_url}: revision {store.current_revision() or 'none (empty)'}; "
        f"this version needs {store.head_revision()}"
    )


# -- review -------------------------------------------------------------------------------------------

review_app = typer.Typer(
    no_args_is_help=True, help="The review queue: accounts correlation could not decide alone."
)
app.add_typer(review_app, name="review")


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    status: Annotated[str, typer.Option("--status", help="open, linked, new, or all.")] = "open",
    site: Annotated[str | None, typer.Option("--site")] = None,
    as_json: JsonOption = False,
) -> None:
    """Review cases, oldest first."""
    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        cases = review.list_cases(session, status=None if status == "all" else status, site=site)
        data = [c.as_dict() for c in cases]
    if as_json:
        _print_json(data)
        return
    table = Table()
    for column in ("case", "status", "site", "account", "name", "best candidate", "score", "reason"):
        table.add_column(column)
    for c in data:
        best = c["candidates"][0] if c["candidates"] else {}
        name = f"{c['account'].get('given_name', '')} {c['account'].get('family_name', '')}".strip()
        table.add_row(
            str(c["id"]),
            c["status"],
            c["site"],
            c["login"],
            name,
            f"{best.get('name', '')} ({best.get('login', '')})" if best else "",
            str(best.get("score", "")),
            c["reason"],
        )
    out.print(table)
    out.print(f"{len(data)} case(s)")


@review_app.command("show")
def review_show(ctx: typer.Context, case: int, as_json: JsonOption = False) -> None:
    """One case: the account, and each candidate with its score and evidence."""
    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        data = review.get_case(session, case).as_dict()
    if as_json:
        _print_json(data)
        return
    out.print(f"[bold]Case {data['id']}[/] ({data['status']}): {data['site']}\\{data['login']}  {data['dn']}")
    out.print(f"  why: {data['reason']}")
    for name, value in sorted(data["account"].items()):
        out.print(f"  {name:<13}{value}")
    table = Table(title="Candidates", title_justify="left")
    for column in ("person", "login", "name", "sites", "status", "score", "rule", "evidence"):
        table.add_column(column)
    for c in data["candidates"]:
        table.add_row(
            c["person"],
            c["login"] or "",
            c["name"] or "",
            ", ".join(c["sites"]),
            c["status"] or "",
            str(c["score"]),
            c["rule"],
            "; ".join(c["evidence"]),
        )
    out.print(table)
    if data["status"] == "open":
        out.print(f"Decide: ght review link {data['id']} PERSON | ght review new {data['id']}")


@review_app.command("link")
def review_link(ctx: typer.Context, case: int, person: str, by: AdminOption, note: NoteOption = None) -> None:
    """Link the case's account to PERSON (a candidate's id, or any person's)."""
    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        review.link(session, case, person, by, settings.correlation, note)
    out.print(f"case {case}: account linked to {person}; the decision is remembered")


@review_app.command("new")
def review_new(ctx: typer.Context, case: int, by: AdminOption, note: NoteOption = None) -> None:
    """Keep the case's account as a person of its own."""
    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        review.keep_new(session, case, by, note)
    out.print(f"case {case}: kept as a person of its own; the decision is remembered")


@review_app.command("split")
def review_split(
    ctx: typer.Context,
    person: Annotated[str, typer.Argument(help="The person holding a wrong account (id, login, RPPS...).")],
    account: Annotated[str, typer.Argument(help="The account to take away, as SITE\\login.")],
    by: AdminOption,
    note: NoteOption = None,
) -> None:
    """Undo a wrong merge: move SITE\\login to a new person and recompute both."""
    settings = _settings(ctx)
    site, sep, login = account.partition("\\")
    if not sep:
        raise typer.BadParameter("expected SITE\\login", param_hint="ACCOUNT")
    with open_store(settings.database_url).session() as session:
        person_id = get_person(session, person).person.id
        logins = RunContext.load(session, settings.correlation).logins
        new_id = review.split(session, person_id, site, login, by, settings.correlation, logins, note)
    out.print(f"{account} now belongs to a new person {new_id}; it will not be linked to {person_id} again")


# -- audit --------------------------------------------------------------------------------------------


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("expected an ISO date (2026-11-23) or a duration (30m, 12h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command("audit")
def audit(
    ctx: typer.Context,
    person: Annotated[str | None, typer.Option("--person", help="Id, login, RPPS, SITE\\login...")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO date or duration (7d, 12h).")] = None,
    action: Annotated[str | None, typer.Option("--action", help="e.g. person.suspended, review.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 200,
    as_json: JsonOption = False,
) -> None:
    """The audit trail: every change to a person or a link, newest first."""
    settings = _settings(ctx)
    when = _since(since)
    with open_store(settings.database_url).session() as session:
        person_id = get_person(session, person).person.id if person else None
        events = [
            event_dict(e)
            for e in query_events(session, person_id=person_id, since=when, action=action, limit=limit)
        ]
    if as_json:
        _print_json(events)
        return
    table = Table()
    for column in ("at", "actor", "action", "person", "site", "changes", "reason"):
        table.add_column(column)
    for e in events:
        changes = "; ".join(
            f"{k}: {v.get('from')} -> {v.get('to')}" if isinstance(v, dict) else f"{k}: {v}"
            for k, v in e["changes"].items()
        )
        table.add_row(
            e["at"][:19],
            e["actor"],
            e["action"],
            (e["person"] or "")[:12],
            e["site"] or "",
            changes,
            e["reason"],
        )
    out.print(table)


# -- gateway (sso_gateway): serve, clients, keys, people set-password ---------------------------------

gateway_app = typer.Typer(
    no_args_is_help=True, help="The OIDC gateway: one sign-on for the group's applications."
)
clients_app = typer.Typer(no_args_is_help=True, help="Applications that sign people in through the gateway.")
keys_app = typer.Typer(no_args_is_help=True, help="The gateway's token-signing keys.")
app.add_typer(gateway_app, name="gateway")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")


def _gateway(ctx: typer.Context) -> Any:
    from sso_gateway import Gateway

    return Gateway(_settings(ctx))


@gateway_app.command("serve")
def gateway_serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the OpenID Connect provider (all state in the database: run as many as you like)."""
    from sso_gateway import serve

    log_format = choose_format(ctx.obj.get("log_format") if ctx.obj else None, default="json")
    serve(_settings(ctx), host, port, workers, log_format=log_format)


def _print_client(data: dict[str, Any], secret: str | None) -> None:
    for name in ("client_id", "name", "token_endpoint_auth_method", "grant_types", "scopes", "redirect_uris"):
        value = data[name]
        out.print(f"  {name:<27}{', '.join(value) if isinstance(value, list) else value}")
    if data["post_logout_redirect_uris"]:
        out.print(f"  {'post_logout_redirect_uris':<27}{', '.join(data['post_logout_redirect_uris'])}")
    if data["backchannel_logout_uri"]:
        out.print(f"  {'backchannel_logout_uri':<27}{data['backchannel_logout_uri']}")
    if data.get("min_acr"):
        out.print(f"  {'min_acr':<27}{data['min_acr']}")
    if secret:
        out.print(f"  {'client_secret':<27}{secret}", markup=False)
        out.print("[yellow]The secret is shown once: store it now (the gateway keeps only a digest).[/]")


@clients_app.command("add")
def clients_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The application's name, shown on the sign-in page.")],
    redirect_uri: Annotated[
        list[str] | None, typer.Option("--redirect-uri", help="Exact redirect URI (repeatable).")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="A public client (no secret; PKCE).")] = False,
    post_logout: Annotated[
        list[str] | None, typer.Option("--post-logout-redirect-uri", help="Exact URI (repeatable).")
    ] = None,
    backchannel: Annotated[str | None, typer.Option("--backchannel-logout-uri")] = None,
    grant: Annotated[list[str] | None, typer.Option("--grant", help="Grant type (repeatable).")] = None,
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Allowed scope (repeatable).")] = None,
    auth_method: Annotated[str | None, typer.Option("--auth-method", help="Token endpoint auth.")] = None,
    jwks: Annotated[Path | None, typer.Option("--jwks", help="JWKS file (private_key_jwt).")] = None,
    min_acr: Annotated[
        str | None,
        typer.Option("--min-acr", help="Lowest level of assurance (acr) it accepts (see CLAIMS.md)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register an application; prints its client id, and its secret once."""
    from sso_gateway.assurance import check_level
    from sso_gateway.clients import describe

    keys = json.loads(jwks.read_text()) if jwks else None
    gateway = _gateway(ctx)
    if min_acr is not None:
        check_level(min_acr, gateway.config)
    new = gateway.clients.add(
        name,
        redirect_uris=redirect_uri or [],
        public=public,
        post_logout_redirect_uris=post_logout or [],
        backchannel_logout_uri=backchannel,
        grant_types=grant,
        scopes=scope,
        auth_method=auth_method,
        jwks=keys,
        min_acr=min_acr,
    )
    if as_json:
        _print_json({**describe(new.record), "client_secret": new.secret})
        return
    out.print(f"Client [bold]{name}[/] registered:")
    _print_client(describe(new.record), new.secret)


@clients_app.command("list")
def clients_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every registered application."""
    from sso_gateway.clients import describe

    rows = [describe(c) for c in _gateway(ctx).clients.list()]
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for column in ("client id", "name", "auth", "grants", "redirect URIs"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["client_id"],
            r["name"],
            r["token_endpoint_auth_method"],
            ", ".join(r["grant_types"]),
            ", ".join(r["redirect_uris"]),
        )
    out.print(table)


@clients_app.command("show")
def clients_show(ctx: typer.Context, client_id: str, as_json: JsonOption = False) -> None:
    """One application's registration (never its secret)."""
    from sso_gateway.clients import describe

    data = describe(_gateway(ctx).clients.get(client_id))
    if as_json:
        _print_json(data)
    else:
        _print_client(data, None)


@clients_app.command("remove")
def clients_remove(ctx: typer.Context, client_id: str) -> None:
    """Remove an application: its tokens stop working at once."""
    _gateway(ctx).clients.remove(client_id)
    out.print(f"Client {client_id} removed.")


@clients_app.command("set-min-acr")
def clients_set_min_acr(
    ctx: typer.Context,
    client_id: str,
    acr: Annotated[str, typer.Argument(help="The lowest level it accepts; 'none': the network's rule.")],
) -> None:
    """Set the lowest level of assurance (acr) an application accepts: below it, the person steps up."""
    from sso_gateway.assurance import check_level

    gateway = _gateway(ctx)
    level = None if acr.lower() == "none" else check_level(acr, gateway.config)
    gateway.clients.set_min_acr(client_id, level)
    out.print(
        f"Client {client_id}: minimum level {level or 'none (the network rule alone)'} "
        "(every serving gateway process applies it within a few seconds)."
    )


@clients_app.command("rotate-secret")
def clients_rotate_secret(ctx: typer.Context, client_id: str, as_json: JsonOption = False) -> None:
    """Give an application a new secret (the old one stops working at once); prints it once."""
    new = _gateway(ctx).clients.rotate_secret(client_id)
    if as_json:
        _print_json({"client_id": client_id, "client_secret": new.secret})
        return
    out.print(f"New secret for {client_id}:")
    out.print(f"  {new.secret}", markup=False)
    out.print("[yellow]The secret is shown once: store it now.[/]")


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    publish_delay: Annotated[
        int | None,
        typer.Option("--publish-delay", min=0, help="Seconds in the JWKS before it signs (default: config)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a signing key: in the JWKS now, signing after the publish delay; the old one retires."""
    info = _gateway(ctx).keys.rotate(publish_delay)
    if as_json:
        _print_json(info.as_dict())
        return
    when = f"{info.not_before:%Y-%m-%d %H:%M:%S}"
    out.print(f"Key {info.kid} ({info.alg}) published now; it signs from {when} UTC.")


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The signing keys and their state: next, signing, retiring, expired."""
    infos = _gateway(ctx).keys.all()
    if as_json:
        _print_json([k.as_dict() for k in infos])
        return
    table = Table()
    for column in ("kid", "alg", "state", "created", "signs from", "unpublished at"):
        table.add_column(column)
    for k in infos:
        table.add_row(
            k.kid,
            k.alg,
            k.state,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.not_before:%Y-%m-%d %H:%M}",
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "",
        )
    out.print(table)


@people_app.command("sign-out")
def people_sign_out(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id, RPPS, login, SITE\\login or email.")],
    by: AdminOption,
    note: NoteOption = None,
) -> None:
    """End every gateway session of a person and revoke their refresh tokens (audited). Applications
    with a back-channel logout URI are told; access tokens already issued expire on their own (minutes)."""
    gateway, person = _person_at_gateway(ctx, key)
    ended, told = gateway.logout.sign_out_person(person.id, reason=note or "signed out by IT", by=by)
    out.print(
        f"{person.given_name or ''} {person.family_name} ({person.id}): ended {ended} session(s), "
        f"{told} application(s) told by back-channel logout; refresh tokens revoked."
    )


@people_app.command("set-password")
def people_set_password(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id, RPPS, login, SITE\\login or email.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Give a person a local gateway password (argon2id), for people no hospital directory holds."""
    from sso_gateway.local_credentials import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise typer.BadParameter("the two passwords differ")
    store = open_store(_settings(ctx).database_url)
    with store.session() as session:
        person = get_person(session, key).person
        set_password(session, person.id, password)
        session.commit()
    out.print(f"Local password set for {person.given_name or ''} {person.family_name} ({person.id}).")


mfa_app = typer.Typer(no_args_is_help=True, help="A person's second factors (TOTP apps, security keys).")
people_app.add_typer(mfa_app, name="mfa")


def _person_at_gateway(ctx: typer.Context, key: str) -> tuple[Any, Any]:
    gateway = _gateway(ctx)
    with gateway.store.session() as session:
        person = get_person(session, key).person
    return gateway, person


@mfa_app.command("list")
def people_mfa_list(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id, RPPS, login, SITE\\login or email.")],
    as_json: JsonOption = False,
) -> None:
    """A person's second factors (never their secrets) and how many recovery codes are left."""
    gateway, person = _person_at_gateway(ctx, key)
    factors = gateway.mfa.factors(person.id)
    left = gateway.mfa.recovery_codes_left(person.id)
    if as_json:
        _print_json({"person": person.id, "factors": [f.as_dict() for f in factors], "recovery_codes": left})
        return
    name = f"{person.given_name or ''} {person.family_name}".strip()
    if not factors:
        out.print(f"{name} ({person.id}) has no second factor.")
        return
    table = Table(title=f"{name} ({person.id})")
    for column in ("id", "kind", "label", "added", "last used"):
        table.add_column(column)
    for f in factors:
        used = f"{f.last_used_at:%Y-%m-%d %H:%M}" if f.last_used_at else ""
        table.add_row(f.id, f.kind, f.label, f"{f.created_at:%Y-%m-%d %H:%M}", used)
    out.print(table)
    out.print(f"Recovery codes left: {left}")


@mfa_app.command("reset")
def people_mfa_reset(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Territorial id, RPPS, login, SITE\\login or email.")],
    by: AdminOption,
    note: NoteOption = None,
    keep_sessions: Annotated[
        bool,
        typer.Option("--keep-sessions", help="Leave the person's sessions (signed in with the old factors)."),
    ] = False,
) -> None:
    """Remove every second factor and recovery code of a person (audited): they enrol again. Their
    sessions end too (a lost or stolen factor must not keep a session open), unless --keep-sessions."""
    gateway, person = _person_at_gateway(ctx, key)
    removed = gateway.mfa.reset(person.id, by=by, reason=note)
    out.print(
        f"Removed {removed} second factor(s) of {person.given_name or ''} {person.family_name} "
        f"({person.id}); they must enrol again (from a hospital network)."
    )
    if not keep_sessions:
        ended, told = gateway.logout.sign_out_person(person.id, reason="mfa_reset", by=by)
        out.print(f"Ended {ended} session(s); {told} application(s) told by back-channel logout.")


# -- azure (directory_sync.azure): plan, push, status, adopt ------------------------------------------

azure_app = typer.Typer(
    no_args_is_help=True, help="Export the territorial directory to the group's Entra ID tenant (Graph)."
)
app.add_typer(azure_app, name="azure")


def _change(old: Any, new: Any) -> str:
    return f"{'' if old is None else old} -> {'' if new is None else new}"


@azure_app.command("plan")
def azure_plan(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Users listed in the table.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """What `ght azure push` would change in Entra ID now (reads the database only)."""
    from directory_sync.azure import plan_export

    settings = _settings(ctx)
    data = plan_export(settings, open_store(settings.database_url)).as_dict()
    if as_json:
        _print_json(data)
        return
    summary = data["summary"]
    out.print("  ".join(f"{name.replace('_', ' ')}: {count}" for name, count in summary.items()))
    table = Table(title="Users", title_justify="left")
    for column in ("action", "user", "name", "reason", "changes"):
        table.add_column(column)
    for action in data["users"][:limit]:
        changes = "; ".join(f"{k}: {_change(v['from'], v['to'])}" for k, v in action["changes"].items())
        table.add_row(action["action"], action["upn"], action["display_name"], action["reason"], changes)
    if data["users"]:
        out.print(table)
    if len(data["users"]) > limit:
        out.print(f"... and {len(data['users']) - limit} more users (--limit, or --json for all)")
    for group in data["groups"]:
        out.print(
            f"group {group['action']}: {group['display_name']} ({group['mail_nickname']}): {group['reason']}"
        )
    for change in data["memberships"]:
        out.print(f"members of {change['display_name']}: +{len(change['add'])} -{len(change['remove'])}")
    if data["over_deletion_threshold"]:
        err.print(
            f"warning: {summary['delete']} deletions, above the deletion threshold "
            f"({data['deletion_threshold']}): a push stops unless given --allow-deletes {summary['delete']}"
        )
    if not data["users"] and not data["groups"] and not data["memberships"]:
        out.print("Entra ID is in step with the directory: nothing to push.")


@azure_app.command("push")
def azure_push(
    ctx: typer.Context,
    allow_deletes: Annotated[
        int | None,
        typer.Option("--allow-deletes", min=0, help="Allow up to N deletions, above the deletion threshold."),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Re-read every managed group's members (undoes changes by hand).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply the plan to Entra ID: creates, updates, disables, groups, members, deletions."""
    from rich.progress import BarColumn, MofNCompleteColumn

    from directory_sync.azure import push

    settings = _settings(ctx)
    store = open_store(settings.database_url)
    if as_json:
        result = push(settings, store, allow_deletes=allow_deletes, full=full)
    else:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            tasks: dict[str, Any] = {}

            def report(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.update(tasks[phase], completed=done, total=total)

            result = push(settings, store, allow_deletes=allow_deletes, full=full, progress=report)
    if as_json:
        _print_json(result.as_dict())
    else:
        table = Table(title="Push to Entra ID", title_justify="left")
        counts = {name: getattr(result, name) for name in result.COUNTS}
        counts.update(
            rejected=len(result.rejected), requests=result.stats.requests, throttled=result.stats.throttled
        )
        for name in counts:
            table.add_column(name.replace("_", " "), justify="right")
        table.add_row(*(str(v) for v in counts.values()))
        out.print(table)
        out.print(f"{result.stats.writes} writes in {result.seconds:.1f} s")
        for note in result.notes:
            err.print(f"note: {note}", markup=False)
    for rejection in result.rejected:
        err.print(f"rejected: {rejection.upn} ({rejection.action}): {rejection.message}", markup=False)
    if result.rejected or result.unfinished:
        err.print(
            f"error: {len(result.rejected)} change(s) rejected by Graph, {result.unfinished} left for the "
            "next push; everything else was applied",
            markup=False,
        )
        raise typer.Exit(1)


@azure_app.command("status")
def azure_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The last push and adoption, and what the tenant holds as far as the export knows."""
    from directory_sync.azure import export_status

    settings = _settings(ctx)
    with open_store(settings.database_url).session() as session:
        data = export_status(session)
    if as_json:
        _print_json(data)
        return
    for label, run in (("last push", data["last_push"]), ("last adoption", data["last_adopt"])):
        if run is None:
            out.print(f"{label}: never")
            continue
        seconds = f"{run['seconds']:.1f} s" if run["seconds"] is not None else "unfinished"
        counts = ", ".join(
            f"{name.replace('_', ' ')} {run[name]}"
            for name in (
                "created",
                "updated",
                "disabled",
                "enabled",
                "restored",
                "deleted",
                "adopted",
                "rejected",
                "members_added",
                "members_removed",
                "requests",
                "throttled",
            )
            if run[name]
        )
        out.print(
            f"{label}: {run['started_at']:%Y-%m-%d %H:%M:%S} ({seconds}) {run['status']}: "
            f"{counts or 'no change'}"
        )
        if run["error"]:
            out.print(f"  {run['error']}", markup=False)
    users = data["users"]
    out.print("users: " + ", ".join(f"{k} {v}" for k, v in users.items()))
    out.print(f"groups: {data['groups']}, memberships: {data['memberships']}")
    for rejected in data["rejected"]:
        out.print(f"  rejected {rejected['upn']}: {rejected['error']}", markup=False)


@azure_app.command("adopt")
def azure_adopt(
    ctx: typer.Context,
    match: Annotated[str, typer.Option("--match", help="Match cloud users on employeeId, upn or mail.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the matches, link nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Link the users already in the tenant to their people, instead of creating duplicates."""
    from directory_sync.azure import MATCHES, adopt

    if match not in MATCHES:
        raise typer.BadParameter(f"expected one of {', '.join(MATCHES)}", param_hint="--match")
    settings = _settings(ctx)
    result = adopt(settings, open_store(settings.database_url), match=match, dry_run=dry_run)
    if as_json:
        _print_json(result.as_dict())
        return
    verb = "would link" if dry_run else "linked"
    out.print(
        f"{result.tenant_users} cloud users read; {result.already_linked} already linked; "
        f"{verb} {len(result.adopted)} on {match}"
    )
    for adopted in result.adopted:
        out.print(f"  {verb} {adopted['upn']} -> person {adopted['person']}")
    for case in result.ambiguous:
        out.print(
            f"  ambiguous {case['key']}: people {', '.join(case['people'])}; cloud users "
            f"{', '.join(case['cloud_users'])}"
        )
    if result.unmatched:
        out.print(f"{len(result.unmatched)} cloud users match nobody (left alone):")
        for user in result.unmatched:
            out.print(f"  {user['upn']} ({user['display_name']})")


# -- demo ---------------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    database: Annotated[
        Path, typer.Option("--database", help="SQLite file for the demo's directory.")
    ] = Path("ght-demo.db"),
    serve: Annotated[
        bool, typer.Option("--serve", help="Then serve the gateway and a sample application until Ctrl-C.")
    ] = False,
    port: Annotated[int, typer.Option("--port", help="The gateway's port (with --serve).")] = 8000,
) -> None:
    """Run the whole slice on the bundled sample GHT (three hospitals' LDIF exports) into SQLite."""
    settings = load_settings(DEMO_CONFIG, database_url=f"sqlite:///{database}")
    sites = check_sites(settings)
    out.print(
        f"[bold]Sample GHT[/]: {len(sites)} hospitals, exports in {DEMO_CONFIG.parent.relative_to(HERE)}/"
    )
    for s in sites:
        out.print(f"  {s.code:<16}{s.site.name} (FINESS {s.site.finess}), mapping {s.file.relative_to(HERE)}")
    store = open_store(settings.database_url, create=False)
    store.upgrade()  # the demo's own file: bring a directory left by an older version up to date
    results = _run_with_progress(settings, store, None, dry_run=False, quiet=False)
    out.print(_summary_table(results, f"Synchronised into {database}"))
    with store.session() as session:
        everyone = [v for v in search_people(session, limit=10_000) if v.person.status != "merged"]
        cases = review.list_cases(session)
    multi = [v for v in everyone if sum(1 for a, _ in v.affiliations if a.active) > 1]
    out.print(
        f"\nThe territorial directory holds [bold]{len(everyone)}[/] people from "
        f"{sum(r.read for r in results)} source accounts; {len(multi)} work at several sites:"
    )
    for v in multi:
        p = v.person
        where = ", ".join(
            f"{a.site} ({a.title or a.profession or '?'})" for a, _ in v.affiliations if a.active
        )
        out.print(f"  {p.given_name} {p.family_name}{' RPPS ' + p.rpps if p.rpps else ''}: {where}")
    for case in cases:
        best = case.candidates[0] if case.candidates else {}
        out.print(
            f"{len(cases)} account(s) wait for a human: {case.case.site}\\{case.account.login} may be "
            f"{best.get('name')} ({', '.join(best.get('evidence', []))}); "
            f"decide with `ght review show {case.case.id}`"
        )
        break
    config = DEMO_CONFIG.relative_to(HERE) if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG
    env = f"GHT_CONFIG={config} GHT_DATABASE_URL=sqlite:///{database}"
    out.print("\nLook at the result:")
    out.print(f"  {env} ght people list")
    if multi:
        out.print(f"  {env} ght people show {multi[0].person.login or multi[0].person.id}")
    out.print(f"  {env} ght review list")
    out.print(f"  {env} ght audit --since 1h")
    out.print(f"  {env} ght sync status")
    out.print("Run `ght demo` again: nothing changes (every account is unchanged).")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
    if serve:
        from sso_gateway.demo import DEMO_PASSWORD, DemoServer, demo_settings

        served = demo_settings(settings, database, "127.0.0.1", port)
        server = DemoServer(served, port=port, app_port=port + 1)
        out.print(f"\n[bold]Sign-on[/]: open {server.plan.app_url}; sign in (password {DEMO_PASSWORD}) as:")
        for login, where in server.plan.logins[:8]:
            out.print(f"  {login:<32}{where}")
        out.print(f"Gateway: {server.plan.gateway_url}/.well-known/openid-configuration. Ctrl-C stops both.")
        server.run()


def main() -> None:
    try:
        app()
    except GhtError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
