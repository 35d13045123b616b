"""Overhead of protection on the primary: pgbench tps with archiving and a replica, async and sync, vs off."""
from __future__ import annotations

import re
import time

from infra.bench.cluster import Bench
from infra.data import protection
from infra.sites.processes import wait_for
from playbooks import postgres
from playbooks.host import run

DB = "pgbench"
FIRST_HOST = 11  # sites on PREFIX.11-13, apart from the restore bench
TPS = re.compile(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)")


def parse_tps(output: str) -> float:
    """The tps pgbench reports, without connection time."""
    match = TPS.search(output)
    if not match:
        raise ValueError(f"no tps in pgbench output: {output.strip()[-300:]}")
    return float(match.group(1))


def _streaming(bench: Bench, name: str) -> bool:
    sql = f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
    return bench.sql(bench.primary, sql) == "1"


def _mode(bench: Bench, mode: str) -> None:
    """off: no archiving, replica stopped; async: archiving + streaming replica; sync: the replica synchronous."""
    primary, warm = bench.primary, bench.site("gcp")
    if mode == "off":
        postgres.stop(bench.c, warm.paths.pgdata)
        bench.cloud.processes.stop(f"pg-{warm.name}")
        bench.restart(primary, bench.settings(primary, archive=False))
        return
    bench.restart(primary, bench.settings(primary, sync_standby=warm.name if mode == "sync" else None))
    postgres.start(bench.c, warm.paths.pgdata, str(warm.logs / "postgresql.log"))
    wait_for(lambda: _streaming(bench, warm.name), 60, f"{warm.name} to stream")


def pgbench(bench: Bench, clients: int, threads: int, seconds: int) -> float:
    argv = [f"{postgres.BIN}/pgbench", "-h", bench.primary.address, "-p", str(bench.port), "-U", "postgres",
            "-c", str(clients), "-j", str(threads), "-T", str(seconds), DB]
    return parse_tps(run(bench.c, argv, timeout=seconds * 5 + 60).stdout)


def measure(bench: Bench, runs: int, progress, scale: int = 10, clients: int = 4, threads: int = 2,
            seconds: int = 20) -> dict:
    bench.prepare()
    primary, warm = bench.primary, bench.site("gcp")
    bench.start(primary, bench.settings(primary))
    protection.create_stanzas(bench.c, bench.inventory, primary.paths)
    bench.sql(primary, f"CREATE DATABASE {DB}")
    run(bench.c, [f"{postgres.BIN}/pgbench", "-i", "-q", "-s", str(scale), "-h", primary.address, "-p", str(bench.port),
                  "-U", "postgres", DB], timeout=600)
    bench.sql(primary, "CHECKPOINT")
    protection.start_replica(bench.c, primary.address, bench.port, warm.address, warm.paths, warm.name,
                             str(warm.logs / "postgresql.log"))
    tps: dict[str, list[float]] = {"off": [], "async": [], "sync": []}
    for number in range(1, runs + 1):
        for mode, values in tps.items():
            _mode(bench, mode)
            bench.sql(primary, "CHECKPOINT")
            time.sleep(1)
            values.append(pgbench(bench, clients, threads, seconds))
        progress(f"pgbench run {number}/{runs}: " + ", ".join(f"{m} {v[-1]:.0f} tps" for m, v in tps.items()))
    return {"scale": scale, "clients": clients, "threads": threads, "seconds": seconds, "tps": tps}
