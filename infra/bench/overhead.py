"""Overhead of protection on the primary: pgbench tps with archiving and a replica, async and sync, vs off."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from infra.bench.cluster import Bench
from infra.data import protection
from infra.sites.database import record_postmaster
from infra.sites.processes import wait_for
from playbooks import postgres
from playbooks.host import ensure_dir, run

DB = "pgbench"
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
FIRST_HOST = 11  # sites on PREFIX.11-13, apart from the restore bench
TPS = re.compile(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)")


def parse_tps(output: str) -> float:
    """The tps pgbench reports, without connection time."""
    match = TPS.search(output)
    if not match:
        raise ValueError(f"no tps in pgbench output: {output.strip()[-300:]}")
    return float(match.group(1))


# Modes, in the order each repetition runs them. On one machine a replica shares the primary's
# disk and CPUs, which a standby at another site does not: the `_isolated` modes keep its data
# directory on tmpfs and run it at nice 19, the closest this machine gets to a second host.
# `async_stream_isolated` adds what protection also runs for a pilot-light site: pg_receivewal
# streaming the primary's WAL (likewise on tmpfs at nice 19).
MODES = ("off", "archive", "async", "async_isolated", "async_stream_isolated", "sync", "sync_isolated")
LABELS = {
    "off": "off (no archiving, no replica)",
    "archive": "archiving to every repository, no replica",
    "async": "archiving + async replica (same disk and CPUs)",
    "async_isolated": "archiving + async replica (tmpfs, nice 19)",
    "async_stream_isolated": "archiving + async replica + pilot-light WAL stream (tmpfs, nice 19)",
    "sync": "archiving + synchronous replica (same disk and CPUs)",
    "sync_isolated": "archiving + synchronous replica (tmpfs, nice 19)",
}
TMPFS = Path("/dev/shm")
TMPFS_NEEDED = 3 << 30


def _streaming(bench: Bench, name: str) -> bool:
    return postgres.streaming(bench.c, bench.primary.address, bench.port, name)


def tmpfs_problem() -> str | None:
    """Why the isolated modes cannot run here, or None."""
    if not TMPFS.is_dir():
        return f"no tmpfs at {TMPFS}"
    free = shutil.disk_usage(TMPFS).free
    return None if free >= TMPFS_NEEDED else f"{TMPFS} has {free >> 20} MB free, {TMPFS_NEEDED >> 20} MB needed"


def _stream_name(site) -> str:
    return f"receivewal-{site.name}"


def _stop_stream(bench: Bench, site) -> None:
    """Ends the WAL stream and drops its slot, which would otherwise keep WAL from being recycled.

    The received segments go too: the next stream's new slot starts at the current WAL, and
    pg_receivewal would ask for the position after its newest file, which is gone by then.
    """
    if bench.cloud.processes.stop(_stream_name(site)):
        slot = f"FROM pg_replication_slots WHERE slot_name = '{protection.stream_slot(site.name)}'"
        wait_for(lambda: bench.sql(bench.primary, f"SELECT count(*) {slot} AND active") == "0", 30,
                 "the WAL stream's walsender to release its slot")
        bench.sql(bench.primary, f"SELECT pg_drop_replication_slot(slot_name) {slot}")
        for received in Path(site.paths.wal_stream).iterdir():
            received.unlink()


def _mode(bench: Bench, mode: str, replicas: dict) -> None:
    """Stops both replicas (and the WAL stream), restarts the primary with the mode's settings,
    starts the mode's replica (configured as protection configures a replica of that mode)
    and stream."""
    primary = bench.primary
    if "isolated" in replicas:
        _stop_stream(bench, replicas["isolated"])
    for site in replicas.values():
        postgres.stop(bench.c, site.paths.pgdata)
        bench.cloud.processes.stop(f"pg-{site.name}")
    if mode == "off":
        bench.restart(primary, bench.settings(primary, archive=False))
        return
    if mode == "archive":
        bench.restart(primary, bench.settings(primary))
        return
    isolated, synchronous = mode.endswith("_isolated"), mode.startswith("sync")
    replica = replicas["isolated" if isolated else "shared"]
    bench.restart(primary, bench.settings(primary, sync_standby=replica.name if synchronous else None))
    postgres.configure(bench.c, replica.paths.pgdata,
                       protection.replica_settings(replica.address, bench.port, replica.paths, synchronous), protection.HBA)
    postgres.start(bench.c, replica.paths.pgdata, str(replica.logs / "postgresql.log"), nice=19 if isolated else 0)
    wait_for(lambda: _streaming(bench, replica.name), 60, f"{replica.name} to stream")
    if "_stream" in mode:
        protection.start_wal_stream(bench.c, bench.cloud.processes, replica.name, replica.paths, primary.address,
                                    bench.port, replica.logs / "receivewal.log", nice=19)
        wait_for(lambda: _streaming(bench, "pg_receivewal"), 60, "pg_receivewal to stream")


# Where protection's CPU goes while pgbench runs: the primary's walsenders and archiver (with
# the archive-push processes it waited for), every process of the replica, and pg_receivewal.
ROLES = ("walsender", "archiving", "replica", "wal_stream")


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, CPU ticks of the process and of the children it waited for) from /proc/PID/stat."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def primary_role(title: str) -> str | None:
    """The part of protection a primary's process is, from its process title."""
    if title.startswith("postgres: walsender"):
        return "walsender"
    if title.startswith("postgres: archiver"):
        return "archiving"
    return None


def cluster_ticks(pgdata: str, role=lambda title: "replica") -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks) of a running cluster's processes that `role` names."""
    postmaster = int(Path(pgdata, "postmaster.pid").read_text().split()[0])
    return process_ticks(postmaster, role)


