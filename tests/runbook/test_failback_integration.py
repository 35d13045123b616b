"""Failback on the local cloud's Debian VMs (127.0.75.x, over SSH): aws → gcp (warm failover), then back to aws.

One cloud for the module. While `failover back --to aws --yes` runs, the canary writes through
DNS (respecting the TTL, as clients do); afterwards every write any site acknowledged must be
on aws, aws is the active primary at a raised epoch, and DNS answers aws.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.appclient import APP_PORT, dns, health, post, resolve
from tests.conftest import FAILOVER, ROOT, failover, failover_json, loopback_prefix, remove_unmounted, service_dir

PREFIX = loopback_prefix("127.0.75")
AWS, GCP, AZURE = f"{PREFIX}.1", f"{PREFIX}.2", f"{PREFIX}.3"
PORT = APP_PORT

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


@pytest.fixture(scope="module")
def cloud():
    workdir = service_dir("back")
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, workdir=workdir)
        yield workdir
    finally:
        failover("local", "down", workdir=workdir, check=False)
        remove_unmounted(workdir)


def wait(check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_failback_is_refused_while_the_site_is_still_dropped(cloud):
    failover("local", "drop", "--site", "aws", workdir=cloud)
    failover("run", "--to", "gcp", "--yes", workdir=cloud)
    result = failover("back", "--to", "aws", "--yes", workdir=cloud, check=False)
    assert result.returncode == 2 and "still unreachable" in result.stderr and "restore-site" in result.stderr
    result = failover("back", "--to", "gcp", workdir=cloud, check=False)
    assert result.returncode == 2 and "already the active primary" in result.stderr
    assert not (cloud / "journal" / "current.json").exists()


def test_failback_to_the_repaired_site_loses_no_acknowledged_write(cloud):
    from infra.drill.canary import Canary, read_back

    failover("local", "restore-site", "--site", "aws", "--sshd-only", workdir=cloud)  # failback re-seeds it
    planned = failover_json("back", "--to", "aws", workdir=cloud)
    assert not planned["executed"] and planned["plan"]["kind"] == "failback"
    assert planned["plan"]["steps"][:6] == ["claim", "preflight", "reseed", "sync", "stop_writes", "switch"]

    canary = Canary("social.example.", PORT, dns(cloud)).start()
    try:
        assert wait(lambda: sum(w.acked and w.site == "gcp" for w in canary.writes) >= 10, 30)
        started = time.time()
        back = failover_json("back", "--to", "aws", "--yes", workdir=cloud)
        command_seconds = time.time() - started
        # Clients keep the old answer for the TTL (30 s): the first ack on aws comes after that.
        assert wait(lambda: canary.acked_on("aws"), 45), "aws never acknowledged a write through DNS"
        time.sleep(1)
    finally:
        writes = canary.stop()

    acked = {w.seq: w.site for w in writes if w.acked}
    present = read_back(AWS, PORT)
    lost = sorted(seq for seq in acked if seq not in present)
    print(f"failback: command {command_seconds:.1f}s, {len(acked)} acked "
          f"({sum(s == 'gcp' for s in acked.values())} on gcp, {sum(s == 'aws' for s in acked.values())} on aws), "
          f"{len(lost)} lost; steps: " + ", ".join(f"{s['step']} {s['seconds']}s" for s in back["steps"]))
    assert lost == [], f"{len(lost)} acknowledged writes missing on aws: {lost[:10]}"
    assert {"gcp", "aws"} <= set(acked.values())

    inventory = json.loads((cloud / "inventory.json").read_text())
    assert inventory["active"] == "aws" and inventory["epoch"] == 3
    state = health(AWS)
    assert state["writable"] and state["epoch"] == state["db_epoch"] == 3
    assert resolve(cloud) == AWS
    assert all(s["status"] == "done" for s in back["steps"])
    protect = next(s for s in back["steps"] if s["step"] == "protect")
    assert "gcp" in protect["detail"]["followers"]
    # Quorum commit (the shipped mode): aws's commits wait for gcp's replica or azure's receiver.
    assert protect["detail"].get("synchronous_standbys") == 'ANY 1 ("gcp", "azure")', protect["detail"]


def test_old_primary_follows_and_refuses_writes(cloud):
    state = health(GCP)
    assert state["in_recovery"] and not state["writable"]
    assert post(GCP, None)[0] in (409, 503)
    journal = failover_json("journal", workdir=cloud)
    assert journal["kind"] == "failback" and journal["complete"]


def test_a_switchover_killed_after_each_step_resumes_and_loses_nothing(cloud):
    """`back --to gcp` (now a planned switchover aws → gcp) SIGKILLed after every step in turn:
    each rerun resumes at the next step; the canary writes through DNS throughout."""
    from infra.drill.canary import Canary, read_back
    from infra.runbook.failback import STEP_NAMES

    canary = Canary("social.example.", PORT, dns(cloud)).start()
    run_id = None
    try:
        assert wait(lambda: sum(w.acked and w.site == "aws" for w in canary.writes) >= 10, 30)
        for index, step in enumerate(STEP_NAMES):
            crashed = crash_after(step, "back", "--to", "gcp", "--yes", workdir=cloud)
            assert crashed.returncode == -9, (step, crashed.returncode, crashed.stderr[-2000:])
            journal = json.loads((cloud / "journal" / "current.json").read_text())
            assert run_id in (None, journal["run_id"])
            run_id = journal["run_id"]
            assert [e["step"] for e in journal["events"] if e["status"] == "done"] == STEP_NAMES[:index + 1]
        failover("back", "--to", "gcp", "--yes", workdir=cloud)
        assert wait(lambda: canary.acked_on("gcp"), 45), "gcp never acknowledged a write through DNS"
        time.sleep(1)
    finally:
        writes = canary.stop()

    acked = [w for w in writes if w.acked]
    present = read_back(GCP, PORT)
    lost = [w.seq for w in acked if w.seq not in present]
    assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    journal = failover_json("journal", workdir=cloud)
    assert journal["complete"] and journal["run_id"] == run_id
    assert all(s["attempts"] == 1 for s in journal["steps"]), journal["steps"]
    inventory = json.loads((cloud / "inventory.json").read_text())
    assert inventory["active"] == "gcp" and inventory["epoch"] == 4
    assert [a for a in (AWS, GCP, AZURE) if writable(a)] == [GCP]
    assert health(AWS)["in_recovery"]  # the old primary follows gcp
    assert resolve(cloud) == GCP


def crash_after(step: str, *args: str, workdir: Path) -> subprocess.CompletedProcess:
    """The CLI with FAILOVER_CRASH_AFTER=step: it SIGKILLs itself once that step is journaled done."""
    env = {**os.environ, "FAILOVER_WORKDIR": str(workdir), "FAILOVER_CRASH_AFTER": step}
    return subprocess.run([*FAILOVER, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def writable(address: str) -> bool:
    try:
        return bool(health(address)["writable"])
    except OSError:
        return False
