"""Drill RTO and RPO: `failover drill --json` per scenario and size on the VM cloud, parsed into rows.

The bench drives the CLI as an operator would: `failover local up` (Debian VMs on loopback),
the database grown to size through psql on the primary's host over SSH, `failover snapshot`,
then `failover drill`, which reuses that pristine cloud and takes it down at the end.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from infra.bench import cluster
from infra.sites.fleet import Fleet

PREFIX = "127.0.51"


def failover_command() -> list[str]:
    return [str(Path(sys.executable).with_name("failover"))]


def row(scenario: str, size_gb: float, seed_mb: int, parsed: dict | None, error: str) -> dict:
    """One drill's figures from its JSON (or why there are none)."""
    base = {"scenario": scenario, "size_gb": size_gb, "seed_mb": seed_mb, "dns_ttl": 0, "steps": [], "error": error}
    found = [s for s in (parsed or {}).get("scenarios", []) if s.get("name") == scenario]
    if not found:
        return {**base, "result": "error", "error": error or "no scenario in the drill's JSON"}
    s = found[0]
    return {**base, "result": "pass" if s.get("passed") else "FAIL", "dns_ttl": s.get("dns_ttl", 0),
            "rto_seconds": s.get("rto_seconds"), "rto_from_command_seconds": s.get("rto_from_command_seconds"),
            "rpo_seconds": s.get("rpo_seconds"), "writes_lost": s.get("writes_lost"),
            "exposure_seconds": s.get("exposure_seconds"), "exposure_written_seconds": s.get("exposure_written_seconds"),
            "writes_acked": s.get("writes_acked"), "missed": s.get("missed", []),
            "cut_off": s.get("cut_off"), "command_started": s.get("command_started"),
            "steps": [{key: st.get(key) for key in ("step", "status", "seconds", "started", "ended")}
                      for st in s.get("steps", [])],
            "error": "; ".join(s.get("missed", [])) if not s.get("passed") else ""}


def parse(stdout: str) -> dict | None:
    """The JSON document in the command's stdout (progress goes to stderr)."""
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        return json.loads(stdout[start:])
    except json.JSONDecodeError:
        return None


def _failover(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([*failover_command(), *args], capture_output=True, text=True, timeout=timeout, check=False)


def prepare(work: Path, size_gb: float, spec, project: Path, progress, timeout: float, prefix: str = PREFIX) -> None:
    """A local cloud the drill will reuse (it keeps a pristine one): seeded, grown to size, backed up anew.

    `failover drill --seed-mb` alone cannot reach these sizes (seed.seed overflows above ~60 MB),
    so the bench brings the cloud up with the base seed, grows the primary's posts through psql on
    its host over SSH, as the engine reaches a site (the synchronous replica follows), and takes a
    fresh full backup into every repository with `failover snapshot`.
    """
    common = ["--workdir", str(work), "--project", str(project)]
    done = _failover(["local", "up", "--seed-mb", str(cluster.BASE_SEED_MB), "--prefix", prefix, *common], timeout)
    if done.returncode:
        raise RuntimeError(f"failover local up failed: {_tail(done)}")
    fleet = Fleet(work, app_port=spec.app.port)
    try:
        primary = fleet.site(fleet.inventory().active)
        progress(f"growing {primary.name}'s database to about {size_gb:g} GB through psql on {primary.db_host}")
        cluster.grow(primary, spec.database.name, cluster.database_target_bytes(size_gb), progress)
    finally:
        fleet.close()
    done = _failover(["snapshot", "--type", "full", *common], timeout)
    if done.returncode:
        raise RuntimeError(f"failover snapshot failed: {_tail(done)}")


def _tail(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}: " + " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])


def run_drill(scenario: str, size_gb: float, workdir: Path, spec, project: Path, progress,
              timeout: float | None = None, prefix: str = PREFIX) -> dict:
    timeout = timeout or 600 + 600 * size_gb
    work = workdir / f"drill-{scenario}-{size_gb:g}"
    seed_mb = cluster.seed_mb_for(size_gb)
    progress(f"drill {scenario} at {size_gb:g} GB: preparing its local cloud on {prefix}.x")
    error, parsed = "", None
    try:
        prepare(work, size_gb, spec, project, progress, timeout, prefix)
        progress(f"drill {scenario} at {size_gb:g} GB: running `failover drill`")
        argv = ["drill", "--json", "--scenario", scenario, "--seed-mb", str(cluster.BASE_SEED_MB), "--prefix", prefix,
                "--workdir", str(work), "--report-dir", str(workdir / f"report-{scenario}-{size_gb:g}"),
                "--project", str(project)]
        done = _failover(argv, timeout)
        parsed = parse(done.stdout)
        if parsed is None:
            error = _tail(done)
    except subprocess.TimeoutExpired as expired:
        error = f"timed out after {expired.timeout:.0f}s"
    except Exception as failed:  # noqa: BLE001 - the row says why there are no figures; the bench goes on
        error = f"{type(failed).__name__}: {failed}"
    finally:
        teardown(work)
    return row(scenario, size_gb, seed_mb, parsed, error)


def teardown(work: Path) -> None:
    """The drill takes its cloud down unless it crashed; make sure with `failover local down`, then
    remove the work directory unless something is still mounted below it (never rmtree through
    a VM's bind mount of /dev)."""
    if (work / "vms" / "cloud.json").exists():
        subprocess.run([*failover_command(), "local", "down", "--workdir", str(work)], capture_output=True, text=True,
                       timeout=300, check=False)
    cluster.remove_workdir(work)
