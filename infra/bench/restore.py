"""Restore throughput on VM hosts: pgBackRest from another site's repository vs cp -a vs pg_dump/pg_restore.

Every method runs on a host over SSH: cp -a and pg_dump/pg_restore on the primary's host, the
pgBackRest restore on the pilot-light's host (whose cluster protection keeps stopped) from the
warm site's repository, which reaches it as a mounted store. Each timed command ends with a
`sync` on the host; the page cache is dropped before each method.
"""
from __future__ import annotations

import time

from infra.bench.cluster import SCRATCH, Bench, drop_caches, du, timed
from infra.data import protection
from infra.sites.site import PATHS
from infra.sites.processes import wait_for
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir, run

NAIVE_PORT_OFFSET = 200  # the fresh cluster pg_restore fills: unix socket only, on the db port + this
NAIVE_HBA = ["local all postgres peer", "local all all peer"]
WAL_TRIMMED = {"wal_keep_size": "0", "min_wal_size": "32MB", "max_wal_size": "64MB"}
COPY, DUMP, NAIVE = f"{SCRATCH}/copy", f"{SCRATCH}/dump", f"{SCRATCH}/naive-pg"


def build(bench: Bench, size_gb: float, progress) -> dict:
    """Protected VMs, the primary seeded to size, a full backup in the warm site's repository."""
    setup = bench.up(progress)
    primary = bench.primary
    progress(f"seeding {primary.name} ({primary.address}) to about {size_gb:g} GB on its host")
    started = time.monotonic()
    counts = bench.seed(size_gb, progress)
    setup["seed"] = time.monotonic() - started
    trim_wal(bench, progress)
    source = bench.site("warm")
    index = bench.inventory.repo_index(source.name)
    progress(f"full backup of {primary.name} into repo{index} ({source.name}'s store)")
    started = time.monotonic()
    result = pgbackrest.backup(primary.service(), PATHS.config, index)
    if not result.ok:
        raise RuntimeError(f"pgbackrest backup into repo{index} failed: {(result.stderr or result.stdout).strip()[-400:]}")
    backup_seconds = time.monotonic() - started
    primary.psql("CHECKPOINT")
    ensure_dir(primary.service(), SCRATCH, "755")
    pgdata, wal = du(primary, PATHS.pgdata), du(primary, f"{PATHS.pgdata}/pg_wal")
    return {"database_bytes": pgdata - wal, "counts": counts, "repo": index, "backup_seconds": backup_seconds,
            "datadir_bytes": pgdata, "pg_wal_bytes": wal, "setup_seconds": {k: round(v, 1) for k, v in setup.items()}}


def trim_wal(bench: Bench, progress, wanted: int = 128 * 2**20, rounds: int = 12) -> int:
    """Leaves about `wanted` bytes in the primary's pg_wal, so cp -a copies data rather than WAL
    (pgBackRest restores an empty pg_wal); returns what is left.

    Seeding leaves wal_keep_size of old WAL, and the checkpoints during it recycle old segments
    into future ones, as many as the checkpoint distance (measured: 640 MB of 1.6 GB at 1 GB),
    which no checkpoint removes until the WAL has passed them. So the primary restarts with
    wal_keep_size 0 and max_wal_size 64MB, then switches through the future segments (a logical
    message each, so that every switch moves on), and once the archiver has caught up a
    checkpoint removes them instead of recycling them.
    """
    primary = bench.primary
    bench.override(primary, WAL_TRIMMED)
    left = du(primary, f"{PATHS.pgdata}/pg_wal")
    for _ in range(rounds):
        if left <= wanted:
            break
        segments = int(primary.service().run(f"ls {PATHS.pgdata}/pg_wal | grep -c '^[0-9A-F]*$'").stdout)
        primary.psql(["SELECT pg_logical_emit_message(false, 'bench', 'trim'), pg_switch_wal()"] * segments,
                     timeout=600)
        wait_for(lambda: not primary.service().run(f"ls {PATHS.pgdata}/pg_wal/archive_status | grep -q ready",
                                                   warn=True).ok, 300, "the archiver to catch up", 0.5)
        primary.psql(["CHECKPOINT", "SELECT pg_switch_wal()", "CHECKPOINT"])
        left = du(primary, f"{PATHS.pgdata}/pg_wal")
        progress(f"pg_wal at {left / 2**20:.0f} MB")
    return left


