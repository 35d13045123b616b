"""`failover local up|down|drop|restore-site`: the local cloud as Debian VMs, reached only over SSH.

`local up` in a work directory W:
1. refuses an Inventory in W that it did not write (a pulled one is never reused, nor deleted),
   addresses that something already answers on; the replication password and the backup and
   media keys that are not set are generated into W/vms/secrets.env (mode 600), which the
   engine's commands load from that workdir;
2. boots one VM per site (infra/sites/localvms.py) with its store (infra/sites/localstores.py:
   `--storage posix`, a directory mounted in every VM, or `emulated`, its cloud's object-store
   emulator on the site's own address, whose credentials join W/vms/secrets.env), and protects
   them (infra/sites/protect.py);
3. ships the toolkit to every host, seeds the primary on its host, puts the checksum manifest
   into every store and checks that the seed's WAL and a backup are in every repository;
4. starts the app on the primary and the warm site, the protector on the primary, and two Knot
   DNS servers (two independent providers) pointed at the primary;
5. writes W/inventory.json, which every engine command reads, and a copy into every store.
Run again, it completes a cloud that stopped half-way: every step checks before it acts.
Everything else reaches the sites the way the engine does: `Site` over SSH, `Store` for stores.
"""
from __future__ import annotations

import json
import os
import secrets as token
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from infra import secrets
from infra.data import encryption, integrity, protection
from infra.data import pgbackrest as pgbr_config
from infra.data.storage import Store
from infra.dns import local as local_dns
from infra.dns.site import CHOICE_FILE, apply_site, choose_providers, failed
from infra.errors import FailoverError
from infra.sites import services
from infra.sites.contract import Inventory
from infra.sites.fleet import Fleet
from infra.sites.localvms import LocalVms, plan
from infra.sites.processes import port_answers, wait_for
from infra.sites.protect import PASSWORD_REF, protect
from infra.sites.site import APP_PROGRAM, PATHS, Site, SiteError, SshSettings
from infra.sites.tls import CertificateAuthority
from infra.spec import Spec
from playbooks import pgbackrest

Progress = Callable[[str], None]
SECRETS_FILE = "secrets.env"
LOCAL_SECRETS = (PASSWORD_REF, *encryption.KEY_REFS)  # what `local up` generates when unset
DNS_HOSTS = (53, 54)  # PREFIX.53 and PREFIX.54: the two DNS providers


def dns_addresses(prefix: str) -> list[str]:
    return [f"{prefix}.{host}" for host in DNS_HOSTS]


