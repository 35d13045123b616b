"""`failover audit`: what would we lose if provider X dropped us tonight?

Reads the spec (Pulumi.yaml and stacks/); with --live also `failover status` of the local
cloud in --workdir, for backup ages, archived WAL, media and reachability. Exit 0 when no
breach, 1 otherwise (2 for a spec error), so CI can gate on it.
"""
from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra import audit as audit_
from infra.cliutil import DEFAULT_PROJECT, AsJson, ProjectFile, Workdir, command, emit, workdir_path

app = typer.Typer(help=__doc__, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)

Drop = Annotated[str | None, typer.Option(
    "--drop", help="Audit only this provider (aws, gcp, azure, cloudflare, ...); default: every provider that holds something.")]
LiveFlag = Annotated[bool, typer.Option(
    "--live", help="Also read `failover status` (backup ages, WAL, media, reachability) from the local cloud in --workdir.")]


def audit(drop: Drop = None, live: LiveFlag = False, as_json: AsJson = False,
          project: ProjectFile = DEFAULT_PROJECT, workdir: Workdir = None) -> None:
    """For each provider, every dependency the recovery needs that would live only with it."""
    estate = audit_.load_estate(project)
    status = audit_.live_status(_status(estate, workdir)) if live else None
    breaches = audit_.audit(estate, drop, status)
    audited = [drop] if drop else audit_.providers(estate)
    emit([b.as_dict() for b in breaches], as_json, lambda _: _render(breaches, audited))
    if breaches:
        raise typer.Exit(1)


# Registered here so the app runs alone (tests, `python -m`), and mountable as `failover audit`.
app.command("audit")(command(audit))


def _status(estate: audit_.Estate, workdir) -> dict:
    from infra import status as status_mod
    from infra.sites.fleet import Fleet

    fleet = Fleet(workdir_path(workdir), app_port=estate.spec.app.port)
    if not fleet.exists:
        raise FileNotFoundError(f"--live: no Inventory in {workdir_path(workdir)}; run `failover local up` or "
                                "`failover inventory pull` first")
    try:
        return status_mod.collect(fleet, True)
    finally:
        fleet.close()


def _render(breaches: list[audit_.Breach], audited: list[str]) -> None:
    if not breaches:
        out.print(f"[green]no breach[/green]: nothing the recovery needs lives only with {', '.join(audited)}")
        return
    table = Table(title=f"{len(breaches)} breach(es); audited {', '.join(audited)}", show_lines=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("breach", overflow="fold")  # one cell per breach keeps each readable at 80 columns
    for b in breaches:
        table.add_row(f"[red]{b.provider}[/red]",
                      f"[bold]{b.dependency}[/bold]\nlives at: {b.lives_at}\nwhy: {b.why}\nfix: {b.fix}")
    out.print(table)
