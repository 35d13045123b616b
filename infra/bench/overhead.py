"""Overhead of protection on the primary: pgbench tps with archiving, a replica (async, sync) and
the pilot-light's WAL stream, vs none, on protected VM sites.

pgbench runs on the primary's host through the unix socket. A mode is the bench's settings on
top of protection's (conf.d/60-bench.conf, the primary restarted), the warm site's replica
started or stopped with its cluster, and the pilot-light's WAL receiver (a supervisor program)
started or stopped. Where protection's CPU goes is read from /proc over SSH on the primary's
host (the VMs share one kernel, so one listing shows every site's processes; each site's
processes are found from its postmaster's or program's PID, asked on its own host).
"""
from __future__ import annotations

import json
import re
import time

from infra.bench.cluster import Bench
from infra.sites.processes import wait_for
from infra.sites.protect import WALSTREAM_PROGRAM, streams_to
from infra.sites.site import PATHS, Site
from playbooks import postgres
from playbooks.host import run

DB = "pgbench"
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
TPS = re.compile(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)")


def parse_tps(output: str) -> float:
    """The tps pgbench reports, without connection time."""
    match = TPS.search(output)
    if not match:
        raise ValueError(f"no tps in pgbench output: {output.strip()[-300:]}")
    return float(match.group(1))


# Modes, in the order each repetition runs them. A replica shares the primary's disk and CPUs on
# one machine, which a standby at another site does not: these are the worst case. (The
# in-process bench also ran it on tmpfs at nice 19; a VM's disk is its overlay, so that is gone.)
MODES = ("off", "archive", "async", "async_stream", "sync")
LABELS = {
    "off": "off (no archiving, no replica)",
    "archive": "archiving to every repository, no replica",
    "async": "archiving + async replica (same disk and CPUs)",
    "async_stream": "archiving + async replica + pilot-light WAL stream (same disk and CPUs)",
    "sync": "archiving + synchronous replica (same disk and CPUs)",
}


def primary_settings(mode: str, standby: str) -> dict[str, str]:
    """The primary's overrides for a mode: archiving off only in `off`, a synchronous standby only in `sync`."""
    settings = {"synchronous_standby_names": f'"{standby}"' if mode == "sync" else ""}
    if mode == "off":
        settings["archive_mode"] = "off"
    return settings


def replica_settings(mode: str) -> dict[str, str]:
    """An asynchronous replica reports its position only when asked, as protection configures one."""
    return {} if mode == "sync" else {"wal_receiver_status_interval": "0"}


def runs_replica(mode: str) -> bool:
    return mode not in ("off", "archive")


def _mode(bench: Bench, mode: str) -> None:
    """WAL stream and replica stopped, the primary restarted with the mode's settings, then the
    mode's replica and stream started and streaming again."""
    primary, warm, pilot = bench.primary, bench.site("warm"), bench.site("pilot-light")
    pilot.supervise(WALSTREAM_PROGRAM, "stop")
    if warm.db_running():
        warm.cluster("stop")
    bench.override(primary, primary_settings(mode, warm.name))
    if runs_replica(mode):
        bench.override(warm, replica_settings(mode), restart=False)
        warm.cluster("start")
        wait_for(lambda: streams_to(primary, warm.name), 120, f"{warm.name} to stream", 0.3)
    if mode == "async_stream":
        pilot.supervise(WALSTREAM_PROGRAM, "start")
        wait_for(lambda: streams_to(primary, pilot.name), 120, f"{pilot.name}'s pg_receivewal to stream", 0.3)


# Where protection's CPU goes while pgbench runs: the primary's walsenders and archiver (with
# the archive-push processes it waited for), every process of the replica, and pg_receivewal.
ROLES = ("walsender", "archiving", "replica", "wal_stream")

# Run on a host: every process's parent, CPU ticks (its own and its waited-for children's) and title.
PROC_SCRIPT = r"""
import json, os
out = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        title = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        continue
    out[pid] = [stat, title]
print(json.dumps(out))
"""


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, CPU ticks of the process and of the children it waited for) from /proc/PID/stat."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def process_table(listing: str) -> dict[int, tuple[int, int, str]]:
    """pid -> (parent, ticks, title) from PROC_SCRIPT's output."""
    table = {}
    for pid, (stat, title) in json.loads(listing).items():
        parent, ticks = parse_stat(stat)
        table[int(pid)] = (parent, ticks, title)
    return table


# Debian sets cluster_name (15/main), which PostgreSQL puts into every title after "postgres: ".
TITLE = re.compile(r"^postgres: (?:[^:\s]+: )?(walsender|archiver)\b")


