"""`failover dns`: plan, apply, verify and TTL of the app's records at every DNS provider.

`apply` and `ttl` show their plan and change nothing unless given --yes; with --yes they apply
that plan (computed once, in the same command). Exit codes: 0 all providers fine; 1 at least one provider failed (the others were still
synced); 2 the command could not run (no inventory, bad spec, unknown site).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from infra import cliutil
from infra.cliutil import AsJson, ProjectFile, Workdir, command, emit
from infra.dns import site as dns_site
from infra.sites.contract import Inventory
from infra.spec import SpecError, resolver_address

app = typer.Typer(help="Move the app's DNS records at every DNS provider (octoDNS), per provider.",
                  no_args_is_help=True)
out = Console(highlight=False)

Site = Annotated[str, typer.Option("--site", help="The site whose public addresses the app's names should point at.")]
Force = Annotated[bool, typer.Option("--force", help="Apply even if octoDNS finds the plan too wide.")]
Yes = Annotated[bool, typer.Option("--yes", help="Apply the plan shown (without it, only show it).")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait for each provider to serve the records.")]
Resolvers = Annotated[Optional[list[str]], typer.Option(
    "--resolver", metavar="ADDRESS[:PORT]",
    help="A resolver to ask for the zone's NS records (repeatable), instead of config.dns.resolvers or "
         "/etc/resolv.conf; only for providers without args.dns_address.")]


@app.callback()
def _quiet_octodns() -> None:
    # octoDNS logs warnings per provider and plan; the results table already says what matters.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")


def _config(workdir: Path | None, project: Path | None) -> dns_site.DnsConfig:
    try:
        config = dns_site.dns_config(cliutil.workdir_path(workdir), Path(project or cliutil.DEFAULT_PROJECT))
    except ValueError as error:  # a damaged providers.yaml; SpecError is handled by @command
        if isinstance(error, SpecError):
            raise
        raise cliutil.FailoverError(str(error)) from None
    if not config.providers:
        raise cliutil.FailoverError(f"{config.source}: no DNS providers configured; see docs/dns.md")
    return config


def _setup(workdir: Path | None, project: Path | None):
    config = _config(workdir, project)
    inventory_file = cliutil.workdir_path(workdir) / "inventory.json"
    try:
        return Inventory.load(inventory_file), config
    except ValueError as error:
        raise cliutil.FailoverError(f"{error}; fix or pull the inventory again") from None


def _with_resolvers(providers, resolvers: list[str] | None):
    """The providers, asking `resolvers` (if given) for the zone's NS."""
    if not resolvers:
        return providers
    for text in resolvers:
        try:
            resolver_address(text)
        except ValueError:
            raise cliutil.FailoverError(f"--resolver {text!r} is not an address such as 127.0.0.1 or "
                                        f"127.0.0.1:5353 (or [::1]:53)") from None
    return tuple(replace(p, resolvers=tuple(resolvers)) for p in providers)


def _records_or_exit(fn):
    """Runs fn, turning a bad site (no or invalid public addresses) into a clear error."""
    try:
        return fn()
    except ValueError as error:
        raise cliutil.FailoverError(str(error)) from None


def _results_table(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for column in ("provider", "status", "seconds", "changes / error"):
        table.add_column(column)
    for row in rows:
        seconds = row.get("propagation_seconds")
        detail = "\n".join(row.get("changes") or []) + (f"\n{row['error']}" if row.get("error") else "")
        table.add_row(row["name"], row["status"], "" if seconds is None else f"{seconds:.3f}", detail.strip())
    out.print(table)


def _finish(result: dict, as_json: bool, title: str) -> None:
    emit(result, as_json, lambda r: _results_table(title, r["providers"]))
    if any(p["status"] == "failed" for p in result["providers"]):
        raise typer.Exit(1)


def _plan_or_apply(planned: dns_site.SitePlan, yes: bool, body: dict, as_json: bool, title: str,
                   timeout: float | None = None) -> None:
    """Shows the plan; with --yes applies that same plan (plan, then apply)."""
    if not yes:
        _finish({**body, "applied": False, "providers": [r.to_dict() for r in planned.results]}, as_json,
                f"{title} (plan only; --yes applies it)")
        return
    if not as_json:
        _results_table(f"{title}: plan", [r.to_dict() for r in planned.results])
    results = planned.apply(timeout)
    _finish({**body, "applied": True, "providers": [r.to_dict() for r in results]}, as_json, title)


@app.command()
@command
def plan(site: Site, force: Force = False, workdir: Workdir = None, project: ProjectFile = None,
         as_json: AsJson = False) -> None:
    """Show, per provider, the changes that would point the app's names at SITE."""
    inventory, c = _setup(workdir, project)
    results = _records_or_exit(lambda: dns_site.plan_site(
        inventory, site, c.providers, c.zone, c.names, c.ttl, force=force))
    body = {"site": site, "zone": c.zone, "providers": [r.to_dict() for r in results]}
    _finish(body, as_json, f"dns plan: {c.zone} -> {site}")


@app.command()
@command
def apply(site: Site, yes: Yes = False, force: Force = False, timeout: Timeout = 30.0, workdir: Workdir = None,
          project: ProjectFile = None, as_json: AsJson = False) -> None:
    """Show the change that points the app's names at SITE; with --yes apply it at every provider and verify each."""
    inventory, c = _setup(workdir, project)
    planned = _records_or_exit(lambda: dns_site.plan_move(
        inventory, site, c.providers, c.zone, c.names, c.ttl, force=force))
    _plan_or_apply(planned, yes, {"site": site, "zone": c.zone}, as_json, f"dns apply: {c.zone} -> {site}", timeout)


@app.command()
@command
def verify(site: Site, timeout: Timeout = 30.0, resolver: Resolvers = None, workdir: Workdir = None,
           project: ProjectFile = None, as_json: AsJson = False) -> None:
    """Ask each provider's authoritative servers until they serve SITE's addresses (or time out).

    The servers are the provider's args.dns_address, else the zone's NS names that are this
    provider's (args.ns_names), resolved to addresses by the resolvers.
    """
    inventory, c = _setup(workdir, project)
    providers = _with_resolvers(c.providers, resolver)
    checks = _records_or_exit(lambda: dns_site.verify_site(
        inventory, site, providers, c.zone, c.names, c.ttl, timeout=timeout))
    rows = [{"name": v.name, "status": "verified" if v.ok else "failed", "error": v.error,
             "propagation_seconds": v.seconds} for v in checks]
    _finish({"site": site, "zone": c.zone, "providers": rows}, as_json, f"dns verify: {c.zone} -> {site}")


@app.command()
@command
def ttl(seconds: Annotated[Optional[int], typer.Option(
            "--seconds", min=1, max=86400, help="The new TTL of the app's records.")] = None,
        restore: Annotated[bool, typer.Option("--restore", help="Restore the spec's dns.ttl.")] = False,
        yes: Yes = False, force: Force = False, workdir: Workdir = None, project: ProjectFile = None,
        as_json: AsJson = False) -> None:
    """Show, then with --yes apply, a new TTL of the app's records (lower before a drill or switchover, or restore)."""
    c = _config(workdir, project)
    if (seconds is not None) == restore:
        raise cliutil.FailoverError("give either --seconds N or --restore (the spec's dns.ttl)")
    seconds = c.ttl if restore else seconds
    planned = dns_site.plan_ttl(c.providers, c.zone, c.names, seconds, force=force)
    _plan_or_apply(planned, yes, {"ttl": seconds, "zone": c.zone}, as_json, f"dns ttl: {c.zone} -> {seconds}s")