class VmCloud:
    """The local cloud of work directory W: its VMs in W/vms, its Inventory in W/inventory.json."""

    def __init__(self, workdir: Path, progress: Progress = lambda m: None):
        self.workdir = Path(workdir)
        self.vms = LocalVms(self.workdir / "vms")
        self.inventory_file = self.workdir / "inventory.json"
        self.progress = progress
        self.seconds: dict[str, float] = {}

    # -------------------------------------------------------- up

    def up(self, spec: Spec, count: int, prefix: str, seed_mb: int, storage: str = "posix",
           witnesses: int | None = None) -> dict:
        started = time.monotonic()
        self._refuse_foreign_inventory()
        resuming = self.vms.exists
        if resuming:
            self._refuse_other_cloud(spec, count, prefix, storage)
        else:
            _refuse_taken(spec, count, prefix)
        self._local_secrets()
        what = "already up, completing them" if resuming else f"{count} sites on {prefix}.x, {storage} stores"
        with self._step("vms", f"VMs: {what}"):
            if resuming:
                self.vms.start_stores()
                inventory = Inventory.load(self.vms.inventory_file)
            else:
                inventory = self.vms.up(spec, count, prefix, self.progress, storage, witnesses)
            self._store_secrets()
        sites = self.sites(inventory, spec)
        try:
            summary = self._protect_and_start(inventory, sites, spec, prefix, seed_mb)
        finally:
            for site in sites.values():
                site.close()
        summary["seconds"] = {**self.seconds, "total": round(time.monotonic() - started, 1)}
        return summary

    def _protect_and_start(self, inventory: Inventory, sites: dict[str, Site], spec: Spec, prefix: str,
                           seed_mb: int) -> dict:
        primary = sites[inventory.active]
        with self._step("protect", "protecting the sites (TLS, replication, pgBackRest, replica, WAL stream)"):
            protect(inventory, sites, spec, CertificateAuthority.ensure(self.vms.directory / "ca"), self.progress)
        with self._step("toolkit", "shipping the toolkit to every host"):
            packed = services.toolkit_archive()  # once for every host
            services.on_each(list(sites.values()), lambda site: services.install_toolkit(site, packed))
        with self._step("seed", f"seeding about {seed_mb} MB on {primary.name}'s host"):
            counts = seed(primary, spec, seed_mb)
        with self._step("manifest_and_backups",
                        "checksum manifest into every store, the seed's WAL and a backup in every repository"):
            integrity.put_manifest(integrity.checksums_of(primary, spec.database.name),
                                   [Store(s) for s in inventory.sites], primary.name)
            backups = backups_everywhere(primary, inventory)
            media_copies = media_everywhere(primary, inventory)
        with self._step("services", "apps on the primary and the warm site, the protector on the primary"):
            apps = services.start_services(inventory, sites, spec)
        with self._step("dns", f"DNS providers on {', '.join(dns_addresses(prefix))} pointing at {primary.name}"):
            dns = start_dns(self.workdir, spec, inventory, prefix)
        with self._step("inventory", f"inventory into {self.inventory_file} and every store"):
            self._publish(inventory, primary.ssh)
        return {"inventory": str(self.inventory_file),
                "sites": [{"name": s.site, "role": s.role, "address": s.db_host} for s in inventory.sites],
                "seed": counts, "backups": backups, "media": media_copies, "apps": apps, "dns": dns}

    def sites(self, inventory: Inventory, spec: Spec) -> dict[str, Site]:
        ssh = SshSettings(self.vms.identity.known_hosts, self.vms.identity.key)
        return {o.site: Site(o, ssh, spec.app.port) for o in inventory.sites}

    def _publish(self, inventory: Inventory, ssh: SshSettings) -> None:
        Fleet(self.workdir, ssh).publish(inventory)
        self.vms.record_inventory(self.inventory_file.read_text())

    @contextmanager
    def _step(self, key: str, what: str):
        """Announces a step and times it; a step that fails says how to go on from there."""
        self.progress(what)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.progress(f"`local up` stopped at: {what}. Fix the cause (below), then run `failover local up` "
                          "again (it completes the cloud), or `failover local down`")
            raise
        self.seconds[key] = round(time.monotonic() - started, 1)

    # -------------------------------------------------------- checks before anything changes

    def _refuse_foreign_inventory(self) -> None:
        if self.inventory_file.exists() and not self.vms.wrote_inventory(self.inventory_file):
            raise FailoverError(f"{self.inventory_file} was not written by `failover local up` here (a pulled "
                                "Inventory of cloud sites?); it is never reused or removed: use another --workdir "
                                "(or FAILOVER_WORKDIR) for the local cloud, or move that file away yourself")

    def _refuse_other_cloud(self, spec: Spec, count: int, prefix: str, storage: str) -> None:
        """Completing a cloud half-way up: only the same one, not failed over, every VM up."""
        existing = self.vms.sites()
        wanted = plan(spec, count, prefix)
        if [(s.site, s.address) for s in existing] != [(s.site, s.address) for s in wanted] or \
                self.vms.storage != storage:
            raise FailoverError(f"{self.workdir} already holds a local cloud of {len(existing)} sites on "
                                f"{existing[0].address.rsplit('.', 1)[0]}.x with {self.vms.storage} stores; run "
                                "`failover local down` first to change --sites, --prefix or --storage")
        if self.inventory_file.exists() and Inventory.load(self.inventory_file).active != spec.primary.name:
            active = Inventory.load(self.inventory_file).active
            raise FailoverError(f"{self.workdir} has failed over to {active}; `local up` only builds the initial "
                                f"layout: use `failover back --to {spec.primary.name}` or `failover local down`")
        down = [vm.site for vm in self.vms.vms() if vm.sshd_pid() is None]
        if down:
            raise FailoverError(f"the VMs of {', '.join(down)} do not run (dropped?): `failover local restore-site "
                                f"--site {down[0]}` or `failover local down` first")

    def _local_secrets(self) -> None:
        """The replication password and both encryption keys from the environment, else from
        W/vms/secrets.env, where those missing are generated (once: kept while the VMs live)."""
        path = self.vms.directory / SECRETS_FILE
        kept = secrets.parse_env(path.read_text()) if path.exists() else {}
        names = [secrets.REF.match(ref).group(1) for ref in LOCAL_SECRETS]
        made = {name: token.token_urlsafe(36) for name in names if not os.environ.get(name) and name not in kept}
        if made:
            _write_secrets(path, kept | made)
            self.progress(f"{', '.join(sorted(made))} not set: generated into {path} (mode 600); the engine's "
                          "commands load it from this workdir (elsewhere: `set -a; . that file; set +a`)")
        secrets.load_env_file(path)

    def _store_secrets(self) -> None:
        """The values behind the stores' credential references (the emulators'; none for posix
        stores) into W/vms/secrets.env beside the generated secrets, and into the environment:
        the emulators' own values win (a new moto has new keys)."""
        values = self.vms.stores.secrets()
        path = self.vms.directory / SECRETS_FILE
        kept = secrets.parse_env(path.read_text()) if path.exists() else {}
        if values and kept | values != kept:
            _write_secrets(path, kept | values)
        for name, value in values.items():
            secrets.remember(value)
            os.environ[name] = value

    # -------------------------------------------------------- down, drop, restore-site

    def down(self) -> dict:
        """Stops the DNS servers by PID and every VM; removes only what `local up` made."""
        dns = local_dns.stop_local_dns(self.workdir, remove=True)
        (self.workdir / CHOICE_FILE).unlink(missing_ok=True)
        removed = self._remove_inventory()
        stopped = self.vms.down()
        (self.vms.directory / SECRETS_FILE).unlink(missing_ok=True)  # the secret and CA served only these VMs
        shutil.rmtree(self.vms.directory / "ca", ignore_errors=True)
        for directory in (self.vms.directory, self.workdir / "pids"):
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        return {"dns_stopped": dns, "vms_stopped": stopped, "inventory_removed": removed}

    def _remove_inventory(self) -> bool:
        if not self.inventory_file.exists():
            return False
        if not self.vms.wrote_inventory(self.inventory_file):
            self.progress(f"left {self.inventory_file} alone: `local up` did not write it")
            return False
        self.inventory_file.unlink()
        return True

    def drop(self, name: str) -> dict:
        """The provider cuts the site off: its VM's processes killed by PID, its store gone for everyone."""
        killed = self.vms.drop(name)
        return {"site": name, "killed": len(killed), "storage": "unreachable"}

    def restore_site(self, name: str, boot: bool = True) -> dict:
        """The provider gives the site back: its store, and its VM booted (sshd and the boot-time
        services, whose rejoin agent decides about its database); `boot=False`: sshd only."""
        was_dropped = self.vms.restore(name, boot)
        self._store_secrets()
        started = ["sshd", "boot-time services (bootstrap, supervisord)"] if boot else ["sshd"]
        return {"site": name, "was_dropped": was_dropped, "storage": "reachable", "started": started}


