"""`failover run`, `failover journal` and `failover back`: the runbook from the command line.

Nothing changes without a plan first: without --yes the commands print the plan and stop.
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from infra import cliutil
from infra.clouds.automation import PulumiProject, parse_stacks
from infra.cliutil import (DEFAULT_PROJECT, DEFAULT_WORKDIR, AsJson, ProjectFile, Workdir, command, emit, progress,
                            workdir_path)
from infra.runbook import runner
from infra.runbook.journal import JournalStore
from infra.sites.fleet import Fleet
from infra.spec import load_spec

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)
Stacks = Annotated[Optional[list[str]], typer.Option(
    "--stack", envvar="FAILOVER_STACKS",
    help="SITE=STACK: the Pulumi stack of a cloud site: a pilot-light target, which `capacity` scales up (pulumi up "
         "with role primary, in the directory of --project's Pulumi.yaml; needs the Pulumi CLI, its backend login, "
         "the passphrase and the cloud's credentials), and the old primary, whose stack's config it gives the "
         "target's role (no pulumi up there). Repeatable; default: the site's name, as in "
         "stacks/Pulumi.<site>.yaml. Local sites need none.")]
Epoch = Annotated[Optional[int], typer.Option(
    "--epoch", min=1,
    help="Claim this epoch instead of the Inventory's epoch + 1. Only to get past a run that won a claim and is "
         "dead (it stopped and will not be resumed): it must be above every claimed epoch, which it outranks. See "
         "docs/claims.md.")]


@app.command("run")
@command
def run_command(
    to: Annotated[str, typer.Option("--to", help="The site to fail over to.")],
    source: Annotated[Optional[str], typer.Option("--from", help="The primary being replaced (default: the active one).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Execute the plan shown (without it, only show it).")] = False,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
    stack: Stacks = None, epoch: Epoch = None,
):
    """Fail over to a site: claim the epoch, preflight, fence, capacity (a cloud pilot-light is scaled up by
    Pulumi), promote or restore, app, DNS, protect again. Resumes. A run that loses the claim to another
    changes nothing, names the winner and exits 2."""
    spec = runner.spec_for_run(project, workdir_path(workdir))
    fleet = Fleet(workdir_path(workdir), app_port=spec.app.port)
    pulumi = PulumiProject.of(project, parse_stacks(stack))
    _plan_then_execute(fleet, spec, project, *runner.plan(fleet, spec, project, to, source, pulumi=pulumi,
                                                          epoch=epoch), yes, as_json, pulumi)


@app.command("journal")
@command
def journal_command(workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """The latest run's journal: each step's status, times and what it did (else the newest copy in the stores)."""
    fleet = Fleet(workdir_path(workdir))
    stores = fleet.stores() if fleet.exists else []
    journal = JournalStore(workdir_path(workdir)).latest(stores)
    if journal is None:
        raise cliutil.FailoverError(f"no journal in {workdir_path(workdir) / 'journal'} nor in the sites' stores: "
                                    "no failover has run here")
    emit({**journal.to_dict(), "steps": journal.timings(), "complete": journal.complete}, as_json,
         lambda r: _render_steps(journal))


@app.command("back")
@command
def back_command(
    to: Annotated[str, typer.Option("--to", help="The repaired site to switch back to.")],
    yes: Annotated[bool, typer.Option("--yes", help="Execute the plan shown (without it, only show it).")] = False,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
    epoch: Epoch = None,
):
    """Planned failback to a repaired site: claim the epoch, re-seed it as a replica, stop writes briefly, switch,
    protect. Resumes."""
    spec = load_spec(project)
    fleet = Fleet(workdir_path(workdir), app_port=spec.app.port)
    _plan_then_execute(fleet, spec, project, *runner.plan_back(fleet, spec, project, to, epoch), yes, as_json)


def _plan_then_execute(fleet, spec, project, the_plan, journal, yes: bool, as_json: bool,
                       pulumi: PulumiProject | None = None) -> None:
    """Prints the plan; executes it only with --yes (plan, then apply)."""
    if not yes:
        emit({"plan": the_plan.to_dict(), "executed": False}, as_json, lambda r: _render_plan(the_plan))
        return
    if not as_json:
        _render_plan(the_plan)
    result = runner.execute(fleet, spec, project, the_plan, journal, progress, pulumi=pulumi)
    emit({"plan": the_plan.to_dict(), "executed": True, "journal": result.to_dict(), "steps": result.timings()},
         as_json, lambda r: _render_steps(result))


@app.command("fence")
@command
def fence_command(workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT):
    """Fence every site that came back with an older epoch: its app refuses writes, its primary stops."""
    spec = load_spec(project)
    fleet = Fleet(workdir_path(workdir), app_port=spec.app.port)
    result = runner.fence_returning(fleet, spec, project)
    emit({"fenced": result, "epoch": fleet.inventory().epoch}, as_json,
         lambda r: progress(", ".join(f"{k}: {v}" for k, v in r["fenced"].items()) or "nothing to fence"))


def _render_plan(the_plan) -> None:
    resumed = f" (resuming run {the_plan.resumed_run})" if the_plan.resumed_run else ""
    out.print(f"[bold]{the_plan.kind}[/bold] {the_plan.source} → {the_plan.target}, epoch {the_plan.epoch}{resumed}")
    out.print(f"  data: {the_plan.data.detail}")
    out.print(f"  expected loss: {the_plan.data.expected_loss}")
    if the_plan.unreachable:
        out.print(f"  unreachable over SSH (never required): {', '.join(the_plan.unreachable)}")
    for index, name in enumerate(the_plan.steps, 1):
        mark = "done, skipped" if name in the_plan.skip else the_plan.notes.get(name, "")
        out.print(f"  {index:2}. {name} {mark}")


def _render_steps(journal) -> None:
    table = Table(title=f"{journal.kind} {journal.source} → {journal.target}, epoch {journal.epoch} "
                        f"(run {journal.run_id})")
    for column in ("step", "status", "seconds", "attempts", "started"):
        table.add_column(column)
    for row in journal.timings():
        table.add_row(row["step"], row["status"], "-" if row["seconds"] is None else f"{row['seconds']:.2f}",
                      str(row["attempts"]), row["started"] or "-")
    out.print(table)
    fenced = next((row["detail"] for row in journal.timings() if row["step"] == "fence" and row["status"] == "done"),
                  {})
    if isinstance(fenced.get("receipt"), dict):
        out.print(_receipt_line(fenced["receipt"]), soft_wrap=True)


def _receipt_line(receipt: dict) -> str:
    last = (f"last commit {receipt['last_commit_lsn']} (xid {receipt['last_commit_xid']}, "
            f"{receipt['last_commit_at']})" if receipt["last_commit_lsn"] else "no commit found")
    return (f"fence receipt: {receipt['site']} fenced at LSN {receipt['fence_lsn']} ({receipt['fence_point']}); "
            f"{last}; COMMIT records after the fence point: {receipt['commits_after_fence']}")
