"""A restore test that changes nothing: restore into a scratch cluster on a site, prove it, remove it.

The site's own cluster (a replica, or a pilot-light's stopped one) keeps running on its port.
The scratch cluster gets its own directory beside it and its own port, archiving off, and is
removed at the end, on failure too. DNS and the inventory are not touched, so the weekly drill
can run it against the real standby cloud.

Its rows are checked against the checksum manifest that `failover snapshot` leaves in every
store (the live primary is not queried: a drill must not load production). Every command runs
through `c`, an invoke Context locally or a Fabric Connection to a cloud VM, and the checksums
are taken with psql on that host: the scratch port never has to be reachable from the runner.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from infra.errors import FailoverError
from infra.data import integrity, protection
from infra.data.pgbackrest import HostPaths
from infra.data.storage import Store
from infra.sites.contract import Inventory
from infra.sites.processes import wait_for
from infra.sites.site import PATHS, Site, SiteError, SshSettings
from infra.sites.site import KEY_ENV, KNOWN_HOSTS_ENV  # noqa: F401  (re-exported: the env names)
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir
from playbooks.host import run as host_run

PORT_OFFSET = 100  # the scratch cluster listens on the database port + this


@dataclass(frozen=True)
class ScratchHost:
    """The host to restore on: its own paths (pgBackRest config, rclone config), address and port."""

    c: object
    site: str
    paths: HostPaths
    address: str
    db_port: int

    @property
    def pgdata(self) -> str:
        return f"{Path(self.paths.pgdata).parent}/scratch-restore"

    @property
    def port(self) -> int:
        return self.db_port + PORT_OFFSET

    @property
    def log(self) -> str:
        return f"{self.pgdata}.log"


def restore_and_verify(host: ScratchHost, inventory: Inventory, repo_site: str, database: str,
                       progress=lambda m: None) -> dict:
    """Checks first (config, repository, manifest), then restores, verifies and removes the scratch cluster."""
    c, index = host.c, inventory.repo_index(repo_site)
    if not host_run(c, ["test", "-r", host.paths.config], warn=True).ok:
        raise FailoverError(f"site {host.site}: no pgBackRest config at {host.paths.config}; "
                            "protect the site first (`failover local up`, or the runbook's protect step)")
    info, error = pgbackrest.info(c, host.paths.config, index)
    if not (info or {}).get("backup"):
        raise FailoverError(f"site {host.site}: repo{index} ({repo_site}) has no backup to restore"
                            + (f" ({error.splitlines()[-1]})" if error else "") + ": run `failover snapshot` first")
    manifest = _manifest(host, inventory, repo_site)
    remove(host)  # a scratch cluster left by a run that was killed
    started = time.monotonic()
    try:
        progress(f"restoring repo{index} ({repo_site}) into {host.pgdata} on {host.site}, port {host.port}")
        ensure_dir(c, host.pgdata)
        pgbackrest.restore(c, host.paths.config, index, pg_path=host.pgdata,
                           restore_command=protection.restore_command(host.paths, host.pgdata))
        settings = protection.pg_settings(host.address, host.port, host.paths)
        settings.update(archive_mode="off", archive_command="", archive_timeout="0")
        postgres.configure(c, host.pgdata, settings, protection.HBA)
        _start(host)
        wait_for(lambda: not postgres.in_recovery(c, host.address, host.port), 600,
                 f"the scratch cluster on {host.site} to finish recovery")
        seconds = round(time.monotonic() - started, 2)
        progress("comparing row counts and per-table checksums with the manifest")
        restored = integrity.checksums_on_host(c, host.address, host.port, database, integrity.max_ids(manifest["tables"]))
        checks = integrity.compare(restored, manifest["tables"])
    finally:
        removed = remove(host)
    return {"site": host.site, "repo": f"repo{index}", "source_site": repo_site, "scratch": host.pgdata,
            "port": host.port, "seconds": seconds, "manifest_taken": manifest.get("taken"),
            "verified": all(check["match"] for check in checks.values()), "checks": checks, "removed": removed}


def _start(host: ScratchHost) -> None:
    """Starts the scratch cluster; if it does not come up, the error carries its log's last lines."""
    from invoke.exceptions import UnexpectedExit

    try:
        postgres.start(host.c, host.pgdata, host.log, timeout=600)
    except UnexpectedExit:
        tail = host_run(host.c, ["tail", "-n", "4", host.log], warn=True).stdout.strip()
        raise FailoverError(f"site {host.site}: the scratch cluster in {host.pgdata} did not start; its log ends:\n{tail}")


