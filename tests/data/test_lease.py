"""The lease's decisions with data, and its holder against posix stores, a broken one and one that hangs."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from infra.data import claims, lease
from infra.data.lease import Answer, Round
from infra.data.storage import Store, StoreError
from infra.sites.contract import MediaRemote, Repository, SiteOutputs


def answers(*states: str, claimed: dict[str, int] | None = None) -> tuple[Answer, ...]:
    """'r' renewed, '-' failed; sites s1, s2, ..."""
    claimed = claimed or {}
    return tuple(Answer(f"s{i}", state == "r", claimed.get(f"s{i}", 0), "" if state == "r" else "unreachable")
                 for i, state in enumerate(states, 1))


# ---------------------------------------------------------------- decisions

@pytest.mark.parametrize("states, holds", [("rrr", True), ("rr-", True), ("r--", False), ("---", False),
                                           ("rrrrr"[:4] + "-", True), ("rr---", False), ("rrr--", True), ("r", True)])
def test_a_round_holds_at_a_majority_of_the_stores(states, holds):
    assert Round(1, 0.0, answers(*states)).holds(epoch=3) is holds


def test_a_higher_claim_in_any_one_store_breaks_the_round_and_fences_at_once():
    latest = Round(7, 10.0, answers("r", "r", "r", claimed={"s2": 4, "s3": 3}))
    assert not latest.holds(3) and latest.higher_claim(3).site == "s2"
    result = lease.verdict(3, latest, last_held=10.0, started=0.0, now=10.1)
    assert result.fence and result.why == "claim" and "epoch 4 in s2's store" in result.reason
    assert not lease.verdict(4, latest, last_held=10.0, started=0.0, now=10.1).fence  # its own epoch's claim


def test_the_lease_runs_out_guard_seconds_before_its_end_counted_from_the_last_held_rounds_start():
    latest = Round(9, 20.0, answers("r", "-", "-"))
    held_at = 14.0
    end = held_at + lease.LENGTH - lease.GUARD
    assert not lease.verdict(1, latest, held_at, started=0.0, now=end - 0.01).fence
    result = lease.verdict(1, latest, held_at, started=0.0, now=end)
    assert result.fence and result.why == "lease"
    assert result.reason.startswith("lost the lease at 2 of 3 stores (renewed at 1, a majority is 2")


def test_a_holder_that_never_held_counts_from_its_own_start():
    assert not lease.verdict(1, None, None, started=5.0, now=5.0 + lease.LENGTH - lease.GUARD - 0.1).fence
    assert lease.verdict(1, None, None, started=5.0, now=5.0 + lease.LENGTH - lease.GUARD).fence


def test_a_failover_waits_the_lease_and_its_margin_after_its_claim():
    assert lease.wait_seconds(100.0, 100.0) == lease.LENGTH + lease.WAIT_MARGIN
    assert lease.wait_seconds(100.0, 104.0) == pytest.approx(lease.LENGTH + lease.WAIT_MARGIN - 4)
    assert lease.wait_seconds(100.0, 200.0) == 0.0


def test_the_wait_outlasts_every_holder_that_did_not_see_the_claim():
    """The proof's arithmetic: a round that did not see the claim started before the claim ended,
    so the holder fences by then + LENGTH - GUARD, before the failover's wait ends."""
    claimed_at = 50.0
    latest_round_start = claimed_at - 1e-6
    fenced_by = lease.expires(latest_round_start, 0.0)
    assert fenced_by + lease.GUARD > claimed_at and fenced_by < claimed_at + lease.wait_seconds(claimed_at, claimed_at)


def test_claim_keys_give_the_highest_epoch():
    keys = [claims.key(3), claims.key(12), ".failover/claims/.epoch-000099.json.x.tmp", ".failover/claims/other"]
    assert claims.highest_in(keys) == 12 and claims.highest_in([]) == 0


def test_a_lease_object_round_trips_and_the_summary_names_a_fenced_holder():
    held = lease.Lease("aws", 2, 41, renewed_at=1000.0)
    assert lease.Lease.from_bytes(held.to_bytes()) == held
    fenced = lease.Lease("aws", 2, 42, state=lease.FENCED, reason="lost the lease at 2 of 3 stores")
    seen = [lease.Seen("aws", fenced), lease.Seen("gcp", held), lease.Seen("azure", error="unreachable")]
    summary = lease.summary(seen)
    assert summary["state"] == lease.FENCED and summary["reason"].startswith("lost the lease at 2 of 3")
    assert summary["stores"]["azure"] == "unreachable" and "round 41 held" in summary["stores"]["gcp"]
    newer = lease.Lease("gcp", 3, 1)
    assert lease.summary(seen + [lease.Seen("x", newer)])["holder"] == "gcp"  # a later epoch's holder


# ---------------------------------------------------------------- the holder

def posix_store(root: Path, name: str) -> Store:
    (root / name).mkdir(parents=True, exist_ok=True)
    return Store(SiteOutputs(site=name, cloud="local", region="loopback", role="warm", public_addresses=("127.0.0.1",),
                             ssh_hosts=("127.0.0.1",), ssh_user="failover", db_host="127.0.0.1", db_port=5432,
                             repository=Repository("posix", {"path": str(root / name / "pgbackrest")}),
                             media_remote=MediaRemote("local", {}, str(root / name))))


class Hanging:
    """A store whose writes block until released (a mount or bucket that stopped answering)."""

    def __init__(self, name: str):
        self.name, self.release = name, threading.Event()
        self.calls = 0

    def put(self, key, data):
        self.calls += 1
        self.release.wait(60)
        raise StoreError(f"site {self.name}: gave up")

    def list(self, prefix=""):
        return []


