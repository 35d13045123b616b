"""The `failover` command: local cloud, protection status, snapshots, restores, DNS and more.

Every command takes --workdir (the local cloud's state, default .failover/ in the repo) and
--json (machine-readable output on stdout). Human output goes to stderr-free rich tables.
"""
from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from infra import cliutil
from infra.cliutil import (DEFAULT_PROJECT, DEFAULT_WORKDIR, AsJson, ProjectFile, Workdir, command, emit, progress,
                            workdir_path)
from infra.sites import cli as sites_cli
from infra.sites import localvms
from infra.sites.localstores import STORAGE_TYPES
from infra.sites.vmcloud import VmCloud
from infra.spec import load_spec

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
local = typer.Typer(help="The embedded local cloud: real processes on loopback addresses.", no_args_is_help=True)
app.add_typer(local, name="local")
# Wide enough for the status table when stdout is a file or a CI log, not a terminal.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _mount_optional() -> None:
    """Sub-commands that live in their own modules."""
    import importlib

    for module, name in (("infra.dns.cli", "dns"), ("infra.inventory_cli", "inventory")):
        try:
            app.add_typer(importlib.import_module(module).app, name=name)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


_mount_optional()
app.add_typer(sites_cli.vms, name="vms")
app.add_typer(sites_cli.sites_app, name="sites")


def _mount_top_level() -> None:
    """Single-command apps whose command sits at the top level: `failover audit`, `failover run`..."""
    import importlib

    for module in ("infra.audit_cli", "infra.runbook.cli", "infra.drill.cli"):
        try:
            sub = importlib.import_module(module).app
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            continue
        app.registered_commands += sub.registered_commands


_mount_top_level()



@local.command("up")
@command
def local_up(
    sites: Annotated[int, typer.Option(help="How many sites: the spec's first N (primary, warm, pilot-light).")] = 3,
    seed_mb: Annotated[int, typer.Option(help="About how many MB of users, posts, follows and media to seed.")] = 20,
    prefix: Annotated[str, typer.Option(help="Loopback prefix: site i's VM gets PREFIX.i, DNS PREFIX.53/.54.")]
    = localvms.DEFAULT_PREFIX,
    storage: Annotated[str, typer.Option(help="posix: each site's store is a directory mounted in every VM; "
                                              "emulated: each site's cloud's object-store emulator (moto, "
                                              "fake-gcs-server, Azurite) on the site's own address, over TLS.")]
    = "posix",
    witnesses: Annotated[Optional[int], typer.Option(
        help="Witness stores (directories mounted in every VM, dropped with no site) that count in the lease's "
             "majority. Default: as many as the spec declares (config.witnesses), standing in for them under their "
             "names; 0 for none.", show_default=False)] = None,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
):
    """Start N protected sites as Debian VMs on loopback (needs root): PostgreSQL with a warm replica
    and a pilot-light WAL stream, pgBackRest repositories and media buckets in every site's store, the
    seeded app, the protector and two DNS providers; write the Inventory to <workdir>/inventory.json.
    Refuses an inventory.json it did not write. Run again, it completes a cloud that stopped half-way."""
    if not prefix.startswith("127."):
        raise cliutil.FailoverError(f"--prefix {prefix!r} must be inside 127.0.0.0/8: the local cloud stays on loopback")
    if storage not in STORAGE_TYPES:
        raise cliutil.FailoverError(f"--storage {storage!r} must be one of: {', '.join(STORAGE_TYPES)}")
    if witnesses is not None and witnesses < 0:
        raise cliutil.FailoverError(f"--witnesses must be 0 or more, got {witnesses}")
    summary = VmCloud(workdir_path(workdir), progress).up(load_spec(project), sites, prefix, seed_mb, storage,
                                                          witnesses)
    emit(summary, as_json, lambda s: progress(
        f"{len(s['sites'])} sites up in {s['seconds']['total']} s: " +
        ", ".join(f"{x['name']} ({x['role']}, {x['address']})" for x in s["sites"]) + f"; Inventory in {s['inventory']}"))


