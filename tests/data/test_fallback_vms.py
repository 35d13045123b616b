"""Both secondaries dropped: with witness stores the primary commits asynchronously, and goes
back to quorum once a secondary returns; without a majority of stores it fences itself.

One `failover local up --prefix 127.0.106 --witnesses 2` cloud for the module (FAILOVER_TEST_PREFIX
overrides the prefix): 5 stores (aws, gcp, azure and two witnesses, directories mounted in every
VM), so a lease holds at 3. The tests run in order, with a canary writing to aws's app from the host:
1. gcp and azure are dropped (VMs killed, stores gone): aws keeps its lease at 3 of 5 stores,
   and after database.async_after_seconds without a standby commits asynchronously; writes are
   acknowledged again, and `status` says asynchronous;
2. gcp is given back (`local restore-site`: its VM boots, and its rejoin agent makes it follow
   aws, with no command run): once it streams, aws goes back to its quorum setting within
   QUORUM_BACK seconds, says so, and its commits wait for gcp again;
3. gcp is dropped again (aws commits asynchronously again), then the witnesses are unmounted in
   aws's VM: aws reaches only its own store, goes back to waiting for a standby, and fences
   itself within the lease time; `status` says why.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.data import fallback, lease
from infra.sites.fleet import Fleet
from infra.sites.localvms import LocalVms
from tests.appclient import APP_PORT, post
from tests.conftest import failover, loopback_prefix, processes_rooted_under, remove_unmounted
from tests.vmlease import Canary, host_state, postmaster_alive, wait

PREFIX = loopback_prefix("127.0.106")
AWS = f"{PREFIX}.1"
RETURN_SECONDS = 180  # the bound for a site given back to stream again
QUORUM_BACK = 10.0  # seconds from gcp streaming again until aws waits for it: a few protector rounds (1 s each)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


@dataclass
class Cloud:
    workdir: Path
    canary: Canary
    fleet: Fleet
    quorum: str  # aws's synchronous_standby_names as `local up` left it


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="failover-fallback-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    canary, fleet = None, None
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, "--witnesses", "2", workdir=workdir)
        fleet = Fleet(workdir, app_port=APP_PORT)
        quorum = standby_setting(fleet)
        assert fallback.standby_names(quorum) == {"gcp", "azure"}, quorum
        canary = Canary(AWS).start()
        yield Cloud(workdir, canary, fleet, quorum)
    finally:
        if canary is not None:
            canary.stop()
        if fleet is not None:
            fleet.close()
        failover("local", "down", check=False, workdir=workdir)
        remove_unmounted(workdir)


def aws_vm(workdir: Path):
    return vm_of(workdir, "aws")


def vm_of(workdir: Path, site: str):
    return next(vm for vm in LocalVms(workdir / "vms").vms() if vm.site == site)


def acked_after(canary: Canary, moment: float) -> list[dict]:
    return [a for a in canary.acks if a["sent"] >= moment and a["site"] == "aws"]


def commit_mode(vm) -> str | None:
    return (host_state(vm).get("commit") or {}).get("mode")


def standby_setting(fleet: Fleet) -> str:
    return fleet.site("aws").psql("SHOW synchronous_standby_names").stdout.strip()


def streams(fleet: Fleet, follower: str) -> bool:
    result = fleet.site("aws").psql(f"SELECT state FROM pg_stat_replication WHERE application_name = '{follower}'",
                                    warn=True, timeout=10)
    return result.ok and result.stdout.strip() == "streaming"


def has_seq(fleet: Fleet, site: str, seq: int) -> bool:
    result = fleet.site(site).psql(f"SELECT count(*) FROM posts WHERE canary_seq = {seq}", db="social", warn=True,
                                   timeout=10)
    return result.ok and result.stdout.strip() == "1"


def walreceiver(vm) -> int:
    """The PID of the walreceiver in `vm` (its process title names it)."""
    for pid in processes_rooted_under(vm.root):
        try:
            if b"walreceiver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no walreceiver runs in {vm.site}'s VM")


def go_asynchronous(cloud: Cloud, since: float) -> float:
    """Waits until aws commits asynchronously and acknowledges writes again; returns when."""
    aws = aws_vm(cloud.workdir)
    wait(lambda: commit_mode(aws) == fallback.ASYNC, 60, "aws to commit asynchronously")
    return wait(lambda: acked_after(cloud.canary, since) and time.monotonic(), 30, "aws to acknowledge writes again")


def test_with_witnesses_the_primary_commits_asynchronously_once_both_secondaries_are_gone(cloud):
    workdir, canary = cloud.workdir, cloud.canary
    aws = aws_vm(workdir)
    wait(lambda: host_state(aws).get("state") == lease.HELD, 60, "aws to hold its lease")
    assert host_state(aws)["stores"] == 5
    wait(lambda: len(canary.acks) >= 5, 30, "writes acknowledged by aws")
    failover("local", "drop", "--site", "gcp", workdir=workdir)
    failover("local", "drop", "--site", "azure", workdir=workdir)
    dropped = time.monotonic()
    resumed = go_asynchronous(cloud, dropped)
    state = host_state(aws)
    print(f"\nasynchronous {resumed - dropped:.1f} s after both secondaries were dropped: "
          f"{state['commit']['reason']}; lease held at {len(state['renewed'])} of {state['stores']} stores")
    assert state["state"] == lease.HELD and len(state["renewed"]) == 3
    status = json.loads(failover("status", "--json", "--no-media", workdir=workdir).stdout)
    assert status["lease"]["commit"]["mode"] == fallback.ASYNC, status["lease"]
    assert not status["lease"]["fenced"]
    metrics = (aws.root / "var/lib/postgresql/failover/metrics.prom").read_text()
    assert 'failover_commit_asynchronous{site="aws",epoch="1"} 1' in metrics, metrics


def test_once_a_secondary_streams_again_the_primary_goes_back_to_quorum(cloud):
    workdir, canary, fleet = cloud.workdir, cloud.canary, cloud.fleet
    aws = aws_vm(workdir)
    assert commit_mode(aws) == fallback.ASYNC, "the test before leaves aws committing asynchronously"
    given_back = time.monotonic()
    failover("local", "restore-site", "--site", "gcp", workdir=workdir)  # the VM boots; its rejoin agent does the rest
    streaming = wait(lambda: streams(fleet, "gcp") and time.monotonic(), RETURN_SECONDS, "gcp to stream from aws",
                     every=0.2)
    back = wait(lambda: commit_mode(aws) == fallback.SYNC and time.monotonic(), QUORUM_BACK + 30,
                "aws to go back to quorum commit")
    state = host_state(aws)
    print(f"\ngcp streams {streaming - given_back:.1f} s after restore-site; aws back to quorum "
          f"{back - streaming:.2f} s after gcp streams: {state['commit']['reason']}")
    assert back - streaming <= QUORUM_BACK, f"aws went back {back - streaming:.1f} s after gcp streamed"
    assert standby_setting(fleet) == cloud.quorum
    status = json.loads(failover("status", "--json", "--no-media", workdir=workdir).stdout)
    assert status["lease"]["commit"]["mode"] == fallback.SYNC, status["lease"]
    assert status["replication"]["candidates"] == ["gcp"] and not status["replication"]["blocked"], \
        status["replication"]
    metrics = (aws.root / "var/lib/postgresql/failover/metrics.prom").read_text()
    assert 'failover_commit_asynchronous{site="aws",epoch="1"} 0' in metrics, metrics
    assert 'failover_commit_mode_changes_total{site="aws",epoch="1"} 2' in metrics, metrics
    wait(lambda: acked_after(canary, back), 30, "aws to acknowledge writes after going back to quorum")
    assert_commits_wait_for(fleet, vm_of(workdir, "gcp"), 900001)


def assert_commits_wait_for(fleet: Fleet, gcp_vm, seq: int) -> None:
    """A write is acknowledged only once gcp has it: with gcp's walreceiver stopped (SIGSTOP, its
    connection stays up, so aws still counts it as streaming) the write hangs; once it runs again
    the write is acknowledged and is in gcp's database."""
    pid = walreceiver(gcp_vm)
    answer: list = []
    writer = threading.Thread(target=lambda: answer.append(post(AWS, seq)[0]), daemon=True)
    os.kill(pid, signal.SIGSTOP)
    try:
        writer.start()
        writer.join(3)
        assert not answer, f"aws acknowledged write {seq} while gcp's walreceiver was stopped: {answer}"
    finally:
        os.kill(pid, signal.SIGCONT)
    writer.join(10)
    assert answer == [201], f"write {seq} after gcp's walreceiver ran again: {answer}"
    wait(lambda: has_seq(fleet, "gcp", seq), 10, f"write {seq} replayed on gcp", every=0.2)


def test_without_a_majority_of_stores_it_stops_committing_and_fences_itself(cloud):
    workdir, canary = cloud.workdir, cloud.canary
    aws = aws_vm(workdir)
    # Back to the state of the first test: both secondaries gone, committing on the witnesses' lease.
    failover("local", "drop", "--site", "gcp", workdir=workdir)
    go_asynchronous(cloud, time.monotonic())
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
    status = json.loads(failover("status", "--json", "--no-media", workdir=workdir).stdout)
    assert status["lease"]["fenced"] and "lost the lease at 4 of 5 stores" in status["lease"]["why"], status["lease"]
