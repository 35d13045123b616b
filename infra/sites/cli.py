"""`failover vms ...` (the local cloud's Debian VMs) and `failover sites ...` (any Inventory, over SSH)."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from infra import secrets
from infra.cliutil import (DEFAULT_PROJECT, DEFAULT_WORKDIR, AsJson, ProjectFile, Workdir, command, emit, progress,
                           workdir_path)
from infra.errors import FailoverError
from infra.sites import services
from infra.sites.contract import Inventory
from infra.sites.fleet import SECRET_FILES
from infra.sites.localvms import DEFAULT_PREFIX, LocalVms
from infra.sites.protect import PASSWORD_REF, protect
from infra.sites.site import Site, SshSettings
from infra.sites.tls import CertificateAuthority
from infra.spec import load_spec

vms = typer.Typer(help="The local cloud as Debian 12 VMs on loopback (chroot + overlayfs + own sshd), "
                       "reached only over SSH.", no_args_is_help=True)
sites_app = typer.Typer(help="Work on the sites of an Inventory through SSH and their stores.", no_args_is_help=True)
InventoryFile = Annotated[Optional[Path], typer.Option(
    "--inventory", help="The Inventory to work from (default: the workdir's, <workdir>/inventory.json, pulled "
                        "or written by `local up`; else the VM cloud's own, <workdir>/vms/inventory.json).")]


def _vms(workdir: Path) -> LocalVms:
    return LocalVms(workdir_path(workdir) / "vms")


@vms.command("up")
@command
def vms_up(
    sites: Annotated[int, typer.Option(help="How many sites: the spec's first N (primary, warm, pilot-light).")] = 3,
    prefix: Annotated[str, typer.Option(help="Loopback prefix: site i's VM gets PREFIX.i.")] = DEFAULT_PREFIX,
    protect_sites: Annotated[bool, typer.Option("--protect/--no-protect",
                                                help="Run `sites protect` once the VMs are up.")] = True,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
):
    """Create and boot one Debian VM per site (the image is built once with mmdebstrap, about 30 s),
    write their Inventory, and protect them. Needs root (mounts) and FAILOVER_REPLICATION_PASSWORD."""
    spec = load_spec(project)
    if protect_sites:  # before any VM exists: a missing secret must not leave VMs half set up
        secrets.resolve(PASSWORD_REF, "sites protect (or pass --no-protect)")
    cloud = _vms(workdir)
    inventory = cloud.up(spec, sites, prefix, progress)
    result = {"inventory": str(cloud.inventory_file), "sites": [s.site for s in inventory.sites]}
    if protect_sites:
        result["protect"] = asdict(_protect(inventory, workdir, spec))
    emit(result, as_json, lambda r: progress(f"{len(r['sites'])} VMs up; Inventory in {r['inventory']}"))


@vms.command("drop")
@command
def vms_drop(site: Annotated[str, typer.Option(help="The site whose VM is cut off.")],
             workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """Cut a site off as its provider would: kill, by PID, every process whose root is its VM, and
    unmount its store from every VM."""
    killed = _vms(workdir).drop(site)
    emit({"site": site, "killed": killed}, as_json, lambda r: progress(f"dropped {site}: {len(killed)} processes killed"))


@vms.command("down")
@command
def vms_down(workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """Stop every VM, unmount everything they mounted, remove what `vms up` created (nothing else)."""
    stopped = _vms(workdir).down()
    emit({"stopped": stopped}, as_json, lambda r: progress(f"stopped {len(stopped)} VMs and unmounted their mounts"))


def _inventory(inventory: Path | None, workdir: Path) -> Inventory:
    """The Inventory to work from, and the workdir's secrets files loaded for what the
    environment does not set (the engine's commands do the same through their Fleet)."""
    where = workdir_path(workdir)
    for name in SECRET_FILES:
        secrets.load_env_file(where / name)
    if inventory is None:
        pulled = where / "inventory.json"
        inventory = pulled if pulled.exists() else _vms(workdir).inventory_file
    if not Path(inventory).exists():
        raise FailoverError(f"{inventory}: no Inventory here; run `failover inventory pull` (cloud stacks) or "
                            "`failover local up`, or pass --inventory")
    return Inventory.load(inventory)


def _sites(inventory: Inventory, workdir: Path, app_port: int = 0) -> dict[str, Site]:
    """The Inventory's sites over SSH (`app_port`, the spec's, where the app's /healthz is read)."""
    ssh = SshSettings.from_env(_vms(workdir).directory / "ssh", workdir_path(workdir))
    return {o.site: Site(o, ssh, app_port) for o in inventory.sites}


def _protect(inventory: Inventory, workdir: Path, spec):
    """protect(), then the toolkit on every reachable host, the app on the primary and the warm
    sites with the Inventory's epoch, and the protector on the primary."""
    sites = _sites(inventory, workdir, spec.app.port)
    try:
        report = protect(inventory, sites, spec, CertificateAuthority.ensure(_vms(workdir).directory / "ca"), progress)
        reachable = {name: site for name, site in sites.items() if name not in report.skipped}
        progress("the toolkit on every reachable host, the apps and the protector")
        packed = services.toolkit_archive()
        services.on_each(list(reachable.values()), lambda site: services.install_toolkit(site, packed))
        for name, what in services.start_services(inventory, reachable, spec).items():
            report.did(name, what)
        report.did(inventory.active, "protector running")
        return report
    finally:
        for site in sites.values():
            site.close()


@sites_app.command("check")
@command
def sites_check(inventory: InventoryFile = None, workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """Each site's database host over SSH: host key known, login, sudo -n. The key and known_hosts come
    from FAILOVER_SSH_KEY and FAILOVER_SSH_KNOWN_HOSTS, else the VM cloud's, else ~/.ssh. Exit 1 when a
    site fails."""
    inv = _inventory(inventory, workdir)
    results = {}
    for name, site in _sites(inv, workdir).items():
        try:
            site.connection()
            site.check_sudo()
            results[name] = "ok"
        except FailoverError as error:
            results[name] = str(error)
        finally:
            site.close()
    emit(results, as_json, lambda r: [progress(f"{n}: {v}") for n, v in r.items()])
    if any(v != "ok" for v in results.values()):
        raise typer.Exit(1)


@sites_app.command("protect")
@command
def sites_protect(inventory: InventoryFile = None, workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False,
                  project: ProjectFile = DEFAULT_PROJECT):
    """Set up and repair protection on every reachable site, idempotently: TLS from the toolkit's CA
    (the secret FAILOVER_CA, else <workdir>/vms/ca, created on first use), hostssl scram pg_hba, the replication role (password from
    env/FAILOVER_REPLICATION_PASSWORD), pgBackRest with every repository, stanza and first full backups, the warm
    replica and the pilot-light's WAL stream; then the toolkit on every host, the app's config and the app on the
    primary and the warm sites, and the protector on the primary. Checks SSH, sudo and the secret before
    changing anything."""
    inv = _inventory(inventory, workdir)
    report = _protect(inv, workdir, load_spec(project))
    emit(asdict(report), as_json, lambda r: [progress(f"{n}: {', '.join(d)}") for n, d in r["sites"].items()]
         + [progress(f"{n}: skipped ({why})") for n, why in r["skipped"].items()]
         + [progress(f"protected in {r['seconds']} s")])


@sites_app.command("ca")
@command
def sites_ca(export: Annotated[Optional[Path], typer.Option(
                 "--export", help="Write FAILOVER_CA=... (the CA's key and certificate, base64) to this new file, "
                                  "mode 600, to keep in a secret manager or CI secret; it is never printed.")] = None,
             workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False):
    """The toolkit's CA (which signs every site's PostgreSQL certificate): where it is kept, its
    subject, expiry and fingerprint. It comes from the secret FAILOVER_CA when that is set, else
    from <workdir>/vms/ca, where `sites protect` creates it on first use."""
    directory = _vms(workdir).directory / "ca"
    ca = CertificateAuthority.available(directory)
    if ca is None:
        raise FailoverError(f"no CA here: FAILOVER_CA is not set and {directory} holds none; "
                            "`failover sites protect` creates one")
    kept = "secret FAILOVER_CA" if os.environ.get("FAILOVER_CA") else str(directory)
    result = {"kept_in": kept, **ca.describe()}
    if export is not None:
        if export.exists():
            raise FailoverError(f"{export} exists: give --export a new file (the CA is never overwritten into one)")
        export.touch(mode=0o600)
        export.write_text(f"FAILOVER_CA={ca.export()}\n")
        result["exported_to"] = str(export)
    emit(result, as_json, lambda r: [progress(f"{k}: {v}") for k, v in r.items()])