@local.command("down")
@command
def local_down(workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """Stop the DNS servers and every VM (by PID, nothing else), unmount what they mounted and remove
    what `local up` made; an inventory.json it did not write stays."""
    result = VmCloud(workdir_path(workdir), progress).down()
    emit(result, as_json, lambda r: progress(
        f"stopped {len(r['vms_stopped'])} VMs and {len(r['dns_stopped'])} DNS servers"
        + (", removed the inventory" if r["inventory_removed"] else "")))


@local.command("drop")
@command
def local_drop(
    site: Annotated[str, typer.Option(help="The site to cut off.")],
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False,
):
    """Cut a site off as its provider would: kill its VM's processes by PID, make its store unreachable
    to every VM and to the operator."""
    result = VmCloud(workdir_path(workdir), progress).drop(site)
    emit(result, as_json, lambda r: progress(f"dropped {site}: killed {r['killed']} processes, store unreachable"))


@local.command("restore-site")
@command
def local_restore_site(
    site: Annotated[str, typer.Option(help="The dropped site to give back.")],
    sshd_only: Annotated[bool, typer.Option(
        help="Start only its sshd, not its boot-time services: a host without the rejoin agent.")] = False,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False,
):
    """Give a dropped site back as a provider does: its store is reachable again and its VM boots
    (sshd and its boot-time services: supervisord, the app held not-ready, and the rejoin agent,
    which makes its database follow the active primary with no command run; its stale data
    never serves). `--sshd-only`: only sshd, and its database stays down."""
    result = VmCloud(workdir_path(workdir), progress).restore_site(site, boot=not sshd_only)
    emit(result, as_json, lambda r: progress(f"{site} is reachable again ({', '.join(r['started'])}, store)"))


@app.command("status")
@command
def status(workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
           media: Annotated[bool, typer.Option(help="Also compare media buckets (rclone check).")] = True):
    """Per site: role, reachable, replica lag, each repository's last backup and WAL, media in sync."""
    from infra import status as status_mod
    from infra.sites.fleet import Fleet

    spec = load_spec(project)
    report = status_mod.collect(Fleet(workdir_path(workdir), app_port=spec.app.port), media,
                                spec.database.replication)
    emit(report, as_json, _render_status)


def _render_status(report: dict) -> None:
    table = Table(title=f"active: {report['active']}  epoch: {report['epoch']}", title_justify="left")
    for column in ("site", "role", "reachable", "database", "lag", "repository", "last backup", "last WAL", "media"):
        table.add_column(column)
    for site in report["sites"]:
        lag = "-" if site["replica_lag_seconds"] is None else f"{site['replica_lag_seconds']:.2f}s/{site['replica_lag_bytes']}B"
        media = site.get("media") or {}
        media_text = "in sync" if media.get("in_sync") else f"missing {media.get('missing')} {media.get('error') or ''}"
        for repo in site["repositories"]:
            reachable = "yes" if site["reachable"] else f"[red]no[/red] (ssh {site.get('host', site['address'])})"
            table.add_row(site["name"], site["role"], reachable, site["database"], lag,
                          f"{repo['name']} {repo['type']}", repo["last_backup"] or f"[red]{repo['error'] or 'none'}[/red]",
                          repo["last_archived_wal"] or "-", media_text)
    out.print(table)
    commits = report.get("replication") or {}
    waits = commits.get("error") or commits.get("waits_for")
    colour = "red" if commits.get("blocked") or commits.get("error") else "green"
    out.print(f"replication: {commits.get('mode')}; commits wait for [{colour}]{waits}[/{colour}]"
              + (f" (synchronous_standby_names = {commits['synchronous_standby_names']})"
                 if commits.get("synchronous_standby_names") else ""))
    out.print(_lease_line(report.get("lease") or {}))
    commit = (report.get("lease") or {}).get("commit") or {}
    if commit.get("mode") == "asynchronous":
        out.print(f"commit: [yellow]ASYNCHRONOUS[/yellow]: {commit.get('reason')}")


def _lease_line(lease: dict) -> str:
    """One line on the primary's lease: who holds it, or that it fenced itself and why."""
    if not lease.get("holder"):
        return "lease: none in any store (no protector has renewed one)"
    where = f"{lease['holder']} at epoch {lease['epoch']}"
    if lease.get("fenced"):
        return f"lease: [red]{where} is FENCED[/red]: {lease.get('why') or 'see its protector log'}"
    age = f", renewed {lease['age_seconds']} s ago" if lease.get("age_seconds") is not None else ""
    return f"lease: {where} {lease.get('state')} ({lease.get('length')} s{age})"


@app.command("snapshot")
@command
def snapshot(
    kind: Annotated[str, typer.Option("--type", help="full, diff or incr.")] = "full",
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
):
    """An on-demand backup into every reachable repository, plus a media sync. Exit 1 if one failed."""
    from infra.data import restore as restore_mod
    from infra.sites.fleet import Fleet

    if kind not in ("full", "diff", "incr"):
        raise cliutil.FailoverError(f"--type {kind!r} must be one of full, diff, incr")
    spec = load_spec(project)
    result = restore_mod.snapshot(Fleet(workdir_path(workdir), app_port=spec.app.port), spec, kind, progress)
    emit(result, as_json, _render_results)
    if not result["ok"]:
        raise typer.Exit(1)


def _render_results(result: dict) -> None:
    for entry in result["results"]:
        mark = "[green]ok[/green]" if entry["ok"] else f"[red]failed[/red] {entry['error']}"
        out.print(f"{entry['repo']:8} {entry['site']:10} {entry['location']}  {mark}  {entry['seconds']}s")


@app.command("restore")
@command
def restore(
    site: Annotated[str, typer.Option(help="The site to restore into.")],
    repo: Annotated[Optional[str], typer.Option(help="Repository (repoN or a site name); default: the newest reachable.")] = None,
    target_time: Annotated[Optional[str], typer.Option(help="Point in time, e.g. '2026-11-28 18:00:00+00'.")] = None,
    scratch: Annotated[bool, typer.Option(
        "--scratch", help="Leave the site as it is: restore into a scratch cluster beside its own (port +100), "
                          "check it against the checksum manifest, remove it. DNS and the inventory are untouched.")] = False,
    ssh: Annotated[bool, typer.Option(
        "--ssh", help="Kept for scripts: every restore now runs on the site's database host over SSH (inventory "
                      "ssh_hosts/ssh_user; host key from FAILOVER_SSH_KNOWN_HOSTS or the work directory's vms/ssh, "
                      "key from FAILOVER_SSH_KEY).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Execute the plan shown (without it, only show it).")] = False,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
):
    """Show the restore plan (site, repository, point in time); with --yes restore the database and media
    into the site and verify row counts and per-table checksums.

    With --scratch it is a restore test that changes nothing: the weekly drill runs it on the
    real standby cloud.
    """
    from infra.data import restore as restore_mod
    from infra.data import scratch as scratch_mod
    from infra.sites.fleet import Fleet

    if scratch and target_time:
        raise cliutil.FailoverError("--scratch restores the latest state: leave out --target-time")
    spec = load_spec(project)
    fleet = Fleet(workdir_path(workdir), app_port=spec.app.port)
    if scratch:
        plan = {"site": site, "scratch": True, "source_site": scratch_mod.plan(fleet, site, repo)}
        apply = lambda: scratch_mod.on_site(fleet, spec, site, plan["source_site"], progress)
    else:
        the_plan = restore_mod.plan(fleet, spec, site, repo, target_time)
        plan = the_plan.to_dict()
        apply = lambda: restore_mod.restore(fleet, spec, the_plan, progress)
    if not yes:
        emit({"plan": plan, "executed": False}, as_json, _render_restore_plan)
        return
    result = apply()
    emit({**result, "plan": plan, "executed": True}, as_json, _render_scratch if scratch else _render_restore)
    if not result["verified"]:
        raise typer.Exit(1)


def _render_restore_plan(result: dict) -> None:
    plan = result["plan"]
    what = "a scratch cluster beside its own (nothing of the site changes)" if plan.get("scratch") else plan["replaces"]
    out.print(f"[bold]restore[/bold] into {plan['site']} from {plan['source_site']}"
              + (f" to {plan['target_time']}" if plan.get("target_time") else "") + f": {what}")
    out.print("nothing changed: add --yes to execute this plan")


def _render_scratch(result: dict) -> None:
    out.print(f"restored {result['repo']} ({result['source_site']}) into a scratch cluster on {result['site']} "
              f"(port {result['port']}) in {result['seconds']}s, checked against the manifest of {result['manifest_taken']}, "
              "then removed it")
    _render_checks(result)


def _render_restore(result: dict) -> None:
    out.print(f"restored {result['site']} from {result['repo']} ({result['source_site']}) in {result['seconds']}s, "
              f"verified against {result['against']}")
    _render_checks(result)
    out.print(f"  media objects missing: {result['media_missing']}"
              + (f" (copy failed: {result['media_error']})" if result.get("media_error") else ""))


def _render_checks(result: dict) -> None:
    for table, check in result["checks"].items():
        mark = "[green]identical[/green]" if check["match"] else "[red]DIFFERENT[/red]"
        out.print(f"  {table:8} rows {check['restored_rows']:>9} (compared up to id {check['upto']})  {mark}")


def main() -> None:
    # Libraries (octoDNS above all) log per record and plan; our own output says what matters.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
