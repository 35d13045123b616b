"""`failover inventory pull`: the Inventory from every Pulumi stack, saved and copied to every site.

Without --doit the copy to the sites' stores is only planned (and printed); the local copy in
the workdir is always written, with the secrets apart in a 0600 secrets.env. The active site,
the epoch and the sites' order (their repository numbers) come from the Inventory already
known: the workdir's, and with --doit the copies in the stores (the newest wins).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infra import inventory_pull as pull_
from infra import secrets
from infra.cliutil import ROOT, AsJson, FailoverError, Workdir, command, console, emit, workdir_path
from infra.sites.contract import Inventory

app = typer.Typer(help="The Inventory of all sites, built from Pulumi stack outputs and copied to every site.")

Stacks = Annotated[str, typer.Option("--stacks", help="Comma-separated Pulumi stacks, one per site.")]
FromDir = Annotated[Optional[Path], typer.Option(
    "--from", help="Read recorded outputs <DIR>/<stack>.json instead of running the Pulumi CLI.")]
Doit = Annotated[bool, typer.Option("--doit", help="Really copy to every site's bucket (default: plan only).")]


@app.command()
@command
def pull(stacks: Stacks = "aws,gcp,azure", workdir: Workdir = None, as_json: AsJson = False,
         from_dir: FromDir = None, doit: Doit = False) -> None:
    """Build the Inventory from `pulumi stack output --json --show-secrets` of each stack."""
    names = [s.strip() for s in stacks.split(",") if s.strip()]
    if not names:
        raise FailoverError("--stacks: name at least one stack, e.g. --stacks aws,gcp,azure")
    texts = {name: _read(name, from_dir) for name in names}
    try:
        inventory, found = pull_.build_inventory(texts)
    except pull_.PullError as error:
        raise FailoverError(str(error)) from None
    for value in found.values():
        secrets.remember(value)
    where = workdir_path(workdir)
    # What is already known wins over the stacks' roles: the workdir's Inventory, and with
    # --doit the copies in the sites' stores (read with the credentials just pulled).
    known = [Inventory.load(where / "inventory.json")] if (where / "inventory.json").exists() else []
    unread: dict[str, str] = {}
    if doit:
        os.environ.update(found)  # this process only: the Inventory's env/NAME references resolve to them
        copies_found, unread = pull_.read_copies(inventory)
        known += copies_found
    try:
        inventory = pull_.keep_known(inventory, known)
    except pull_.PullError as error:
        raise FailoverError(str(error)) from None
    inventory.save(where / "inventory.json")
    pull_.write_secrets(where / "secrets.env", found)
    statuses = pull_.publish(inventory, found) if doit else {}
    copies = [{"site": s.site, "destination": pull_.destination(s),
               "status": statuses.get(s.site, "planned (pass --doit)"),
               **({"earlier_copy": unread[s.site]} if s.site in unread else {})} for s in inventory.sites]
    result = {"inventory": str(where / "inventory.json"), "secrets": str(where / "secrets.env"),
              "active": inventory.active, "epoch": inventory.epoch, "sites": inventory.names,
              "kept_from": len(known), "copies": copies}
    emit(result, as_json, _render)


def _read(stack: str, from_dir: Path | None) -> str:
    if from_dir is None:
        return pull_.stack_output(stack, ROOT)
    path = from_dir / f"{stack}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no recorded outputs for stack {stack}")
    return path.read_text()


def _render(result: dict) -> None:
    kept = f"; active and epoch kept from {result['kept_from']} known Inventory copies" if result["kept_from"] else ""
    console.print(f"inventory: {result['inventory']} (active: {result['active']}, epoch {result['epoch']}{kept})")
    console.print(f"secrets:   {result['secrets']} (0600; the inventory holds env/NAME references)")
    table = Table("site", "copy to", "status")
    for copy in result["copies"]:
        table.add_row(copy["site"], copy["destination"], copy["status"])
    console.print(table)