def _write_secrets(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.render_env(values))


# ---------------------------------------------------------------- the steps on the hosts

def _refuse_taken(spec: Spec, count: int, prefix: str) -> None:
    """Nothing may answer yet where the apps and the DNS servers will listen (the VMs' SSH and
    database ports are LocalVms' check): another cloud on this prefix would answer in their place."""
    wanted = [(s.address, spec.app.port, f"{s.site}'s app") for s in plan(spec, count, prefix)]
    wanted += [(address, local_dns.DEFAULT_PORT, "a DNS provider") for address in dns_addresses(prefix)]
    taken = [f"{address}:{port} ({what})" for address, port, what in wanted if port_answers(address, port, 0.3)]
    if taken:
        raise FailoverError(f"something already answers on {', '.join(taken)}: another local cloud uses {prefix}.x. "
                            "Stop it with `failover local down --workdir <its workdir>`, or choose another --prefix")


def seed(primary: Site, spec: Spec, seed_mb: int) -> dict:
    """The epoch row and the seed data, written on the primary's host (media into a staging
    directory there, which `media_everywhere` empties into the buckets)."""
    result = services.run_toolkit(primary, "infra.app.seed", services.dsn(primary.outputs, spec.database.name),
                                  PATHS.media_staging, str(seed_mb), primary.name, timeout=3600)
    return json.loads(result.stdout.strip().splitlines()[-1])


