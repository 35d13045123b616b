"""The bench's sites: three local Debian VMs (infra/sites/localvms.py), protected as the engine
protects them (infra/sites/protect.py), reached only over SSH through `Site`.

No apps, DNS or protector: the clusters, the warm replica, the pilot-light's WAL stream and the
pgBackRest repositories that `sites protect` sets up, which is what a measurement needs. Every
command that a measurement times runs on a site's host (`Site.service()` / `Site.root()`); the
operator's side only drops the page cache (the VMs share this machine's kernel) and keeps time.
"""
from __future__ import annotations

import os
import secrets as token
import shlex
import shutil
import time
from pathlib import Path

from infra import secrets
from infra.sites import services, vmcloud
from infra.sites.localvms import LocalVms
from infra.sites.protect import PASSWORD_REF, protect
from infra.sites.site import CONF_DIR, Site, SshSettings
from infra.sites.tls import CertificateAuthority
from infra.sites.vm import _mounts_under
from infra.spec import Spec
from playbooks.postgres import render_settings

PREFIX = "127.0.50"
# seed.seed computes follows with int arithmetic that overflows above about 60 MB, so the bench
# seeds a base that size and grows posts (the same row shape) to the wanted database size.
BASE_SEED_MB = 50
EMPTY_CLUSTER_MB = 25  # template0, template1 and postgres of a fresh cluster
CHUNK_ROWS = 400_000
BENCH_CONF = f"{CONF_DIR}/conf.d/60-bench.conf"  # after protect's 50-failover.conf: the bench's overrides
SCRATCH = "/var/lib/postgresql/bench"  # on a host: the copy, the dump and the naive cluster


def database_target_bytes(size_gb: float) -> int:
    """The app database's size that makes the data directory (without pg_wal) about `size_gb`."""
    return int(size_gb * 2**30 - EMPTY_CLUSTER_MB * 2**20)


def grow_statement(users: int, rows: int) -> str:
    """Posts shaped like the seed's (bigint series: the seed's int arithmetic overflows)."""
    return (f"INSERT INTO posts (user_id, body) SELECT 1 + g % {int(users)}, repeat(md5(g::text), 16) "
            f"FROM generate_series(1::bigint, {int(rows)}::bigint) g")


def chunk_rows(size: int, target_bytes: int, per_row: int) -> int:
    """How many posts the next INSERT adds: what is missing, a little over, at most CHUNK_ROWS."""
    return min(CHUNK_ROWS, max(1000, int((target_bytes - size) / max(per_row, 100)) + 1000))


def grow(site: Site, database: str, target_bytes: int, progress=lambda m: None) -> int:
    """Adds posts until the database reaches target_bytes, through psql on the site's host; its size."""
    def value(sql: str) -> int:
        return int(site.psql(sql, db=database, timeout=3600).stdout.strip() or 0)

    size = value("SELECT pg_database_size(current_database())")
    users = value("SELECT max(id) FROM users")
    while size < target_bytes:
        per_row = value("SELECT pg_total_relation_size('posts') / greatest(count(*), 1) FROM posts")
        site.psql(grow_statement(users, chunk_rows(size, target_bytes, per_row)), db=database, timeout=3600)
        size = value("SELECT pg_database_size(current_database())")
        progress(f"database at {size / 2**20:.0f} of {target_bytes / 2**20:.0f} MB")
    # Hint bits and the visibility map set, as autovacuum leaves a database that has lived.
    # Otherwise the first full read after the backup (the drill's integrity check right
    # before the cut-off) sets them, and with data checksums that writes a full-page image
    # of every page: WAL that a restored site must replay before it takes writes.
    site.psql("VACUUM ANALYZE", db=database, timeout=3600)
    return size


def seed_mb_for(size_gb: float) -> int:
    """What a seed of `size_gb` is called in `--seed-mb` terms (the database part, in MB)."""
    return round(database_target_bytes(size_gb) / 2**20)


def replication_secret() -> None:
    """The bench's VMs need a replication password; one for this process unless one is set."""
    name = secrets.REF.match(PASSWORD_REF).group(1)
    os.environ.setdefault(name, token.token_urlsafe(24))