def run_copy(bench: Bench) -> float:
    primary = bench.primary
    seconds = timed(primary, lambda c: c.run(f"cp -a {PATHS.pgdata} {COPY}", timeout=7200))
    primary.service().run(f"rm -rf {COPY}", timeout=600)
    return seconds


def run_pgbackrest(bench: Bench, repo: int) -> tuple[float, int]:
    """Restore into the pilot-light's empty data directory on its host; the size is what was written."""
    target = bench.site("pilot-light")
    c = target.service()
    c.run(f"rm -rf {PATHS.pgdata} && mkdir -m 700 {PATHS.pgdata}", timeout=600)
    seconds = timed(target, lambda c: pgbackrest.restore(c, PATHS.config, repo, process_max=2))
    size = du(target, PATHS.pgdata)
    c.run(f"rm -rf {PATHS.pgdata} && mkdir -m 700 {PATHS.pgdata}", timeout=600)
    return seconds, size


def naive_settings(port: int) -> dict[str, str]:
    """The fresh cluster's settings: the sites' own, on the unix socket only, archiving nothing."""
    settings = protection.pg_settings("", port, PATHS)
    settings.update(archive_mode="off", archive_command="", archive_timeout="0", restore_command="")
    return settings


def run_dump(bench: Bench) -> tuple[float, float]:
    """pg_dump -Fd -j2 of the primary, then pg_restore -j2 into a fresh cluster, both on the
    primary's host through the unix socket; (dump s, restore s)."""
    primary, db = bench.primary, bench.spec.database.name
    c, port = primary.service(), primary.port + NAIVE_PORT_OFFSET
    # The fresh cluster exists before the clock starts: the naive path's cost is moving the data.
    c.run(f"rm -rf {NAIVE} {DUMP}", timeout=600)
    postgres.init_cluster(c, NAIVE)
    postgres.configure(c, NAIVE, naive_settings(port), NAIVE_HBA)
    postgres.start(c, NAIVE, f"{SCRATCH}/naive.log")
    try:
        primary.psql(f"CREATE DATABASE {db}", port=port)
        drop_caches()
        dump = timed(primary, lambda c: run(c, [f"{postgres.BIN}/pg_dump", "-Fd", "-j2", "-f", DUMP,
                                                "-p", str(primary.port), db], timeout=7200))
        restore = timed(primary, lambda c: run(c, [f"{postgres.BIN}/pg_restore", "-j2", "-p", str(port), "-d", db, DUMP],
                                               timeout=7200))
    finally:
        postgres.stop(c, NAIVE, "immediate", warn=True)
        c.run(f"rm -rf {NAIVE} {DUMP}", timeout=600)
    return dump, restore


def measure(bench: Bench, size_gb: float, seed_mb: int, runs: int, progress) -> dict:
    built = build(bench, size_gb, progress)
    seconds: dict[str, list[float]] = {"copy": [], "pgbackrest": [], "dump": [], "dump_only": [], "restore_only": []}
    restored = 0
    cache_note = ""
    for number in range(1, runs + 1):
        # The methods alternate within each repetition, so contention from other work hits them alike.
        cache_note = drop_caches() or cache_note
        seconds["copy"].append(run_copy(bench))
        cache_note = drop_caches() or cache_note
        took, restored = run_pgbackrest(bench, built["repo"])
        seconds["pgbackrest"].append(took)
        dump, restore = run_dump(bench)
        seconds["dump"].append(dump + restore)
        seconds["dump_only"].append(dump)
        seconds["restore_only"].append(restore)
        progress(f"{size_gb:g} GB run {number}/{runs}: cp -a {seconds['copy'][-1]:.1f}s, pgBackRest {took:.1f}s, "
                 f"pg_dump+pg_restore {dump + restore:.1f}s")
    return {"size_gb": size_gb, "seed_mb": seed_mb, **built, "restored_bytes": restored, "seconds": seconds,
            "cache_note": cache_note, "where": "vm"}