class Broken:
    def __init__(self, name: str):
        self.name = name
        self.broken = False

    def put(self, key, data):
        if self.broken:
            raise StoreError(f"site {self.name}: posix storage: put: No such file or directory")

    def list(self, prefix=""):
        return []


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def holder(stores, fences, **kw) -> lease.Holder:
    kw = {"length": 2.0, "guard": 0.5, "every": 0.1, "round_timeout": 0.3, "log": lambda m: None, **kw}
    return lease.Holder("aws", 1, stores, lambda v: fences.append(v) or "stopped (fast)", **kw)


def test_the_holder_writes_its_lease_and_holds_at_a_majority(tmp_path):
    stores = [posix_store(tmp_path, n) for n in ("aws", "gcp", "azure")]
    h = holder(stores, [])
    result = h.renew_once()
    assert result.holds(1) and h.holding() and h.state.state == lease.HELD
    seen = lease.read(stores)
    assert [s.lease.seq for s in seen] == [1, 1, 1] and seen[0].lease.holder == "aws"


def test_a_hung_store_costs_only_its_own_rounds_and_two_hung_stores_fence_within_the_lease(tmp_path):
    fences = []
    good, hung1, hung2 = posix_store(tmp_path, "aws"), Hanging("gcp"), Hanging("azure")
    h = holder([good, hung1, hung2], fences)
    h.state.last_held = h.clock()  # it held until now
    began = time.monotonic()
    h.start()
    try:
        while not fences and time.monotonic() - began < 10:
            time.sleep(0.02)
        took = time.monotonic() - began
    finally:
        h.stop()
        hung1.release.set()
        hung2.release.set()
    assert fences and fences[0].why == "lease" and "lost the lease at 2 of 3 stores" in fences[0].reason
    assert took < 2.0 - 0.5 + 1.0  # length - guard, plus the watchdog's and a loaded machine's slack
    assert hung1.calls == 1  # one write in flight per store: the hung one was never written again
    assert h.state.state == lease.FENCED and not h.holding()
    # its last word, where it could still write
    assert wait_for(lambda: lease.read([good])[0].lease.state == lease.FENCED, 5)


def test_one_store_gone_of_three_keeps_the_lease(tmp_path):
    fences = []
    gone = Broken("azure")
    h = holder([posix_store(tmp_path, "aws"), posix_store(tmp_path, "gcp"), gone], fences)
    gone.broken = True
    h.start()
    try:
        time.sleep(2.5)  # longer than the lease
    finally:
        h.stop()
    assert not fences and h.state.state == lease.HELD and h.state.latest.renewed == ["aws", "gcp"]


def test_a_claim_for_a_higher_epoch_fences_at_the_next_round(tmp_path):
    fences = []
    stores = [posix_store(tmp_path, n) for n in ("aws", "gcp", "azure")]
    h = holder(stores, fences)
    h.renew_once()
    assert not h.decide().fence
    stores[2].create(claims.key(2), b'{"claimed": "elsewhere"}')  # a failover claims epoch 2 (one store suffices)
    h.renew_once()
    verdict = h.decide()
    assert verdict.fence and verdict.why == "claim" and fences == [verdict]
    assert h.decide().fence and len(fences) == 1  # fenced once, stays fenced
    assert h.renew_once() and h.state.state == lease.FENCED  # a later round changes nothing


def test_a_failbacks_claim_away_from_the_holder_does_not_fence_it_but_any_other_claim_does(tmp_path):
    """A failback (planned switchover) stops its source's writes itself, after reseeding from
    it: the source's lease must not fence it at the claim. A claim that names another source,
    or none (a failover), still fences at once."""
    fences = []
    stores = [posix_store(tmp_path, n) for n in ("aws", "gcp", "azure")]
    h = holder(stores, fences)  # aws holds epoch 1
    planned = claims.Claimant("gcp", "run-b", "ops", switchover_from="aws")
    claims.claim_epoch(stores, 2, planned)
    h.renew_once()
    assert not h.decide().fence and h.state.latest.renewed == ["aws", "gcp", "azure"]
    claims.claim_epoch(stores, 3, claims.Claimant("azure", "run-c", "ops", switchover_from="gcp"))
    h.renew_once()
    verdict = h.decide()
    assert verdict.fence and verdict.why == "claim" and "epoch 3" in verdict.reason


def test_a_fence_that_fails_is_recorded_and_tried_again_until_it_is_confirmed(tmp_path, monkeypatch):
    tries = []

    def fence(verdict):
        tries.append(verdict)
        if len(tries) == 1:
            raise RuntimeError("pg_ctl missing")
        return "could not confirm: still running (pid 7)" if len(tries) == 2 else "killed (SIGKILL to pid 7)"

    monkeypatch.setattr(lease, "REFENCE_EVERY", 0.0)
    h = lease.Holder("aws", 1, [posix_store(tmp_path, "aws")], fence, log=lambda m: None, length=0.2, guard=0.1)
    time.sleep(0.15)  # never held: it runs out length - guard after its start
    assert h.decide().fence and h.state.fence_detail == "fence failed: pg_ctl missing" and not h.confirmed
    assert h.decide().fence and h.state.fence_detail.startswith("could not confirm") and not h.confirmed
    assert h.decide().fence and h.confirmed and h.state.fence_detail.startswith("killed")
    h.decide()
    assert len(tries) == 3 and h.state.state == lease.FENCED  # confirmed: not fenced again