def _manifest(host: ScratchHost, inventory: Inventory, repo_site: str) -> dict:
    """The checksum manifest from the repository's site's store, else from the host's own (Storage.get)."""
    manifest = integrity.read_manifest([Store(inventory.site(name)) for name in dict.fromkeys((repo_site, host.site))])
    if manifest is not None:
        return manifest
    raise FailoverError(f"no checksum manifest ({integrity.MANIFEST}) in the stores of {repo_site} or {host.site}: "
                        "run `failover snapshot` while the primary is up, then try again")


def remove(host: ScratchHost) -> bool:
    """Stops the scratch cluster if it runs and deletes its directory and log; True once both are gone."""
    if host_run(host.c, ["test", "-f", f"{host.pgdata}/PG_VERSION"], warn=True).ok:
        postgres.stop(host.c, host.pgdata, "immediate", warn=True)
    host_run(host.c, ["rm", "-rf", host.pgdata, host.log])
    return not host_run(host.c, ["test", "-e", host.pgdata, "-o", "-e", host.log], warn=True).ok


# ---------------------------------------------------------------- where it runs

# The database VM's layout is the Site seam's (Debian's postgresql package, cloud-init's data disk).
VM_PATHS = PATHS


def local_repository(cloud, site: str, repo: str | None) -> str:
    """The plan of a scratch restore on the embedded local cloud: the site whose repository it
    restores from (`repo`, or the newest reachable). `site` must be up. Changes nothing."""
    from invoke import Context

    from infra.data.restore import choose_repo
    from infra.sites.reachability import unreachable

    c, inventory = Context(), cloud.inventory()
    _known(inventory, site)
    if site in cloud.dropped():
        raise FailoverError(f"site {site} is dropped (its storage is unreachable); choose a site that is up")
    _, repo_site = choose_repo(c, cloud.site(site).paths.config, inventory, site, repo, unreachable(c, cloud))
    return repo_site


def on_local_site(cloud, spec, site: str, repo: str | None, progress=lambda m: None) -> dict:
    """The embedded local cloud: `site` must be up; the repository is `repo` or the newest reachable."""
    from invoke import Context

    repo_site = local_repository(cloud, site, repo)
    target, inventory = cloud.site(site), cloud.inventory()
    host = ScratchHost(Context(), site, target.paths, target.address, spec.database.port)
    return restore_and_verify(host, inventory, repo_site, spec.database.name, progress)


def on_remote_site(inventory: Inventory, spec, site: str, repo: str | None, progress=lambda m: None,
                   paths: HostPaths = VM_PATHS) -> dict:
    """A cloud site's database VM over SSH: its pgBackRest and rclone configs are rendered from
    the inventory (credentials resolved here, written 0600 for the service user), then the same
    restore runs there."""
    from infra.data.restore import choose_repo

    _known(inventory, site)
    outputs = inventory.site(site)
    with ssh_connection(outputs) as c:
        progress(f"connected to {c.host} as {c.user}; installing the pgBackRest and rclone configs")
        protection.install_pgbackrest(c, inventory, site, paths, outputs.db_port)
        protection.install_rclone(c, inventory, paths)
        _, repo_site = choose_repo(c, paths.config, inventory, site, repo, set())
        # Loopback: a cloud's public address is often not on the VM's interface (NAT).
        host = ScratchHost(c, site, paths, "127.0.0.1", outputs.db_port)
        return restore_and_verify(host, inventory, repo_site, spec.database.name, progress)


def _known(inventory: Inventory, site: str) -> None:
    if site not in inventory.names:
        raise FailoverError(f"unknown site {site!r}: the inventory has {', '.join(inventory.names)}")


def ssh_connection(outputs):
    """Fabric to the site's database host through the Site seam: its key must be in known_hosts
    (never trusted on first use), the key from FAILOVER_SSH_KEY or the user's usual ones."""
    site = Site(outputs, SshSettings.from_env())
    host = site.db_host  # a site without ssh_hosts is named here
    try:
        return site.connection(host)
    except SiteError as error:
        reason = str(error).removeprefix(f"site {outputs.site}: ")
        raise FailoverError(f"site {outputs.site}: cannot open SSH to its database host {host} as "
                            f"{outputs.ssh_user}: {reason}") from None
