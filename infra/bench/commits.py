"""`python -m infra.bench.commits`: what each replication mode costs a commit, side by side in one run.

On one `failover local up` cloud (three Debian VMs on PREFIX.1-3), each round protects the sites
again under every mode in turn (quorum, sync, async: `sites protect` with the spec's mode
replaced, as an operator's edit of database.replication would) and measures on the primary:
- the app's write latency: sequential POST /posts through its public address for `--seconds`
  (p50, p99, max after the first second);
- pgbench (TPC-B-like, 4 clients, 2 threads, `--seconds`) on the primary's host: tps and its
  average latency.
Modes are interleaved, forward then backward, so the machine's drift hits them alike. The VMs
share this machine's disk and CPUs: the secondaries' flushes compete with the primary's, which
separate hosts would not. Prints a markdown table (and the raw figures as JSON with --json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from infra.bench.overhead import parse_tps, run_order
from infra.sites.fleet import Fleet
from infra.sites.protect import protect
from infra.sites.tls import CertificateAuthority
from infra.sites.vm import _mounts_under
from infra.sites.vmcloud import VmCloud
from infra.spec import REPLICATION_MODES, Spec, load_spec
from playbooks import postgres
from playbooks.host import run

ROOT = Path(__file__).resolve().parents[2]
LATENCY = re.compile(r"latency average = ([0-9.]+) ms")
PGBENCH_DB = "pgbench"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(latencies: list[float]) -> dict:
    return {"writes": len(latencies), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1)}


def app_writes(address: str, port: int, seconds: float, settle: float = 1.0) -> dict:
    """Sequential posts through the app; the latencies of those started after `settle` seconds."""
    latencies, failed, started = [], 0, time.monotonic()
    while time.monotonic() - started < seconds:
        clock = time.monotonic()
        request = urllib.request.Request(f"http://{address}:{port}/posts", b'{"body": "bench"}',
                                         {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                ok = reply.status == 201
        except (urllib.error.URLError, OSError):
            ok = False
        failed += not ok
        if clock - started >= settle:
            latencies.append(time.monotonic() - clock)
    return {**summarize(latencies), "failed": failed}


def pgbench(fleet: Fleet, seconds: int) -> dict:
    primary = fleet.site(fleet.inventory().active)
    argv = [f"{postgres.BIN}/pgbench", "-p", str(primary.port), "-c", "4", "-j", "2", "-T", str(seconds), PGBENCH_DB]
    output = run(primary.service(), argv, timeout=seconds * 5 + 60).stdout
    latency = LATENCY.search(output)
    return {"tps": parse_tps(output), "latency_ms": float(latency.group(1)) if latency else None}


def set_mode(workdir: Path, fleet: Fleet, spec: Spec, mode: str) -> None:
    vm_cloud = VmCloud(workdir)
    sites = vm_cloud.sites(fleet.inventory(), spec)
    try:
        protect(fleet.inventory(), sites, replace(spec, database=replace(spec.database, replication=mode)),
                CertificateAuthority.ensure(vm_cloud.vms.directory / "ca"))
    finally:
        for site in sites.values():
            site.close()


def measure(workdir: Path, spec: Spec, rounds: int, seconds: int, progress) -> dict:
    fleet = Fleet(workdir, app_port=spec.app.port)
    try:
        primary = fleet.site(fleet.inventory().active)
        primary.psql(f"CREATE DATABASE {PGBENCH_DB}")
        run(primary.service(), [f"{postgres.BIN}/pgbench", "-i", "-q", "-s", "5", "-p", str(primary.port),
                                PGBENCH_DB], timeout=600)
        results: dict[str, list[dict]] = {mode: [] for mode in REPLICATION_MODES}
        for number in range(1, rounds + 1):
            for mode in run_order(REPLICATION_MODES, number):
                set_mode(workdir, fleet, spec, mode)
                standbys = primary.psql("SHOW synchronous_standby_names").stdout.strip()
                primary.psql("CHECKPOINT")
                writes = app_writes(primary.outputs.public_addresses[0], spec.app.port, seconds)
                bench = pgbench(fleet, seconds)
                results[mode].append({"standbys": standbys, "app": writes, "pgbench": bench})
                progress(f"round {number} {mode} ({standbys or 'none'}): app p50 {writes['p50_ms']} ms, "
                         f"p99 {writes['p99_ms']} ms; pgbench {bench['tps']:.0f} tps")
        set_mode(workdir, fleet, spec, spec.database.replication)
        return {"rounds": rounds, "seconds": seconds, "load_end": os.getloadavg()[0], "modes": results}
    finally:
        fleet.close()


def table(result: dict) -> str:
    """Markdown: per mode the medians over rounds."""
    lines = ["| mode | commits wait for | app write p50 | app write p99 | pgbench tps (4 clients) | pgbench latency |",
             "|---|---|---|---|---|---|"]
    for mode, runs in result["modes"].items():
        def median(key, part):
            return statistics.median(r[part][key] for r in runs if r[part][key] is not None)
        lines.append(f"| {mode} | `{runs[0]['standbys'] or '(none)'}` | {median('p50_ms', 'app'):.1f} ms | "
                     f"{median('p99_ms', 'app'):.1f} ms | {median('tps', 'pgbench'):.0f} | "
                     f"{median('latency_ms', 'pgbench'):.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.bench.commits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="127.0.100", help="loopback prefix of the VMs (PREFIX.1-3, DNS .53/.54)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.prefix.startswith("127."):
        parser.error("--prefix must be inside 127.0.0.0/8")
    workdir = Path(tempfile.mkdtemp(prefix="failover-commits-", dir="/tmp"))
    workdir.chmod(0o755)
    env = {**os.environ, "FAILOVER_WORKDIR": str(workdir)}
    cli = [sys.executable, "-m", "infra.cli"]
    progress = lambda message: print(f"• {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        progress(f"local up on {args.prefix}.x in {workdir}")
        subprocess.run([*cli, "local", "up", "--seed-mb", "5", "--prefix", args.prefix], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        result = measure(workdir, load_spec(ROOT / "Pulumi.yaml"), args.rounds, args.seconds, progress)
    finally:
        subprocess.run([*cli, "local", "down"], cwd=ROOT, env=env, capture_output=True)
        if not _mounts_under(workdir):  # rmtree would follow a VM's bind mount of /dev
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