class Bench:
    """Three protected VM sites in workdir/vms on PREFIX.1-3; `remove()` takes them down again."""

    def __init__(self, workdir: Path, spec: Spec, prefix: str = PREFIX):
        self.workdir = Path(workdir)
        self.spec = spec
        self.prefix = prefix
        self.vms = LocalVms(self.workdir / "vms")
        self.inventory = None
        self.sites: dict[str, Site] = {}

    @property
    def primary(self) -> Site:
        return self.sites[self.inventory.active]

    def site(self, role: str) -> Site:
        return next(s for s in self.sites.values() if s.role == role)

    def up(self, progress=lambda m: None) -> dict[str, float]:
        """VMs booted and protected (TLS, replica, WAL stream, repositories, first backups); seconds per part."""
        replication_secret()
        seconds = {}
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.inventory = self.vms.up(self.spec, 3, self.prefix, progress)
        seconds["vms"] = time.monotonic() - started
        identity = self.vms.identity
        ssh = SshSettings(identity.known_hosts, identity.key)
        self.sites = {o.site: Site(o, ssh, self.spec.app.port) for o in self.inventory.sites}
        started = time.monotonic()
        protect(self.inventory, self.sites, self.spec, CertificateAuthority.ensure(self.vms.directory / "ca"), progress)
        seconds["protect"] = time.monotonic() - started
        return seconds

    def seed(self, size_gb: float, progress=lambda m: None) -> dict:
        """The seed on the primary's host (as `local up` seeds), grown to the size through psql there."""
        primary, name = self.primary, self.spec.database.name
        services.install_toolkit(primary)
        vmcloud.seed(primary, self.spec, BASE_SEED_MB)
        size = grow(primary, name, database_target_bytes(size_gb), progress)
        counts = {t: int(primary.psql(f"SELECT count(*) FROM {t}", db=name).stdout.strip())
                  for t in ("users", "posts", "follows", "media")}
        return {**counts, "database_bytes": size}

    def override(self, site: Site, settings: dict[str, str], restart: bool = True) -> None:
        """The bench's settings on top of protection's (conf.d/60-bench.conf), then a restart
        (without one, the cluster reads them when it next starts)."""
        site.write(BENCH_CONF, render_settings(settings), mode="644")
        if restart:
            site.cluster("restart")

    def remove(self) -> None:
        """Closes the SSH sessions, takes the VMs down (by PID, every mount undone), removes the work
        directory only when nothing is mounted below it any more."""
        for site in self.sites.values():
            site.close()
        self.sites = {}
        try:
            self.vms.down()
        finally:
            remove_workdir(self.workdir)


def remove_workdir(workdir: Path) -> bool:
    """rmtree of a work directory, refused while anything is mounted below it (a VM bind-mounts
    /dev: rmtree would follow it into the host's /dev). True when it is gone."""
    if _mounts_under(Path(workdir)):
        return False
    shutil.rmtree(workdir, ignore_errors=True)
    return not Path(workdir).exists()


def du(site: Site, path: str) -> int:
    """Bytes under path on the site's host (apparent sizes), 0 if it does not exist."""
    result = site.service().run(f"du -sb {shlex.quote(path)} 2>/dev/null || echo 0", timeout=600)
    return int(result.stdout.split()[0])


def drop_caches() -> str:
    """Flushes dirty pages and drops the page cache; returns '' or why it could not.

    From the operator's side: the VMs are chroots on this machine's kernel, so this is their
    page cache too (on cloud VMs it would run on each host)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return ""
    except OSError as error:
        return f"could not drop the page cache: {error}"


def timed(site: Site, action) -> float:
    """Wall seconds of `action(c)` on the site's host (c runs commands there as the service user)
    plus a `sync` there, so buffered writes are counted for every method alike. Two SSH round
    trips through the host's shell (about a millisecond each) are included."""
    c = site.service()
    started = time.monotonic()
    action(c)
    c.run("sync", timeout=600)
    return time.monotonic() - started
