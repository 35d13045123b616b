"""Both secondaries dropped: with witness stores the primary commits asynchronously; without a
majority of stores it fences itself.

One `failover local up --prefix 127.0.106 --witnesses 2` cloud for the module: 5 stores (aws,
gcp, azure and two witnesses, directories mounted in every VM), so a lease holds at 3. The tests
run in order, with a canary writing to aws's app from the host:
1. gcp and azure are dropped (VMs killed, stores gone): aws keeps its lease at 3 of 5 stores,
   and after database.async_after_seconds without a standby commits asynchronously; writes are
   acknowledged again, and `status` says asynchronous;
2. the witnesses are then unmounted in aws's VM: aws reaches only its own store, goes back to
   waiting for a standby, and fences itself within the lease time; `status` says why.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from infra.data import fallback, lease
from infra.sites.localvms import LocalVms
from tests.conftest import remove_unmounted
from tests.data.test_lease_vms import Canary, failover, host_state, postmaster_alive, wait

PREFIX = "127.0.106"
AWS = f"{PREFIX}.1"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="failover-fallback-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    canary = None
    try:
        failover(workdir, "local", "up", "--seed-mb", "5", "--prefix", PREFIX, "--witnesses", "2")
        canary = Canary(AWS).start()
        yield workdir, canary
    finally:
        if canary is not None:
            canary.stop()
        failover(workdir, "local", "down", check=False)
        remove_unmounted(workdir)


def aws_vm(workdir: Path):
    return next(vm for vm in LocalVms(workdir / "vms").vms() if vm.site == "aws")


def acked_after(canary: Canary, moment: float) -> list[dict]:
    return [a for a in canary.acks if a["sent"] >= moment and a["site"] == "aws"]


def test_with_witnesses_the_primary_commits_asynchronously_once_both_secondaries_are_gone(cloud):
    workdir, canary = cloud
    aws = aws_vm(workdir)
    wait(lambda: host_state(aws).get("state") == lease.HELD, 60, "aws to hold its lease")
    assert host_state(aws)["stores"] == 5
    wait(lambda: len(canary.acks) >= 5, 30, "writes acknowledged by aws")
    failover(workdir, "local", "drop", "--site", "gcp")
    failover(workdir, "local", "drop", "--site", "azure")
    dropped = time.monotonic()
    wait(lambda: (host_state(aws).get("commit") or {}).get("mode") == fallback.ASYNC, 60,
         "aws to commit asynchronously")
    resumed = wait(lambda: acked_after(canary, dropped) and time.monotonic(), 30, "aws to acknowledge writes again")
    state = host_state(aws)
    print(f"\nasynchronous {resumed - dropped:.1f} s after both secondaries were dropped: "
          f"{state['commit']['reason']}; lease held at {len(state['renewed'])} of {state['stores']} stores")
    assert state["state"] == lease.HELD and len(state["renewed"]) == 3
    status = json.loads(failover(workdir, "status", "--json", "--no-media").stdout)
    assert status["lease"]["commit"]["mode"] == fallback.ASYNC, status["lease"]
    assert not status["lease"]["fenced"]
    metrics = (aws.root / "var/lib/postgresql/failover/metrics.prom").read_text()
    assert 'failover_commit_asynchronous{site="aws",epoch="1"} 1' in metrics, metrics


def test_without_a_majority_of_stores_it_stops_committing_and_fences_itself(cloud):
    workdir, canary = cloud
    aws = aws_vm(workdir)
    for name in ("witness-1", "witness-2"):
        aws.unmount_store(LocalVms(workdir / "vms").store(name))
    cut = time.monotonic()
    fenced = wait(lambda: host_state(aws).get("state") == lease.FENCED and time.monotonic(), lease.LENGTH + 10,
                  "aws to fence itself")
    state = host_state(aws)
    print(f"\naws fenced {fenced - cut:.2f} s after it lost the witnesses: {state['reason'][:120]} ({state['fence']})")
    assert fenced - cut <= lease.LENGTH
    assert state["reason"].startswith("lost the lease at 4 of 5 stores"), state["reason"]
    assert not postmaster_alive(aws)
    late = [a for a in canary.acks if a["site"] == "aws" and a["acked"] > fenced]
    assert not late, f"aws acknowledged {len(late)} writes after it fenced itself"
    status = json.loads(failover(workdir, "status", "--json", "--no-media").stdout)
    assert status["lease"]["fenced"] and "lost the lease at 4 of 5 stores" in status["lease"]["why"], status["lease"]
