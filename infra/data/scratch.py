"""A restore test that changes nothing: restore into a scratch cluster on a site, prove it, remove it.

The site's own cluster (a replica, or a pilot-light's stopped one) keeps running on its port.
The scratch cluster gets its own directory beside it and its own port, listens on the unix
socket only, archives nothing, and is removed at the end, on failure too. DNS, the inventory
and the site's pgBackRest config are not touched, so the weekly drill can run it against the
real standby cloud.

Its rows are checked against the checksum manifest that `failover snapshot` leaves in every
store (the live primary is not queried: a drill must not load production). Every command runs
on the site's database host over SSH (`Site.service()`), and the checksums are taken with psql
there: the scratch cluster never has to be reachable from the operator.
"""
from __future__ import annotations

import time
from pathlib import Path

from invoke.exceptions import UnexpectedExit

from infra.data import integrity, protection
from infra.data.restore import choose_repo
from infra.data.storage import Store
from infra.errors import FailoverError
from infra.sites.contract import Inventory
from infra.sites.fleet import Fleet
from infra.sites.processes import wait_for
from infra.sites.site import PATHS, Site
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir
from playbooks.host import run as host_run

PORT_OFFSET = 100  # the scratch cluster listens on the database port + this
PGDATA = f"{Path(PATHS.pgdata).parent}/scratch-restore"
LOG = f"{PGDATA}.log"
HBA = ["local all postgres peer", "local all all peer"]  # the unix socket only: nothing listens on TCP


def plan(fleet: Fleet, site: str, repo: str | None) -> str:
    """The site whose repository a scratch restore on `site` uses (`repo`, or the newest reachable).
    `site` must answer SSH and be protected (its pgBackRest config names the repositories). Changes nothing."""
    host = _host(fleet, site)
    inventory = fleet.inventory()
    _, repo_site = choose_repo(host.service(), PATHS.config, inventory, site, repo, fleet.unreachable())
    return repo_site


def on_site(fleet: Fleet, spec, site: str, repo_site: str, progress=lambda m: None) -> dict:
    """Restores `repo_site`'s repository into a scratch cluster on `site`'s host, verifies it, removes it."""
    return restore_and_verify(_host(fleet, site), fleet.inventory(), repo_site, spec.database.name, progress)


def _host(fleet: Fleet, name: str) -> Site:
    site = fleet.site(name)  # an unknown name is refused there, with the inventory's names
    if not fleet.reachable(name):
        raise FailoverError(f"site {name}: host {site.db_host} does not answer SSH as {site.outputs.ssh_user}; "
                            "a scratch restore runs on the site's host: choose a site that is up")
    site.check_sudo()
    if not site.service().run(f"test -r {PATHS.config}", warn=True).ok:
        raise FailoverError(f"site {name}: host {site.db_host} has no pgBackRest config at {PATHS.config}; "
                            "protect the site first (`failover sites protect`)")
    return site


def restore_and_verify(site: Site, inventory: Inventory, repo_site: str, database: str,
                       progress=lambda m: None) -> dict:
    """Checks first (repository, manifest), then restores, verifies and removes the scratch cluster."""
    c, index, port = site.service(), inventory.repo_index(repo_site), site.port + PORT_OFFSET
    info, error = pgbackrest.info(c, PATHS.config, index)
    if not (info or {}).get("backup"):
        raise FailoverError(f"site {site.name}: repo{index} ({repo_site}) has no backup to restore"
                            + (f" ({error.splitlines()[-1]})" if error else "") + ": run `failover snapshot` first")
    manifest = _manifest(site, inventory, repo_site)
    remove(site)  # a scratch cluster left by a run that was killed
    started = time.monotonic()
    try:
        progress(f"restoring repo{index} ({repo_site}) into {PGDATA} on {site.name} (host {site.db_host}), port {port}")
        ensure_dir(c, PGDATA)
        pgbackrest.restore(c, PATHS.config, index, pg_path=PGDATA,
                           restore_command=protection.restore_command(PATHS, PGDATA))
        settings = protection.pg_settings("", port, PATHS)
        settings.update(archive_mode="off", archive_command="", archive_timeout="0")
        postgres.configure(c, PGDATA, settings, HBA)
        _start(site)
        wait_for(lambda: site.psql("SELECT pg_is_in_recovery()", port=port, warn=True).stdout.strip() == "f", 600,
                 f"the scratch cluster on {site.name} to finish recovery", 0.3)
        seconds = round(time.monotonic() - started, 2)
        progress("comparing row counts and per-table checksums with the manifest")
        restored = integrity.checksums_of(site, database, integrity.max_ids(manifest["tables"]), port=port)
        checks = integrity.compare(restored, manifest["tables"])
    finally:
        removed = remove(site)
    return {"site": site.name, "host": site.db_host, "repo": f"repo{index}", "source_site": repo_site,
            "scratch": PGDATA, "port": port, "seconds": seconds, "manifest_taken": manifest.get("taken"),
            "verified": all(check["match"] for check in checks.values()), "checks": checks, "removed": removed}


def _start(site: Site) -> None:
    """Starts the scratch cluster; if it does not come up, the error carries its log's last lines."""
    try:
        postgres.start(site.service(), PGDATA, LOG, timeout=600)
    except UnexpectedExit:
        tail = host_run(site.service(), ["tail", "-n", "4", LOG], warn=True).stdout.strip()
        raise FailoverError(f"site {site.name}: host {site.db_host}: the scratch cluster in {PGDATA} did not start; "
                            f"its log ends:\n{tail}") from None


def _manifest(site: Site, inventory: Inventory, repo_site: str) -> dict:
    """The checksum manifest from the repository's site's store, else from the host's own (Storage.get)."""
    manifest = integrity.read_manifest([Store(inventory.site(name)) for name in dict.fromkeys((repo_site, site.name))])
    if manifest is not None:
        return manifest
    raise FailoverError(f"no checksum manifest ({integrity.MANIFEST}) in the stores of {repo_site} or {site.name}: "
                        "run `failover snapshot` while the primary is up, then try again")


def remove(site: Site) -> bool:
    """Stops the scratch cluster if it runs and deletes its directory and log; True once both are gone."""
    c = site.service()
    if host_run(c, ["test", "-f", f"{PGDATA}/PG_VERSION"], warn=True).ok:
        postgres.stop(c, PGDATA, "immediate", warn=True)
    host_run(c, ["rm", "-rf", PGDATA, LOG])
    return not host_run(c, ["test", "-e", PGDATA, "-o", "-e", LOG], warn=True).ok
