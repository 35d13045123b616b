"""`failover local up`: brings up N protected sites of the embedded local cloud, idempotently.

Order matters: the primary first (seeded), then its repositories (stanza and a full backup in
each), then the warm replica (and only once it streams, synchronous replication), then the
apps, the media replicator and DNS.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from invoke import Context

from infra.app import seed
from infra.errors import FailoverError
from infra.data import integrity, protection
from infra.data.storage import Store
from infra.sites.contract import Inventory
from infra.sites.database import dsn, record_postmaster
from infra.sites.local import LocalCloud, LocalSite, outputs, plan_sites
from infra.sites.processes import port_answers, wait_for
from infra.spec import Spec
from playbooks import postgres
from playbooks.host import ensure_dir

Progress = Callable[[str], None]


def _dirs(c, site: LocalSite) -> None:
    for path in (site.root, f"{site.root}/run", f"{site.root}/logs", str(site.store),
                 str(site.store / "pgbackrest"), str(site.media_dir)):
        ensure_dir(c, path, "755")


def start_primary(c, cloud: LocalCloud, site: LocalSite, spec: Spec, sync_standby: str | None) -> None:
    postgres.init_cluster(c, site.paths.pgdata)
    settings = protection.pg_settings(site.address, spec.database.port, site.paths, sync_standby)
    postgres.configure(c, site.paths.pgdata, settings, protection.HBA)
    postgres.start(c, site.paths.pgdata, str(site.logs / "postgresql.log"))
    postgres.reload(c, site.paths.pgdata)
    record_postmaster(cloud, site)


def _create_database(c, site: LocalSite, spec: Spec) -> None:
    exists = postgres.psql(c, site.address, spec.database.port,
                           f"SELECT 1 FROM pg_database WHERE datname = '{spec.database.name}'").stdout.strip()
    if not exists:
        postgres.psql(c, site.address, spec.database.port, f"CREATE DATABASE {spec.database.name}")


def _replicator(cloud: LocalCloud) -> None:
    argv = [sys.executable, "-m", "infra.data.replicator", str(cloud.workdir)]
    cloud.processes.start("media-replicator", argv, cloud.workdir / "logs" / "replicator.log",
                          cwd=Path(__file__).parents[2])


EMULATOR_BASE_PORT = 19300  # tests of the emulators use their own range


def _stores(cloud: LocalCloud, sites: list[LocalSite], storage: str, progress: Progress) -> list:
    """Each site's emulated object store (started), or None for the site's own directory."""
    if storage == "posix":
        return [None] * len(sites)
    from infra.sites import emulators

    progress("starting emulated object stores: " + ", ".join(
        f"{s.name} {emulators.KINDS[i % len(emulators.KINDS)]}" for i, s in enumerate(sites)))
    return [emulators.start_emulated(cloud.workdir, i, s.name, EMULATOR_BASE_PORT) for i, s in enumerate(sites)]


def _inventory(cloud: LocalCloud, spec: Spec, sites: list[LocalSite], stores: list) -> Inventory:
    """A new inventory, or the existing one when completing a partial cloud."""
    if not cloud.inventory_file.exists():
        return Inventory([outputs(s, spec, store) for s, store in zip(sites, stores)], active=sites[0].name)
    return cloud.inventory()


def _refuse_failed_over(cloud: LocalCloud, sites: list[LocalSite]) -> None:
    inventory = cloud.inventory() if cloud.inventory_file.exists() else None
    if inventory and inventory.active != sites[0].name:
        raise FailoverError(f"{cloud.workdir} has failed over to {inventory.active} (epoch {inventory.epoch}); "
                            f"`local up` only builds the initial layout: use `failover back --to {sites[0].name}` "
                            "or `failover local down` first")


def dns_addresses(prefix: str) -> list[str]:
    return [f"{prefix}.53", f"{prefix}.54"]


def _refuse_taken_addresses(spec: Spec, sites: list[LocalSite], prefix: str) -> None:
    """A new local cloud needs its addresses free: a server left on the same prefix (a drill kept
    with --keep, another workdir's cloud) would answer in place of this cloud's own."""
    from infra.dns.local import DEFAULT_PORT

    wanted = [(s.address, port, f"{s.name}'s {what}") for s in sites
              for port, what in ((spec.database.port, "database"), (spec.app.port, "app"))]
    wanted += [(address, DEFAULT_PORT, "a DNS provider") for address in dns_addresses(prefix)]
    taken = [f"{address}:{port} ({what})" for address, port, what in wanted if port_answers(address, port)]
    if taken:
        raise FailoverError(f"something already answers on {', '.join(taken)}: another local cloud uses {prefix}.x. "
                            "Stop it with `failover local down --workdir <its workdir>`, or choose another --prefix")


def up(workdir: Path, spec: Spec, count: int, seed_mb: int, progress: Progress, prefix: str,
       storage: str = "posix") -> dict:
    """Brings the local cloud up (or completes a partial one); returns a summary."""
    cloud = LocalCloud(workdir)
    settings = cloud.settings() if cloud.exists else {}
    if settings and (len(cloud.sites()) != count or settings["prefix"] != prefix or settings["storage"] != storage):
        raise FailoverError(f"{workdir} already holds a local cloud of {len(cloud.sites())} sites on "
                            f"{cloud.settings()['prefix']}.x; run `failover local down --workdir {workdir}` "
                            "first to change --sites, --prefix or --storage")
    sites = plan_sites(spec, count, cloud.workdir, prefix)
    _refuse_failed_over(cloud, sites)
    if not cloud.exists:
        _refuse_taken_addresses(spec, sites, prefix)
    cloud.save(sites, prefix=prefix, storage=storage, dropped=[])
    c = Context()
    for site in sites:
        _dirs(c, site)
    inventory = _inventory(cloud, spec, sites, _stores(cloud, sites, storage, progress))
    for site in sites:
        protection.install_pgbackrest(c, inventory, site.name, site.paths, spec.database.port)
        protection.install_rclone(c, inventory, site.paths)
    cloud.publish(inventory)

    primary, warm = sites[0], [s for s in sites if s.role == "warm"]
    progress(f"starting the primary {primary.name} on {primary.address}:{spec.database.port}")
    start_primary(c, cloud, primary, spec, None)
    _create_database(c, primary, spec)
    seed.create_schema(dsn(primary, spec), primary.name)
    progress(f"seeding about {seed_mb} MB")
    counts = seed.seed(dsn(primary, spec), primary.media_dir, seed_mb)

    progress("creating the stanza and a full backup in every repository")
    stanzas = protection.create_stanzas(c, inventory, primary.paths)
    _fail_on(stanzas, "stanza-create")
    backups = protection.backup_all(c, inventory, primary.paths)
    _fail_on(backups, "backup")
    integrity.write_manifest(dsn(primary, spec), [Store(s) for s in inventory.sites], primary.name)
    for site in sites:
        if site.role == "pilot-light":
            _fail_on([protection.prestage(c, inventory, site.name, site.paths, spec.database.port)], "prestage")

    for site in warm:
        progress(f"starting the warm replica {site.name} on {site.address}")
        protection.start_replica(c, primary.address, spec.database.port, site.address, site.paths, site.name,
                                 str(site.logs / "postgresql.log"), spec.database.replication == "sync")
        record_postmaster(cloud, site)
        wait_for(lambda: postgres.streaming(c, primary.address, spec.database.port, site.name), 60, f"{site.name} to stream from {primary.name}")
    if warm and spec.database.replication == "sync":
        start_primary(c, cloud, primary, spec, warm[0].name)

    for site in [primary, *warm]:
        cloud.write_app_config(site, spec, inventory.epoch)
        cloud.start_app(site)
    _replicator(cloud)
    dns = start_dns(cloud, spec, inventory, prefix, progress)
    return {"dns": dns, "sites": [{"name": s.name, "role": s.role, "address": s.address} for s in sites],
            "seed": counts, "backups": [r.__dict__ for r in backups]}


def start_dns(cloud: LocalCloud, spec: Spec, inventory: Inventory, prefix: str, progress: Progress) -> list[dict]:
    """Two Knot servers as two independent DNS providers, pointed at the active site."""
    from infra.dns import local as local_dns
    from infra.dns.site import apply_site, failed

    addresses = dns_addresses(prefix)
    progress(f"starting DNS providers on {', '.join(addresses)} for {spec.dns.zone}")
    providers = local_dns.start_local_dns(cloud.workdir, addresses, local_dns.DEFAULT_PORT, spec.dns.zone)
    results = apply_site(inventory, inventory.active, providers, spec.dns.zone, spec.dns.names, spec.dns.ttl)
    if failed(results):
        details = "; ".join(f"{r.name}: {r.error}" for r in results if r.name in failed(results))
        raise FailoverError(f"DNS for {inventory.active} failed at {details}")
    return [{"name": r.name, "status": r.status} for r in results]


def _fail_on(results, what: str) -> None:
    failed = [r for r in results if not r.ok]
    if failed:
        details = "; ".join(f"{r.repo} at site {r.site} ({r.location}): {r.error}" for r in failed)
        raise FailoverError(f"{what} failed: {details}")
