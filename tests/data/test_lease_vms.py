"""A partitioned primary fences itself, and a failover elsewhere loses no acknowledged write.

One `failover local up --prefix 127.0.105` cloud for the module (aws primary, gcp warm, azure
pilot-light). The test measures the protector's renewal rounds on the VMs, then cuts aws off
(tests/partition.py: nftables on loopback, the other sites' stores unmounted in aws's VM) while a
canary writes to aws's app from the host, as clients of a partitioned primary still can:
- aws stops acknowledging writes, and fences itself (PostgreSQL stopped) within the lease time;
- `status` says it is fenced and why (lost the lease at 2 of 3 stores);
- `failover run --to gcp` cannot reach aws over SSH, so it waits out the lease after its claim,
  then takes writes; every write acknowledged anywhere is in gcp's database afterwards;
- no two sites acknowledged writes at the same epoch.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra.data import lease
from infra.sites.localvms import LocalVms
from tests.appclient import APP_PORT
from tests.conftest import FAILOVER, remove_unmounted
from tests.partition import partition, table_name, uid_of

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "127.0.105"
AWS, GCP, AZURE = (f"{PREFIX}.{i}" for i in (1, 2, 3))
STATE = "var/lib/postgresql/failover/lease-state.json"
PGDATA = "var/lib/postgresql/15/main"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots, nftables)")]


def failover(workdir: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([*FAILOVER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "FAILOVER_WORKDIR": str(workdir), "PYTHONPATH": str(ROOT)})
    if check and result.returncode != 0:
        raise AssertionError(f"failover {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}\n"
                             f"{result.stdout[-2000:]}")
    return result


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="failover-lease-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        failover(workdir, "local", "up", "--seed-mb", "5", "--prefix", PREFIX)
        yield workdir
    finally:
        failover(workdir, "local", "down", check=False)
        remove_unmounted(workdir)


def vms(workdir: Path) -> dict:
    return {vm.site: vm for vm in LocalVms(workdir / "vms").vms()}


def host_state(vm) -> dict:
    try:
        return json.loads((vm.root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def postmaster_alive(vm) -> bool:
    try:
        pid = int((vm.root / PGDATA / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists() and os.readlink(f"/proc/{pid}/root") == str(vm.root)


def wait(condition, seconds: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds} s")


class Canary:
    """Numbered posts to one address at a time, from the host; every 201 is an acknowledged write."""

    def __init__(self, address: str):
        self.address, self.seq = address, 0
        self.acks: list[dict] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Canary":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            sent = time.monotonic()
            body = json.dumps({"canary_seq": self.seq, "body": "lease"}).encode()
            request = urllib.request.Request(f"http://{self.address}:{APP_PORT}/posts", body,
                                             {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    doc = json.loads(reply.read())
                self.acks.append({"seq": self.seq, "site": doc["site"], "epoch": doc["epoch"], "sent": sent,
                                  "acked": time.monotonic()})
            except (urllib.error.URLError, OSError, ValueError):
                self.failures += 1
            time.sleep(0.05)


def canary_seqs(address: str) -> set[int]:
    with urllib.request.urlopen(f"http://{address}:{APP_PORT}/canary", timeout=10) as reply:
        return set(json.loads(reply.read())["seqs"])


def test_a_partitioned_primary_fences_itself_and_a_failover_loses_no_acknowledged_write(cloud):
    machines = vms(cloud)
    aws = machines["aws"]
    wait(lambda: host_state(aws).get("state") == lease.HELD and len(host_state(aws).get("round_seconds", [])) >= 10,
         60, "aws's protector to hold its lease for 10 rounds")
    rounds = host_state(aws)["round_seconds"]
    print(f"\nrenewal rounds on the VMs (3 posix stores, write + claim listing): n={len(rounds)} "
          f"p50={statistics.median(rounds) * 1000:.1f} ms max={max(rounds) * 1000:.1f} ms")

    canary = Canary(AWS).start()
    try:
        wait(lambda: len(canary.acks) >= 10, 30, "10 writes acknowledged by aws")
        stores = [LocalVms(cloud / "vms").store(n) for n in ("gcp", "azure")]
        with partition(table_name(), AWS, [GCP, AZURE], uid_of(aws.root, "postgres"), APP_PORT, aws, stores):
            cut = time.monotonic()
            fenced = wait(lambda: host_state(aws).get("state") == lease.FENCED and time.monotonic(), lease.LENGTH + 10,
                          "aws to fence itself")
            fence_seconds = fenced - cut
            state = host_state(aws)
            print(f"aws fenced {fence_seconds:.2f} s after the partition: {state['reason']} ({state['fence']})")
            assert fence_seconds <= lease.LENGTH, state
            assert state["why"] == "lease" and state["reason"].startswith("lost the lease at 2 of 3 stores"), state
            assert not postmaster_alive(aws), "aws's PostgreSQL still runs after its fence"
            last_aws_ack = max(a["acked"] for a in canary.acks if a["site"] == "aws")
            assert last_aws_ack <= fenced, "aws acknowledged a write after it fenced itself"
            acks_before = len(canary.acks)
            time.sleep(1.0)
            assert len(canary.acks) == acks_before, "aws acknowledged writes while fenced"

            status = json.loads(failover(cloud, "status", "--json", "--no-media").stdout)
            assert status["lease"]["fenced"] and status["lease"]["holder"] == "aws", status["lease"]
            assert "lost the lease at 2 of 3 stores" in status["lease"]["why"], status["lease"]

            canary.address = GCP  # clients that moved on (DNS) write to gcp: refused until it takes writes
            started = time.monotonic()
            plan = json.loads(failover(cloud, "run", "--to", "gcp", "--json").stdout)["plan"]
            assert "waits for its lease to run out" in plan["notes"]["take_writes"], plan["notes"]
            result = json.loads(failover(cloud, "run", "--to", "gcp", "--yes", "--json", timeout=900).stdout)
            run_seconds = time.monotonic() - started
            rows = {r["step"]: r for r in result["steps"]}
            take = rows["take_writes"]["detail"]
            assert take["lease_wait_seconds"] > 0 and not rows["fence"]["detail"]["fenced_directly"], rows["fence"]
            print(f"failover to gcp: {run_seconds:.1f} s; take_writes waited {take.get('lease_wait_seconds')} s "
                  f"for aws's lease; fence: {rows.get('fence', {}).get('detail', {}).get('fenced')}")
            wait(lambda: any(a["site"] == "gcp" for a in canary.acks), 60, "gcp to acknowledge a write")
            time.sleep(2)
    finally:
        canary.stop()

    acked = {a["seq"] for a in canary.acks}
    lost = acked - canary_seqs(GCP)
    print(f"acknowledged: {len(acked)} ({sum(a['site'] == 'aws' for a in canary.acks)} by aws, "
          f"{sum(a['site'] == 'gcp' for a in canary.acks)} by gcp), lost: {len(lost)}, failed attempts: "
          f"{canary.failures}")
    assert not lost, f"acknowledged writes missing on gcp: {sorted(lost)[:20]}"
    by_epoch: dict[int, set[str]] = {}
    for ack in canary.acks:
        by_epoch.setdefault(ack["epoch"], set()).add(ack["site"])
    assert all(len(sites) == 1 for sites in by_epoch.values()), by_epoch
    assert by_epoch.get(1) == {"aws"} and by_epoch.get(2) == {"gcp"}, by_epoch
