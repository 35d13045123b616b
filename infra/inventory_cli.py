"""`failover inventory pull`: the Inventory from every Pulumi stack, saved and copied to every site;
`failover inventory hostkeys`: each site's SSH host key, made here and set as the stack's secret.

Without --doit the copy to the sites' stores is only planned (and printed); the local copy in
the workdir is always written, with the secrets apart in a 0600 secrets.env. The active site,
the epoch and the sites' order (their repository numbers) come from the Inventory already
known: the workdir's, and with --doit the copies in the stores (the newest wins). The pull also
writes `known_hosts` in the workdir from the stacks' host keys, where the engine looks for it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infra import inventory_pull as pull_
from infra import secrets
from infra.clouds import hostkey
from infra.cliutil import (DEFAULT_PROJECT, ROOT, AsJson, FailoverError, ProjectFile, Workdir, command, console, emit,
                           workdir_path)
from infra.sites.contract import Inventory
from infra.sites.site import PULLED_KNOWN_HOSTS
from infra.spec import load_witnesses

app = typer.Typer(help="The Inventory of all sites, built from Pulumi stack outputs and copied to every site.")

Stacks = Annotated[str, typer.Option("--stacks", help="Comma-separated Pulumi stacks, one per site.")]
FromDir = Annotated[Optional[Path], typer.Option(
    "--from", help="Read recorded outputs <DIR>/<stack>.json instead of running the Pulumi CLI.")]
Doit = Annotated[bool, typer.Option("--doit", help="Really copy to every site's bucket (default: plan only).")]


@app.command()
@command
def pull(stacks: Stacks = "aws,gcp,azure", workdir: Workdir = None, as_json: AsJson = False,
         from_dir: FromDir = None, doit: Doit = False, project: ProjectFile = DEFAULT_PROJECT) -> None:
    """Build the Inventory from `pulumi stack output --json --show-secrets` of each stack, with the
    witness stores of the spec (config.witnesses in Pulumi.yaml; their credentials from the environment)."""
    names = [s.strip() for s in stacks.split(",") if s.strip()]
    if not names:
        raise FailoverError("--stacks: name at least one stack, e.g. --stacks aws,gcp,azure")
    witnesses = load_witnesses(project)
    texts = {name: _read(name, from_dir) for name in names}
    try:
        witness_found = pull_.witness_secrets(witnesses, os.environ, str(project))
        inventory, found = pull_.build_inventory(texts, tuple(pull_.witness_outputs(w) for w in witnesses))
    except pull_.PullError as error:
        raise FailoverError(str(error)) from None
    found |= witness_found
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
    hosts, lacking = pull_.known_hosts(texts)
    (where / PULLED_KNOWN_HOSTS).write_text(hosts)  # replaced whole: the stacks' keys, nothing else
    statuses = pull_.publish(inventory, found) if doit else {}
    copies = [{"site": s.site, "destination": pull_.destination(s),
               "status": statuses.get(s.site, "planned (pass --doit)"),
               **({"earlier_copy": unread[s.site]} if s.site in unread else {})} for s in inventory.sites]
    result = {"inventory": str(where / "inventory.json"), "secrets": str(where / "secrets.env"),
              "known_hosts": str(where / PULLED_KNOWN_HOSTS), "no_host_key": lacking,
              "active": inventory.active, "epoch": inventory.epoch, "sites": inventory.names,
              "witnesses": [w.site for w in inventory.witnesses], "kept_from": len(known), "copies": copies}
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
    console.print(f"known_hosts: {result['known_hosts']} (the engine trusts these host keys)")
    if result["witnesses"]:
        console.print(f"witnesses: {', '.join(result['witnesses'])} (from the spec; they count in the lease's and "
                      "the claims' majorities)")
    for stack in result["no_host_key"]:
        console.print(f"[yellow]stack {stack} exports no {hostkey.OUTPUT}: its hosts will be refused; run "
                      f"`failover inventory hostkeys --stacks {stack} --doit`, `pulumi up -s {stack}`, then pull again[/yellow]")
    table = Table("site", "copy to", "status")
    for copy in result["copies"]:
        table.add_row(copy["site"], copy["destination"], copy["status"])
    console.print(table)


@app.command()
@command
def hostkeys(stacks: Stacks = "aws,gcp,azure", workdir: Workdir = None, as_json: AsJson = False,
             doit: Annotated[bool, typer.Option("--doit", help="Really set each stack's secret config "
                                                "(default: make the key files and show the commands).")] = False) -> None:
    """Each site's SSH host key: an ed25519 key per stack in <workdir>/hostkeys/<stack> (0600, kept:
    a new key would change every VM's user-data), set as the stack's secret failover:ssh_host_key by
    `pulumi config set --secret ... < file`, which reads the key from the file, never from a command line."""
    names = [s.strip() for s in stacks.split(",") if s.strip()]
    if not names:
        raise FailoverError("--stacks: name at least one stack, e.g. --stacks aws,gcp,azure")
    where = workdir_path(workdir) / "hostkeys"
    keys = [_host_key_file(where / name, name) for name in names]
    if doit and not shutil.which("pulumi"):
        raise FailoverError("the Pulumi CLI is not installed; run the commands shown without --doit yourself")
    result = [{"stack": name, "key_file": str(path), "public_key": public, "command": _config_command(name, path),
               "status": _set_config(name, path) if doit else "planned (pass --doit)"}
              for name, (path, public) in zip(names, keys)]
    emit(result, as_json, _render_hostkeys)


def _host_key_file(path: Path, stack: str) -> tuple[Path, str]:
    """The stack's key file, made once (0600, never briefly wider), and its public key."""
    if not path.exists():
        private, _ = hostkey.generate(stack)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(private)
    try:
        public = hostkey.public_key(path.read_text(), stack)
    except ValueError as error:
        raise FailoverError(f"{path}: {error}") from None
    path.with_name(f"{stack}.pub").write_text(public + "\n")
    return path, public


def _config_command(stack: str, path: Path) -> str:
    return f"pulumi config set --secret --stack {stack} failover:{hostkey.CONFIG_KEY} < {path}"


def _set_config(stack: str, path: Path) -> str:
    """`pulumi config set --secret` with the key on stdin: not in argv, a shell history or a log."""
    with path.open() as key:
        done = subprocess.run(["pulumi", "config", "set", "--secret", "--stack", stack, f"failover:{hostkey.CONFIG_KEY}"],
                              stdin=key, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise FailoverError(f"stack {stack}: `pulumi config set --secret failover:{hostkey.CONFIG_KEY}` failed: "
                            f"{done.stderr.strip()[-500:]}")
    return "set"


def _render_hostkeys(result: list[dict]) -> None:
    for row in result:
        console.print(f"{row['stack']}: {row['key_file']} (0600) {row['status']}")
        console.print(f"  {row['public_key']}")
        if row["status"] != "set":
            console.print(f"  {row['command']}", soft_wrap=True)
