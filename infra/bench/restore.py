"""Restore throughput: pgBackRest from another site's repository vs cp -a vs pg_dump/pg_restore."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from infra.bench.cluster import Bench, drop_caches, du, timed
from infra.data import protection
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir, run

BIN = postgres.BIN
NAIVE_HOST = 9  # the fresh cluster pg_restore fills listens on PREFIX.9


def build(bench: Bench, size_gb: float, progress) -> dict:
    """Primary seeded to size, a full backup in the warm site's repository (not the restoring site's)."""
    bench.prepare()
    primary = bench.primary
    bench.start(primary, bench.settings(primary))
    progress(f"seeding {primary.name} ({primary.address}) to about {size_gb:g} GB")
    counts = bench.seed(size_gb, progress)
    # Seeding leaves up to wal_keep_size of WAL in pg_wal; a copy of that would measure WAL, not data.
    bench.restart(primary, bench.settings(primary, wal_keep_size="0", min_wal_size="32MB"))
    bench.sql(primary, "CHECKPOINT")
    bench.sql(primary, "SELECT pg_switch_wal()")
    bench.sql(primary, "CHECKPOINT")
    protection.create_stanzas(bench.c, bench.inventory, primary.paths)
    source = bench.site("gcp")
    index = bench.inventory.repo_index(source.name)
    progress(f"full backup of {primary.name} into repo{index} ({source.name}'s store)")
    started = time.monotonic()
    result = pgbackrest.backup(bench.c, primary.paths.config, index)
    if not result.ok:
        raise RuntimeError(f"pgbackrest backup into repo{index} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    backup_seconds = time.monotonic() - started
    bench.sql(primary, "CHECKPOINT")
    pgdata = primary.paths.pgdata
    return {"database_bytes": du(pgdata) - du(f"{pgdata}/pg_wal"),"counts": counts, "repo": index, "backup_seconds": backup_seconds,
            "datadir_bytes": du(pgdata), "pg_wal_bytes": du(f"{pgdata}/pg_wal")}


def run_copy(bench: Bench, scratch: Path) -> float:
    target = scratch / "copy"
    seconds = timed(lambda: run(bench.c, ["cp", "-a", bench.primary.paths.pgdata, str(target)], timeout=7200))
    shutil.rmtree(target)
    return seconds


def run_pgbackrest(bench: Bench, repo: int) -> tuple[float, int]:
    """Restore into the pilot-light site's empty data directory; the returned size is what was written."""
    target = bench.site("azure")
    shutil.rmtree(target.paths.pgdata, ignore_errors=True)
    ensure_dir(bench.c, target.paths.pgdata)
    seconds = timed(lambda: pgbackrest.restore(bench.c, target.paths.config, repo, process_max=2))
    size = du(target.paths.pgdata)
    shutil.rmtree(target.paths.pgdata)
    return seconds, size


def run_dump(bench: Bench, scratch: Path) -> tuple[float, float]:
    """pg_dump -Fd -j2 of the primary, then pg_restore -j2 into a fresh cluster; (dump s, restore s)."""
    c, db = bench.c, bench.spec.database.name
    primary = bench.primary
    dump_dir, pgdata = scratch / "dump", scratch / "naive-pg"
    address = f"{primary.address.rsplit('.', 1)[0]}.{NAIVE_HOST}"
    # The fresh cluster exists before the clock starts: the naive path's cost is moving the data.
    postgres.init_cluster(c, str(pgdata))
    settings = protection.pg_settings(address, bench.port, primary.paths)
    settings.update(archive_mode="off", unix_socket_directories=str(scratch))
    postgres.configure(c, str(pgdata), settings, protection.HBA)
    postgres.start(c, str(pgdata), str(scratch / "naive.log"))
    try:
        run(c, ["psql", "-X", "-h", address, "-p", str(bench.port), "-U", "postgres", "-c", f"CREATE DATABASE {db}"])
        drop_caches()
        dump = timed(lambda: run(c, [f"{BIN}/pg_dump", "-Fd", "-j2", "-f", str(dump_dir), "-h", primary.address,
                                     "-p", str(bench.port), "-U", "postgres", db], timeout=7200))
        restore = timed(lambda: run(c, [f"{BIN}/pg_restore", "-j2", "-h", address, "-p", str(bench.port), "-U", "postgres",
                                        "-d", db, str(dump_dir)], timeout=7200))
    finally:
        postgres.stop(c, str(pgdata))
        shutil.rmtree(pgdata, ignore_errors=True)
        shutil.rmtree(dump_dir, ignore_errors=True)
    return dump, restore


def measure(bench: Bench, size_gb: float, seed_mb: int, runs: int, progress) -> dict:
    built = build(bench, size_gb, progress)
    scratch = Path(bench.cloud.workdir) / "scratch"
    ensure_dir(bench.c, str(scratch), "755")
    seconds: dict[str, list[float]] = {"copy": [], "pgbackrest": [], "dump": [], "dump_only": [], "restore_only": []}
    restored = 0
    cache_note = ""
    for number in range(1, runs + 1):
        # The methods alternate within each repetition, so contention from other work hits them alike.
        cache_note = drop_caches() or cache_note
        seconds["copy"].append(run_copy(bench, scratch))
        cache_note = drop_caches() or cache_note
        took, restored = run_pgbackrest(bench, built["repo"])
        seconds["pgbackrest"].append(took)
        dump, restore = run_dump(bench, scratch)
        seconds["dump"].append(dump + restore)
        seconds["dump_only"].append(dump)
        seconds["restore_only"].append(restore)
        progress(f"{size_gb:g} GB run {number}/{runs}: cp -a {seconds['copy'][-1]:.1f}s, pgBackRest {took:.1f}s, "
                 f"pg_dump+pg_restore {dump + restore:.1f}s")
    return {"size_gb": size_gb, "seed_mb": seed_mb, **built, "restored_bytes": restored, "seconds": seconds,
            "cache_note": cache_note}

