"""`ght`: how hospital IT staff run and inspect the territorial identity service.

This module only parses arguments and prints; the work is done in `directory_sync` (and later
`sso_gateway`), where tests can call it. Expected failures (`GhtError`) are printed as one line on
stderr with a non-zero exit code: 1 for a failed run, 2 for a configuration or usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from directory_sync.config import Settings, load_settings
from directory_sync.connectors import open_connector
from directory_sync.errors import GhtError, SyncError
from directory_sync.people import get_person, search_people
from directory_sync.store import Store, open_store
from directory_sync.sync import SiteResult, check_sites, last_runs, run_sync

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


@app.callback()
def _root(ctx: typer.Context, config: ConfigOption = None) -> None:
    ctx.obj = {"config": config}


def _settings(ctx: typer.Context) -> Settings:
    return load_settings(ctx.obj.get("config") if ctx.obj else None)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


# -- sync ---------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("read", "created", "linked", "updated", "unchanged", "closed", "suspended", "errors")


def _summary_table(results: list[SiteResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("site")
    for name in SUMMARY_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("status")
    for r in results:
        status = "[green]ok[/]" if r.ok else f"[red]failed[/]: {r.error}"
        if r.ok and r.dry_run:
            status = "[yellow]dry run[/]"
        table.add_row(r.site, *(str(getattr(r, n)) for n in SUMMARY_COLUMNS), status)
    return table


def _run_with_progress(
    settings: Settings, store: Store, sites: list[str] | None, dry_run: bool, quiet: bool
) -> list[SiteResult]:
    if quiet:
        return run_sync(settings, store, sites=sites, dry_run=dry_run)
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

        return run_sync(settings, store, sites=sites, dry_run=dry_run, progress=report)


@sync_app.command("run")
def sync_run(
    ctx: typer.Context,
    site: Annotated[
        list[str] | None, typer.Option("--site", "-s", help="Only this site (repeatable).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and plan, change nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Read every site's directory and bring the territorial directory in step with it."""
    settings = _settings(ctx)
    check_sites(settings, site)
    store = open_store(settings.database_url)
    results = _run_with_progress(settings, store, site, dry_run, quiet=as_json)
    if as_json:
        _print_json({"dry_run": dry_run, "sites": [r.as_dict(with_plan=dry_run) for r in results]})
    else:
        out.print(_summary_table(results, "Dry run: nothing was changed" if dry_run else "Sync"))
        for r in results:
            if r.warnings:
                err.print(
                    f"{r.site}: {r.warnings} warning(s); see `ght sync run --dry-run --json --site {r.site}`"
                )
    failed = [r for r in results if not r.ok]
    for r in failed:
        err.print(f"error: site {r.site} ({r.url}): {r.error}")
    if failed:
        raise typer.Exit(1)


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
    for column in ("site", "status", "started", "seconds", *SUMMARY_COLUMNS, "error"):
        table.add_column(column)
    for code, run in runs.items():
        if run is None:
            table.add_row(code, "never run")
            continue
        table.add_row(
            code,
            run.status,
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
        for column in ("id", "name", "RPPS", "status", "sites (active*)", "logins"):
            table.add_column(column)
        for v in views:
            p = v.person
            sites = ", ".join(f"{a.site}{'*' if a.active else ''}" for a, _ in v.affiliations)
            logins = ", ".join(f"{a.site}\\{a.login}" for a in v.accounts)
            table.add_row(
                p.id[:12],
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
    for name in ("id", "email", "rpps", "created_at", "updated_at", "suspended_at"):
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
            "yes" if a["active"] else "no",
            a["started_at"][:10],
            (a["ended_at"] or "")[:10],
        )
    out.print(table)
    table = Table(title="Source accounts", title_justify="left")
    for column in ("site", "login", "state", "DN"):
        table.add_column(column)
    for a in data["accounts"]:
        table.add_row(a["site"], a["login"], a["state"], a["dn"])
    out.print(table)


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
    site: Annotated[
        list[str] | None, typer.Option("--site", "-s", help="Only this site (repeatable).")
    ] = None,
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


# -- demo ---------------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    database: Annotated[
        Path, typer.Option("--database", help="SQLite file for the demo's directory.")
    ] = Path("ght-demo.db"),
) -> None:
    """Run the whole slice on the bundled sample GHT (three hospitals' LDIF exports) into SQLite."""
    settings = load_settings(DEMO_CONFIG, database_url=f"sqlite:///{database}")
    sites = check_sites(settings)
    out.print(
        f"[bold]Sample GHT[/]: {len(sites)} hospitals, exports in {DEMO_CONFIG.parent.relative_to(HERE)}/"
    )
    for s in sites:
        out.print(f"  {s.code:<16}{s.site.name} (FINESS {s.site.finess}), mapping {s.file.relative_to(HERE)}")
    store = open_store(settings.database_url)
    results = _run_with_progress(settings, store, None, dry_run=False, quiet=False)
    out.print(_summary_table(results, f"Synchronised into {database}"))
    with store.session() as session:
        everyone = search_people(session, limit=10_000)
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
    config = DEMO_CONFIG.relative_to(HERE) if DEMO_CONFIG.is_relative_to(Path.cwd()) else DEMO_CONFIG
    env = f"GHT_CONFIG={config} GHT_DATABASE_URL=sqlite:///{database}"
    out.print("\nLook at the result:")
    out.print(f"  {env} ght people list")
    if multi:
        out.print(f"  {env} ght people show {multi[0].person.id}")
    out.print(f"  {env} ght sync status")
    out.print("Run `ght demo` again: nothing changes (every account is unchanged).")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except GhtError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
