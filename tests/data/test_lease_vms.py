"""A partitioned primary fences itself, and a failover elsewhere loses no acknowledged write.

One `failover local up --prefix 127.0.131 --storage emulated` cloud for the module
(FAILOVER_TEST_PREFIX overrides the prefix; aws primary, gcp warm, azure pilot-light): each
site's store is its cloud's emulator on the site's own address, and each VM's service user has a
UID of its own. The test measures the protector's renewal rounds, then cuts aws off from gcp and
azure, their stores included (tests/partition.py: nftables on loopback, by the sending socket's
owner), while a canary writes through DNS from the host, as clients of a partitioned primary
still can:
- aws acknowledges no write past the lease time, and fences itself (PostgreSQL stopped; the test
  prints when, and when its protector's state said so);
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
import time
from pathlib import Path

import pytest

from infra.data import lease
from infra.drill.canary import Canary, read_back
from infra.sites.layout import SERVICE_USER
from infra.sites.localvms import LocalVms
from infra.sites.vm import USER, ensure_image
from infra.spec import load_spec
from tests.appclient import APP_PORT, dns
from tests.conftest import ROOT, failover, failover_json, loopback_prefix, remove_unmounted
from tests.partition import partition, service_uids, table_name, uid_of
from tests.vmlease import host_state, postmaster_alive, wait

PREFIX = loopback_prefix("127.0.131")
AWS, GCP, AZURE = (f"{PREFIX}.{i}" for i in (1, 2, 3))
SPEC = load_spec(ROOT / "Pulumi.yaml")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots, nftables)")]


@pytest.fixture(scope="module")
def cloud():
    # The service user must reach the sites below it: mkdtemp makes a private (0700) directory.
    workdir = Path(tempfile.mkdtemp(prefix="failover-lease-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, "--storage", "emulated", workdir=workdir)
        yield workdir
    finally:
        failover("local", "down", workdir=workdir, check=False)
        remove_unmounted(workdir)


def vms(workdir: Path) -> dict:
    return {vm.site: vm for vm in LocalVms(workdir / "vms").vms()}


def fence_times(vm, seconds: float) -> tuple[float, float]:
    """When (wall clock) the VM's PostgreSQL was gone, and when its protector's state said fenced."""
    stopped = fenced = None
    deadline = time.monotonic() + seconds
    while (stopped is None or fenced is None) and time.monotonic() < deadline:
        now = time.time()
        stopped = stopped or (None if postmaster_alive(vm) else now)
        fenced = fenced or (now if host_state(vm).get("state") == lease.FENCED else None)
        time.sleep(0.05)
    assert stopped and fenced, f"{vm.site} did not fence itself within {seconds} s: {host_state(vm)}"
    return stopped, fenced


def process_uid(pid: int) -> int | None:
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("Uid:"))
    except (OSError, StopIteration):
        return None  # gone meanwhile
    return int(line.split()[1])


def fenced_status(workdir: Path) -> dict | None:
    status = failover_json("status", "--no-media", workdir=workdir)
    if status["lease"]["fenced"]:
        return status
    print(f"status does not say fenced yet: {json.dumps(status['lease'])}")
    return None


def test_each_vm_runs_its_services_under_a_uid_of_its_own(cloud):
    image_uid = uid_of(ensure_image(), SERVICE_USER)
    machines = vms(cloud)
    uids = service_uids(machines.values())
    assert len(set(uids.values())) == 3 and image_uid not in uids.values(), uids
    for vm in machines.values():
        assert uids[vm.address] == vm.service_uid, vm.site
        # Nothing in the VM's root (the overlay, not /proc, /dev, /run) is left to the image's UID.
        left = subprocess.run(["find", str(vm.root), "-xdev", "-uid", str(image_uid)], capture_output=True, text=True)
        assert left.returncode == 0 and not left.stdout.strip(), f"{vm.site}: still owned by {image_uid}: " \
                                                                 f"{left.stdout.splitlines()[:10]}"
        running = {process_uid(pid) for pid in vm.pids()} - {None, 0, uid_of(vm.root, USER), uid_of(vm.root, "sshd")}
        assert running == {vm.service_uid}, f"{vm.site}: its processes run as {running}"
    # Under their new UIDs the databases run, and pgBackRest backed up into every store.
    status = failover_json("status", "--no-media", workdir=cloud)
    sites = {site["name"]: site for site in status["sites"]}
    assert sites["aws"]["database"] == "up" and sites["gcp"]["database"] == "up", sites
    assert all(site["repositories"][0]["last_backup"] for site in sites.values()), sites
    assert status["lease"]["holder"] == "aws" and not status["lease"]["fenced"], status["lease"]


def test_a_partitioned_primary_fences_itself_and_a_failover_loses_no_acknowledged_write(cloud):
    machines = vms(cloud)
    aws = machines["aws"]
    wait(lambda: host_state(aws).get("state") == lease.HELD and len(host_state(aws).get("round_seconds", [])) >= 10,
         60, "aws's protector to hold its lease for 10 rounds")
    rounds = host_state(aws)["round_seconds"]
    print(f"\nrenewal rounds on the VMs (3 emulated stores, write + claim listing): n={len(rounds)} "
          f"p50={statistics.median(rounds) * 1000:.1f} ms max={max(rounds) * 1000:.1f} ms")

    canary = Canary(SPEC.dns.zone, APP_PORT, dns(cloud), media_every=0).start()
    try:
        wait(lambda: sum(w.acked for w in canary.writes) >= 10, 30, "10 writes acknowledged by aws")
        with partition(table_name(), AWS, [GCP, AZURE], service_uids(machines.values())):
            cut = time.time()
            stopped, fenced = fence_times(aws, lease.LENGTH + 15)
            state = host_state(aws)
            last_ack = max(w.answered for w in canary.writes if w.acked)
            print(f"after the partition: aws's last acknowledged write {last_ack - cut:.2f} s, its PostgreSQL "
                  f"stopped {stopped - cut:.2f} s, its protector's state fenced {fenced - cut:.2f} s: "
                  f"{state['reason']} ({state['fence']})")
            assert last_ack - cut <= lease.LENGTH and last_ack <= stopped, "aws acknowledged writes beyond its lease"
            assert stopped - cut <= lease.LENGTH, f"aws's PostgreSQL still ran {stopped - cut:.2f} s after the cut"
            assert state["why"] == "lease" and state["reason"].startswith("lost the lease at 2 of 3 stores"), state
            acks_before = sum(w.acked for w in canary.writes)
            time.sleep(1.0)
            assert sum(w.acked for w in canary.writes) == acks_before, "aws acknowledged writes while fenced"

            # aws cannot be reached over SSH, so `status` reads its word from the stores: the fenced
            # record is written there after the fence, best effort (one full CI run read the round
            # before it: asked again, not at once).
            status = wait(lambda: fenced_status(cloud), 10, "status to say aws is fenced", every=1.0)
            assert status["lease"]["holder"] == "aws", json.dumps(status["lease"])
            assert "lost the lease at 2 of 3 stores" in status["lease"]["why"], json.dumps(status["lease"])

            started = time.monotonic()
            plan = failover_json("run", "--to", "gcp", workdir=cloud)["plan"]
            assert "waits for its lease to run out" in plan["notes"]["take_writes"], plan["notes"]
            result = failover_json("run", "--to", "gcp", "--yes", workdir=cloud)
            run_seconds = time.monotonic() - started
            rows = {r["step"]: r for r in result["steps"]}
            take = rows["take_writes"]["detail"]
            assert take["lease_wait_seconds"] > 0 and not rows["fence"]["detail"]["fenced_directly"], rows["fence"]
            print(f"failover to gcp: {run_seconds:.1f} s; take_writes waited {take['lease_wait_seconds']} s "
                  f"for aws's lease; steps (s): {({r['step']: r.get('seconds') for r in result['steps']})}")
            wait(lambda: canary.acked_on("gcp"), 60, "gcp to acknowledge a write through DNS")
            time.sleep(2)
    finally:
        canary.stop()

    acked = [w for w in canary.writes if w.acked]
    lost = sorted({w.seq for w in acked} - read_back(GCP, APP_PORT))
    print(f"acknowledged: {len(acked)} ({sum(w.site == 'aws' for w in acked)} by aws, "
          f"{sum(w.site == 'gcp' for w in acked)} by gcp), lost: {len(lost)}, not acknowledged: "
          f"{len(canary.writes) - len(acked)}")
    assert not lost, f"acknowledged writes missing on gcp: {lost[:20]}"
    by_epoch: dict[int, set[str]] = {}
    for write in acked:
        by_epoch.setdefault(write.epoch, set()).add(write.site)
    assert all(len(sites) == 1 for sites in by_epoch.values()), by_epoch
    assert by_epoch.get(1) == {"aws"} and by_epoch.get(2) == {"gcp"}, by_epoch