def process_ticks(top: int, role) -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks) of process `top` and its children that `role` names (by title)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, ticks = parse_stat((entry / "stat").read_text())
            title = (entry / "cmdline").read_text().replace("\0", " ").strip()
        except (OSError, ValueError):
            continue  # gone meanwhile
        name = role(title) if top in (parent, int(entry.name)) else None
        if name:
            found[int(entry.name)] = (name, ticks)
    return found


def core_percent(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Per role, the CPU used between two cluster_ticks snapshots, as % of one core."""
    ticks = dict.fromkeys(ROLES, 0)
    for pid, (name, now) in after.items():
        ticks[name] += now - before.get(pid, (name, 0))[1]
    return {name: round(100 * t / os.sysconf("SC_CLK_TCK") / seconds, 1) for name, t in ticks.items()}


def pgbench(bench: Bench, clients: int, threads: int, seconds: int) -> float:
    argv = [f"{postgres.BIN}/pgbench", "-h", bench.primary.address, "-p", str(bench.port), "-U", "postgres",
            "-c", str(clients), "-j", str(threads), "-T", str(seconds), DB]
    return parse_tps(run(bench.c, argv, timeout=seconds * 5 + 60).stdout)


def measure(bench: Bench, runs: int, progress, scale: int = 10, clients: int = 4, threads: int = 2,
            seconds: int = 20) -> dict:
    """pgbench tps per mode, the modes interleaved in every repetition so drift hits them alike.

    The shared replica is the warm site's; the isolated one is the pilot-light site's directories
    with its data directory and WAL stream on tmpfs (removed at the end).
    """
    bench.prepare()
    primary, shared, isolated = bench.primary, bench.site("gcp"), bench.site("azure")
    bench.start(primary, bench.settings(primary))
    protection.create_stanzas(bench.c, bench.inventory, primary.paths)
    bench.sql(primary, f"CREATE DATABASE {DB}")
    run(bench.c, [f"{postgres.BIN}/pgbench", "-i", "-q", "-s", str(scale), "-h", primary.address, "-p", str(bench.port),
                  "-U", "postgres", DB], timeout=600)
    # Autovacuum would vacuum pgbench_accounts in whichever run crosses its threshold (20% of 1M
    # rows dead: about every sixth run at ~34k updates each) and take that run's CPU and WAL;
    # every run starts from a VACUUM instead.
    for table in PGBENCH_TABLES:
        bench.sql(primary, f"ALTER TABLE {table} SET (autovacuum_enabled = off)", DB)
    bench.sql(primary, "CHECKPOINT")
    replicas = {"shared": shared}
    skipped = tmpfs_problem()
    memory = TMPFS / f"failover-bench-{os.getpid()}"
    stream_memory = TMPFS / f"failover-bench-{os.getpid()}-walstream"
    try:
        if skipped is None:
            for directory, link in ((memory, isolated.paths.pgdata), (stream_memory, isolated.paths.wal_stream)):
                ensure_dir(bench.c, str(directory))
                Path(link).symlink_to(directory)
            replicas["isolated"] = isolated
        for site in replicas.values():
            protection.start_replica(bench.c, primary.address, bench.port, site.address, site.paths, site.name,
                                     str(site.logs / "postgresql.log"))
            record_postmaster(bench.cloud, site)
        modes = [m for m in MODES if "isolated" in replicas or not m.endswith("_isolated")]
        tps: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[dict]] = {m: [] for m in modes}
        _mode(bench, modes[0], replicas)
        progress(f"pgbench warm-up ({seconds} s, not counted)")
        pgbench(bench, clients, threads, seconds)
        for number in range(1, runs + 1):
            for mode in run_order(modes, number):
                _mode(bench, mode, replicas)
                bench.sql(primary, "VACUUM", DB)
                bench.sql(primary, "CHECKPOINT")
                time.sleep(1)
                replica = _running_replica(mode, replicas)
                before = _protection_ticks(bench, replica)
                started = time.monotonic()
                tps[mode].append(pgbench(bench, clients, threads, seconds))
                cpu[mode].append(core_percent(before, _protection_ticks(bench, replica), time.monotonic() - started))
            progress(f"pgbench run {number}/{runs}: " + ", ".join(f"{m} {v[-1]:.0f}" for m, v in tps.items()))
    finally:
        if "isolated" in replicas:
            bench.cloud.processes.stop(_stream_name(isolated))
            postgres.stop(bench.c, isolated.paths.pgdata, warn=True)
        shutil.rmtree(memory, ignore_errors=True)
        shutil.rmtree(stream_memory, ignore_errors=True)
    return {"scale": scale, "clients": clients, "threads": threads, "seconds": seconds, "tps": tps, "cpu": cpu,
            "isolated_skipped": skipped}


def run_order(modes: list[str], number: int) -> list[str]:
    """The modes in the order repetition `number` (from 1) runs them: forward, then backward.

    The machine's speed drifts over minutes (measured: `off` at 1351, 1618 and 1940 tps in three
    repetitions), so a fixed order would favour the modes that come last."""
    return list(modes) if number % 2 else list(reversed(modes))


def _running_replica(mode: str, replicas: dict):
    if mode in ("off", "archive"):
        return None
    return replicas["isolated" if mode.endswith("_isolated") else "shared"]


def _protection_ticks(bench: Bench, replica) -> dict[int, tuple[str, int]]:
    ticks = cluster_ticks(bench.primary.paths.pgdata, primary_role)
    if replica:
        ticks.update(cluster_ticks(replica.paths.pgdata))
        stream = bench.cloud.processes.pid(_stream_name(replica))
        if stream:  # runuser, and pg_receivewal under it
            ticks.update(process_ticks(stream, lambda title: "wal_stream"))
    return ticks