def backups_everywhere(primary: Site, inventory: Inventory) -> dict[str, int]:
    """`pgbackrest check` (a WAL switch, archived into every repository: the seed's WAL is in all of
    them), then each repository's backup count, which must not be zero."""
    c = primary.service()
    check = pgbackrest.check(c, PATHS.config)
    if not check.ok:
        raise SiteError(f"site {primary.name}: host {primary.db_host}: `pgbackrest check` failed: "
                        f"{secrets.redact((check.stderr or check.stdout).strip()[-300:])}; see "
                        f"{PATHS.pgbackrest_dir}/log there")
    counts = {}
    for index, name in pgbr_config.repositories(inventory).items():
        info, error = pgbackrest.info(c, PATHS.config, index)
        counts[f"repo{index} ({name})"] = len((info or {}).get("backup", []))
        if not counts[f"repo{index} ({name})"]:
            raise SiteError(f"site {primary.name}: repo{index} ({name}) holds no backup {error}; "
                            "run `failover sites protect` again")
    return counts


def media_everywhere(primary: Site, inventory: Inventory) -> dict[str, str]:
    """The seed's media, encrypted, into every site's bucket, then out of the staging directory
    (no plaintext copy is kept; the protector copies later media from the primary's bucket)."""
    c = primary.service()
    results = protection.sync_media(c, protection.install_rclone(c, inventory, PATHS), inventory, PATHS.media_staging,
                                    inventory.names)
    broken = [r for r in results if not r.ok]
    if broken:
        raise SiteError(f"site {primary.name}: media copy into {broken[0].site}'s bucket failed: {broken[0].error}")
    c.run(f"find {PATHS.media_staging} -mindepth 1 -delete")
    return {r.site: f"{r.seconds} s" for r in results}


def start_dns(workdir: Path, spec: Spec, inventory: Inventory, prefix: str) -> list[dict]:
    """Two Knot servers as two independent DNS providers, pointed at the active site."""
    providers = local_dns.start_local_dns(workdir, dns_addresses(prefix), local_dns.DEFAULT_PORT, spec.dns.zone)
    choose_providers(workdir, "local")  # explicit: the engine moves these, not the spec's providers
    results = apply_site(inventory, inventory.active, providers, spec.dns.zone, spec.dns.names, spec.dns.ttl)
    if failed(results):
        details = "; ".join(f"{r.name}: {r.error}" for r in results if r.name in failed(results))
        raise FailoverError(f"DNS for {inventory.active} failed at {details}; see {local_dns.dns_dir(workdir)}")
    return [{"name": r.name, "status": r.status} for r in results]
