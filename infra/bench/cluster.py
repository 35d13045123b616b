"""Dedicated bench sites built with the same functions as the local cloud, on 127.0.50.x.

No apps, DNS or media replicator: only the clusters and pgBackRest repositories a measurement
needs. Every postmaster started is recorded in the work directory's PID table and stopped by
its data directory (pg_ctl) or PID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from invoke import Context

from infra.app import seed
from infra.data import protection
from infra.sites.bringup import _dirs
from infra.sites.database import dsn, record_postmaster
from infra.sites.contract import Inventory
from infra.sites.local import LocalCloud, LocalSite, outputs
from infra.spec import Spec
from playbooks import postgres

PREFIX = "127.0.50"
ROLES = (("aws", "primary"), ("gcp", "warm"), ("azure", "pilot-light"))
# seed.seed computes follows with int arithmetic that overflows above about 60 MB, so the bench
# seeds a base that size and grows posts (the same row shape) to the wanted database size.
BASE_SEED_MB = 50
EMPTY_CLUSTER_MB = 25  # template0, template1 and postgres of a fresh cluster
CHUNK_ROWS = 400_000


def database_target_bytes(size_gb: float) -> int:
    """The app database's size that makes the data directory (without pg_wal) about `size_gb`."""
    return int(size_gb * 2**30 - EMPTY_CLUSTER_MB * 2**20)


def grow(dsn: str, target_bytes: int, progress=lambda m: None) -> int:
    """Adds posts shaped like the seed's until the database reaches target_bytes; returns its size."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        users = conn.execute("SELECT max(id) FROM users").fetchone()[0]
        while size < target_bytes:
            per_row = conn.execute("SELECT pg_total_relation_size('posts') / greatest(count(*), 1) FROM posts").fetchone()[0]
            rows = min(CHUNK_ROWS, max(1000, int((target_bytes - size) / max(per_row, 100)) + 1000))
            conn.execute("INSERT INTO posts (user_id, body) SELECT 1 + g %% %s, repeat(md5(g::text), 16) "
                         "FROM generate_series(1::bigint, %s::bigint) g", (users, rows))
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            progress(f"database at {size / 2**20:.0f} of {target_bytes / 2**20:.0f} MB")
        # Hint bits and the visibility map set, as autovacuum leaves a database that has lived.
        # Otherwise the first full read after the backup (the drill's integrity check right
        # before the cut-off) sets them, and with data checksums that writes a full-page image
        # of every page: WAL that a restored site must replay before it takes writes.
        conn.execute("VACUUM ANALYZE")
    return size


def seed_mb_for(size_gb: float) -> int:
    """What a seed of `size_gb` is called in `--seed-mb` terms (the database part, in MB)."""
    return round(database_target_bytes(size_gb) / 2**20)


class Bench:
    """Three sites' directories and repositories; only the clusters a measurement starts run."""

    def __init__(self, workdir: Path, spec: Spec, first_host: int = 1):
        self.c = Context()
        self.spec = spec
        self.cloud = LocalCloud(workdir)
        self.sites = [LocalSite(name, role, f"{PREFIX}.{first_host + i}", str(Path(workdir) / "sites" / name))
                      for i, (name, role) in enumerate(ROLES)]
        self.inventory = Inventory([outputs(s, spec) for s in self.sites], active=self.sites[0].name)
        self.port = spec.database.port

    @property
    def primary(self) -> LocalSite:
        return self.sites[0]

    def site(self, name: str) -> LocalSite:
        return next(s for s in self.sites if s.name == name)

    def prepare(self) -> None:
        self.cloud.save(self.sites, prefix=PREFIX, storage="posix", dropped=[])
        self.inventory.save(self.cloud.inventory_file)
        for site in self.sites:
            _dirs(self.c, site)
            protection.install_pgbackrest(self.c, self.inventory, site.name, site.paths, self.port)

    def settings(self, site: LocalSite, archive: bool = True, sync_standby: str | None = None, **extra) -> dict:
        settings = protection.pg_settings(site.address, self.port, site.paths, sync_standby)
        if not archive:
            settings["archive_mode"] = "off"
        return {**settings, **extra}

    def start(self, site: LocalSite, settings: dict) -> None:
        postgres.init_cluster(self.c, site.paths.pgdata)
        postgres.configure(self.c, site.paths.pgdata, settings, protection.HBA)
        postgres.start(self.c, site.paths.pgdata, str(site.logs / "postgresql.log"), timeout=600)
        postgres.reload(self.c, site.paths.pgdata)
        record_postmaster(self.cloud, site)

    def restart(self, site: LocalSite, settings: dict) -> None:
        postgres.stop(self.c, site.paths.pgdata)
        self.cloud.processes.stop(f"pg-{site.name}")
        self.start(site, settings)

    def sql(self, site: LocalSite, text: str, db: str = "postgres") -> str:
        return postgres.psql(self.c, site.address, self.port, text, db).stdout.strip()

    def seed(self, size_gb: float, progress=lambda m: None) -> dict:
        primary = self.primary
        name = self.spec.database.name
        if not self.sql(primary, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.sql(primary, f"CREATE DATABASE {name}")
        seed.create_schema(dsn(primary, self.spec), primary.name)
        seed.seed(dsn(primary, self.spec), primary.media_dir, BASE_SEED_MB)
        size = grow(dsn(primary, self.spec), database_target_bytes(size_gb), progress)
        counts = {t: int(self.sql(primary, f"SELECT count(*) FROM {t}", self.spec.database.name))
                  for t in ("users", "posts", "follows", "media")}
        return {**counts, "database_bytes": size}

    def stop_all(self) -> None:
        for site in self.sites:
            if Path(site.paths.pgdata, "postmaster.pid").exists():
                postgres.stop(self.c, site.paths.pgdata)
        for name in self.cloud.processes.names():
            self.cloud.processes.stop(name)

    def remove(self) -> None:
        self.stop_all()
        shutil.rmtree(self.cloud.workdir, ignore_errors=True)


def du(path: str) -> int:
    """Bytes under path (apparent sizes), 0 if it does not exist."""
    if not os.path.exists(path):
        return 0
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def drop_caches() -> str:
    """Flushes dirty pages and drops the page cache; returns '' or why it could not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return ""
    except OSError as error:
        return f"could not drop the page cache: {error}"


def timed(action) -> float:
    """Wall seconds of action() plus a sync, so buffered writes are counted for every method alike."""
    started = time.monotonic()
    action()
    os.sync()
    return time.monotonic() - started