def primary_role(title: str) -> str | None:
    """The part of protection a primary's process is, from its process title."""
    match = TITLE.match(title)
    return {"walsender": "walsender", "archiver": "archiving"}[match.group(1)] if match else None


def process_ticks(table: dict[int, tuple[int, int, str]], top: int, role) -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks) of process `top` and its children that `role` names (by title)."""
    found = {}
    for pid, (parent, ticks, title) in table.items():
        name = role(title) if top in (parent, pid) else None
        if name:
            found[pid] = (name, ticks)
    return found


def core_percent(before: dict, after: dict, seconds: float, clock_ticks: int = 100) -> dict[str, float]:
    """Per role, the CPU used between two process_ticks snapshots, as % of one core."""
    ticks = dict.fromkeys(ROLES, 0)
    for pid, (name, now) in after.items():
        ticks[name] += now - before.get(pid, (name, 0))[1]
    return {name: round(100 * t / clock_ticks / seconds, 1) for name, t in ticks.items()}


def postmaster_pid(site: Site) -> int:
    return int(site.service().run(f"head -1 {PATHS.pgdata}/postmaster.pid").stdout.split()[0])


def stream_pid(site: Site) -> int | None:
    pid = site.root().run(f"supervisorctl pid {WALSTREAM_PROGRAM}", warn=True).stdout.strip()
    return int(pid) if pid.isdigit() and pid != "0" else None


def protection_ticks(bench: Bench, mode: str) -> dict[int, tuple[str, int]]:
    """CPU ticks of protection's processes now: one /proc listing over SSH, split by site."""
    table = process_table(bench.primary.service().run(f"python3 -c {_quote(PROC_SCRIPT)}").stdout)
    ticks = process_ticks(table, postmaster_pid(bench.primary), primary_role)
    if runs_replica(mode):
        ticks.update(process_ticks(table, postmaster_pid(bench.site("warm")), lambda title: "replica"))
    stream = stream_pid(bench.site("pilot-light")) if mode == "async_stream" else None
    if stream:
        ticks.update(process_ticks(table, stream, lambda title: "wal_stream"))
    return ticks


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def pgbench(primary: Site, clients: int, threads: int, seconds: int) -> float:
    argv = [f"{postgres.BIN}/pgbench", "-p", str(primary.port), "-c", str(clients), "-j", str(threads),
            "-T", str(seconds), DB]
    return parse_tps(run(primary.service(), argv, timeout=seconds * 5 + 60).stdout)


def measure(bench: Bench, runs: int, progress, scale: int = 10, clients: int = 4, threads: int = 2,
            seconds: int = 20) -> dict:
    """pgbench tps per mode, the modes interleaved in every repetition so drift hits them alike."""
    bench.up(progress)
    primary = bench.primary
    primary.psql(f"CREATE DATABASE {DB}")
    run(primary.service(), [f"{postgres.BIN}/pgbench", "-i", "-q", "-s", str(scale), "-p", str(primary.port), DB],
        timeout=600)
    # Autovacuum would vacuum pgbench_accounts in whichever run crosses its threshold (20% of 1M
    # rows dead: about every sixth run at ~34k updates each) and take that run's CPU and WAL;
    # every run starts from a VACUUM instead.
    primary.psql([f"ALTER TABLE {table} SET (autovacuum_enabled = off)" for table in PGBENCH_TABLES], db=DB)
    clock = int(primary.service().run("getconf CLK_TCK").stdout.strip())
    tps: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[dict]] = {m: [] for m in MODES}
    _mode(bench, MODES[0])
    progress(f"pgbench warm-up ({seconds} s, not counted)")
    pgbench(primary, clients, threads, seconds)
    for number in range(1, runs + 1):
        for mode in run_order(MODES, number):
            _mode(bench, mode)
            primary.psql("VACUUM", db=DB, timeout=600)
            primary.psql("CHECKPOINT", timeout=600)
            time.sleep(1)
            before = protection_ticks(bench, mode)
            started = time.monotonic()
            tps[mode].append(pgbench(primary, clients, threads, seconds))
            cpu[mode].append(core_percent(before, protection_ticks(bench, mode), time.monotonic() - started, clock))
        progress(f"pgbench run {number}/{runs}: " + ", ".join(f"{m} {v[-1]:.0f}" for m, v in tps.items()))
    return {"scale": scale, "clients": clients, "threads": threads, "seconds": seconds, "tps": tps, "cpu": cpu,
            "where": "vm"}


def run_order(modes, number: int) -> list[str]:
    """The modes in the order repetition `number` (from 1) runs them: forward, then backward.

    The machine's speed drifts over minutes (measured: `off` at 1351, 1618 and 1940 tps in three
    repetitions), so a fixed order would favour the modes that come last."""
    return list(modes) if number % 2 else list(reversed(modes))
