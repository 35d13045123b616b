"""The runbook's claim step, its clock check and its fence receipt, without VMs: the decisions
with data, and the runner's claim-first order against posix stores (directories) with the
sites' steps replaced (nothing here reaches a host). tests/runbook/test_claims_integration.py
runs the same on the VMs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.data import claims
from infra.data.claims import Claimant
from infra.errors import FailoverError
from infra.runbook import claim, clocks, receipt, runner, steps
from infra.runbook.claim import ClaimFailed
from infra.runbook.journal import DONE, FAILED, JournalStore
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.fleet import Fleet
from infra.sites.site import SshSettings

SITES = ("aws", "gcp", "azure")
WINNER = Claimant("gcp", "w1nner000000", "ops-a")


# ---------------------------------------------------------------- the epoch to claim

def test_an_explicit_epoch_must_outrank_the_inventory_and_every_claim():
    command = "failover run --to azure"
    assert claim.epoch_problems(None, 1, 5, None, command) == []
    assert claim.epoch_problems(6, 1, 5, None, command) == []
    assert claim.epoch_problems(1, 1, 0, None, command) == [
        "--epoch 1 is not above the Inventory's epoch 1: use `failover run --to azure --epoch 2`"]
    assert claim.epoch_problems(2, 1, 2, WINNER, command) == [
        "--epoch 2 is not above the highest claimed epoch, 2 (claimed by run w1nner000000 (target gcp, host ops-a)): "
        "use `failover run --to azure --epoch 3`"]
    assert claim.resume_problems(None, 2, "r") == [] and claim.resume_problems(2, 2, "r") == []
    assert "resume it without --epoch" in claim.resume_problems(3, 2, "r")[0]


def test_the_plan_note_says_which_epoch_where_and_who_holds_it():
    holdings = [claims.Holding("aws", error="site aws: posix storage directory gone"), claims.Holding("azure"),
                claims.Holding("gcp", WINNER)]
    note = claim.plan_note(2, ["aws", "gcp", "azure"], holdings, None, False)
    assert note == ("epoch 2 (the Inventory's epoch + 1) in a majority (2 of 3) of the stores of aws, azure, gcp; "
                    "already claimed there: gcp: run w1nner000000 (target gcp, host ops-a) (this run loses to a run "
                    "holding a majority); not answering now: aws (counts for nobody)")
    assert claim.plan_note(4, list(SITES), [], None, True).startswith("epoch 4 (given by --epoch) in a majority")
    assert claim.plan_note(2, list(SITES), [], "r1", False).endswith("run r1's own claim, recognised by its run id")


# ---------------------------------------------------------------- the runner claims first

def _outputs(root: Path, name: str) -> SiteOutputs:
    store = root / "stores" / name
    store.mkdir(parents=True, exist_ok=True)
    return SiteOutputs(name, "local", "r1", "primary" if name == "aws" else "warm", ("192.0.2.1",), ("192.0.2.1",),
                       "failover", "192.0.2.1", 5432, Repository("posix", {"path": str(store / "backups")}),
                       MediaRemote("local", {}, str(store)))


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """A Fleet over three posix stores; nothing reaches a host (fence_returning and the journal
    copies are replaced: the copies go to every store)."""
    work = tmp_path / "work"
    work.mkdir()
    Inventory([_outputs(tmp_path, n) for n in SITES], "aws", 1).save(work / "inventory.json")
    the_fleet = Fleet(work, ssh=SshSettings(tmp_path / "known_hosts"))
    monkeypatch.setattr(runner, "fence_returning", lambda *args, **kwargs: {})
    monkeypatch.setattr(runner, "journal_copies", lambda f: lambda: claim.stores(f.inventory()))
    return the_fleet


def _plan(epoch: int = 2, target: str = "azure") -> runner.Plan:
    return runner.Plan("failover", "aws", target, epoch, steps.DataSource(steps.RESTORE, "restore", "some"),
                       ["claim", "work"], [], None, [])


def _seed(fleet: Fleet, epoch: int, holder: Claimant, where=("azure", "gcp")) -> None:
    stores = {s.name: s for s in claim.stores(fleet.inventory())}
    body = {"version": 1, "epoch": epoch, "target": holder.target, "run_id": holder.run_id, "host": holder.host,
            "stores": sorted(SITES), "at": "2026-12-04T03:00:00.000+00:00"}
    for name in where:
        assert stores[name].create(claims.key(epoch), json.dumps(body).encode()) is None


def _holders(fleet: Fleet, epoch: int) -> dict[str, str]:
    return {h.site: h.holder.run_id for h in claims.holdings(claim.stores(fleet.inventory()), epoch) if h.holder}


def _execute(fleet, the_plan, journal=None, work=lambda run: {"did": "work"}, said=None):
    stages = [[("claim", claim.claim)], [("work", work)]]
    said = [] if said is None else said
    return runner.execute(fleet, None, Path("Pulumi.yaml"), the_plan, journal, said.append, stages=stages)


def test_a_run_that_loses_the_claim_changes_nothing_and_names_the_winner(fleet):
    _seed(fleet, 2, WINNER, ("aws", "azure"))  # the first store in the shared order is taken: the loser defers
    touched = []
    with pytest.raises(ClaimFailed) as lost:
        _execute(fleet, _plan(), work=lambda run: touched.append(run) or {})
    message = str(lost.value)
    assert message.startswith("epoch 2 belongs to run w1nner000000 (target gcp, host ops-a), which holds its claim "
                              "in aws, azure (a majority of 3 stores): this run ")
    assert "(target azure, host " in message and "stops before changing anything" in message
    assert message.endswith("claim the next epoch explicitly: `failover run --to azure --epoch 3 --yes`; it "
                            "outranks the dead run's")
    assert isinstance(lost.value, FailoverError) and lost.value.lost  # the CLI: one line, exit 2
    assert touched == [] and not (fleet.workdir / "journal").exists()
    assert _holders(fleet, 2) == {"aws": WINNER.run_id, "azure": WINNER.run_id}  # it created no claim object
    assert json.loads((fleet.workdir / "inventory.json").read_text())["epoch"] == 1


def test_the_winner_journals_its_claim_first_and_a_resumed_run_recognises_it(fleet):
    def interrupted(run):
        raise FailoverError("the host went away")

    with pytest.raises(FailoverError, match="the host went away"):
        _execute(fleet, _plan(), work=interrupted)
    journal = JournalStore(fleet.workdir).current()
    assert [(e.step, e.status) for e in journal.events] == [("claim", "started"), ("claim", DONE),
                                                            ("work", "started"), ("work", FAILED)]
    detail = journal.events[1].detail
    assert detail["epoch"] == 2 and detail["held"] == ["aws", "azure", "gcp"] and not detail["recognised"]
    assert detail["stores"] == {"aws": "created", "azure": "created", "gcp": "created"}
    assert set(_holders(fleet, 2).values()) == {journal.run_id}

    said = []
    the_plan = runner._resumed(fleet, journal, "azure", None)
    assert the_plan.notes["claim"].endswith(f"run {journal.run_id}'s own claim, recognised by its run id")
    done = _execute(fleet, the_plan, journal, said=said)
    assert done.complete and done.run_id == journal.run_id and done.epoch == 2
    assert [e.step for e in done.events if e.status == DONE] == ["claim", "work"]  # the claim is not journaled twice
    assert "claim: epoch 2 is still this run's own, held in aws, azure, gcp (recognised by its run id)" in said
    assert set(_holders(fleet, 2).values()) == {journal.run_id} and _holders(fleet, 3) == {}


def test_a_resumed_run_outranked_by_a_later_claim_stops_and_closes_its_journal(fleet):
    with pytest.raises(FailoverError):
        _execute(fleet, _plan(), work=lambda run: (_ for _ in ()).throw(FailoverError("interrupted")))
    journal = JournalStore(fleet.workdir).current()
    later = Claimant("gcp", "l4ter0000000", "ops-b")
    _seed(fleet, 3, later)  # an operator judged it dead and claimed epoch 3 (`--epoch 3`)
    with pytest.raises(ClaimFailed, match=r"epoch 3 is already claimed by run l4ter0000000 \(target gcp, host ops-b\)"):
        _execute(fleet, runner._resumed(fleet, journal, "azure", None), journal)
    assert JournalStore(fleet.workdir).current() is None  # closed: this directory may start another run
    closed = JournalStore(fleet.workdir).latest()
    assert closed.run_id == journal.run_id and closed.events[-1].step == "claim" and closed.events[-1].status == FAILED


def test_an_explicit_epoch_outranks_a_dead_runs_claim(fleet):
    _seed(fleet, 2, WINNER)  # a run that won epoch 2 and died before raising the Inventory's epoch
    inventory = fleet.inventory()
    with pytest.raises(FailoverError, match=r"--epoch 2 is not above the highest claimed epoch, 2 \(claimed by run "
                                            r"w1nner000000 \(target gcp, host ops-a\)\): use `x --epoch 3`"):
        runner._epoch_to_claim(inventory, 2, "x")
    epoch, note = runner._epoch_to_claim(inventory, 3, "x")
    assert epoch == 3 and note.startswith("epoch 3 (given by --epoch)")
    done = _execute(fleet, _plan(epoch=3))
    assert done.complete and done.epoch == 3 and set(_holders(fleet, 3).values()) == {done.run_id}


# ---------------------------------------------------------------- the clock check

def test_the_offset_is_the_shortest_round_trips_midpoint_and_its_error_half_that_round_trip():
    samples = [(100.0, 102.6, 100.4), (101.0, 103.02, 101.04), (102.0, 104.5, 102.3)]
    measured = clocks.estimate("gcp", "10.0.0.2", samples)
    assert measured.offset == pytest.approx(2.0) and measured.error == pytest.approx(0.02)


def test_a_clock_beyond_the_bound_is_refused_naming_site_host_and_offset():
    fine = clocks.Offset("aws", "10.0.0.1", 0.004, 0.001)
    ahead = clocks.Offset("gcp", "10.0.0.2", 3.2, 0.002)
    behind = clocks.Offset("azure", "10.0.0.3", -1.5, 0.01)
    assert clocks.problems([fine]) == []
    assert clocks.problems([clocks.Offset("aws", "h", 0.99, 0.01)]) == []  # within 1 s even at the worst end
    assert clocks.problems([fine, ahead, behind]) == [
        "site gcp: host 10.0.0.2's clock is 3.200 s ahead of this machine's (± 0.002 s, measured over SSH)",
        "site azure: host 10.0.0.3's clock is 1.500 s behind this machine's (± 0.010 s, measured over SSH)"]
    refusal = clocks.refusal(clocks.problems([ahead]))
    assert "assumes every host's clock within 1 s of the operator's (docs/claims.md, Clocks)" in refusal
    assert "`timedatectl status`" in refusal and refusal.endswith("then run the same command again (it resumes)")


def test_an_offset_the_round_trip_cannot_bound_is_refused_as_unproven():
    slow = clocks.Offset("gcp", "10.0.0.2", 0.8, 0.3)
    [problem] = clocks.problems([slow])
    assert problem.endswith("which cannot be shown to be within 1 s: the SSH round-trip took 0.600 s; run again "
                            "when the link is faster")


def test_measure_reads_the_hosts_clock_between_two_readings_of_ours():
    now = [1000.0]

    def clock():  # the operator's clock: each reading 10 ms later
        now[0] += 0.01
        return now[0]

    commands = []

    def on_host(command):
        commands.append(command)
        return f"{now[0] + 0.005 + 2.5:.9f}\n"  # the host reads its clock mid-way, 2.5 s ahead

    measured = clocks.measure("gcp", "10.0.0.2", on_host, clock, samples=3)
    assert commands == ["true", "date +%s.%N", "date +%s.%N", "date +%s.%N"]
    assert measured.offset == pytest.approx(2.5) and measured.error == pytest.approx(0.005)


# ---------------------------------------------------------------- the fence receipt

CONTROL_CLEAN = """pg_control version number:            1300
Database cluster state:               shut down
Latest checkpoint location:           0/15167D8
Latest checkpoint's REDO location:    0/15167D8
Latest checkpoint's TimeLineID:       1
Bytes per WAL segment:                16777216
"""
AFTER_CLEAN = """rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/015167D8, prev 0/015167B0, desc: CHECKPOINT_SHUTDOWN redo 0/15167D8; tli 1; prev tli 1; fpw true; xid 0:726; oid 16387; multi 1; offset 0; oldest xid 716 in DB 1; oldest multi 1 in DB 1; oldest/newest commit timestamp xid: 0/0; oldest running xid 0; shutdown
pg_waldump: error: error in WAL record at 0/15167D8: invalid record length at 0/1516850: wanted 24, got 0
"""
BEFORE = """rmgr: Transaction len (rec/tot):     66/    66, tx:        723, lsn: 0/015006D0, prev 0/01500630, desc: COMMIT 2026-12-04 20:01:03.430260 UTC; inval msgs: snapshot 2396
rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/015167B0, prev 0/01516770, desc: COMMIT 2026-12-04 20:01:03.664823 UTC
"""
KILLED_TAIL = """rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/01516910, prev 0/01516850, desc: COMMIT 2026-12-04 20:02:18.994337 UTC
pg_waldump: error: error in WAL record at 0/1516910: invalid record length at 0/1516938: wanted 24, got 0
"""


def _host(outputs: dict[str, str]):
    """A host whose pg_controldata and pg_waldump print what `outputs` says (by the command's
    distinguishing part); the commands asked are kept."""
    asked = []

    def run(command):
        asked.append(command)
        for part, text in outputs.items():
            if part in command:
                return True, text
        return False, "pg_waldump: error: could not find file \"000000010000000000000000\""
    return run, asked


def test_a_cleanly_stopped_primary_is_fenced_at_its_shutdown_checkpoint_with_its_last_commit():
    run, asked = _host({"pg_controldata": CONTROL_CLEAN, "-s 0/15167D8 2>&1": AFTER_CLEAN,
                        "-s 0/1000000 -e 0/15167D8": BEFORE})
    taken = receipt.take("aws", "10.0.0.1", run)
    assert taken.to_dict() == {
        "site": "aws", "host": "10.0.0.1", "state": "shut down", "timeline": 1, "fence_lsn": "0/15167D8",
        "fence_point": "shutdown checkpoint", "last_commit_lsn": "0/15167B0", "last_commit_xid": 725,
        "last_commit_at": "2026-12-04 20:01:03.664823 UTC", "records_after_fence": ["0/15167D8 XLOG CHECKPOINT_SHUTDOWN"],
        "commits_after_fence": 0, "searched_from": "0/1000000"}
    assert receipt.problems(taken) == []
    assert "-t 1" in asked[1] and "-r Transaction" in asked[2]
    assert taken.summary().endswith("WAL records after the fence point: XLOG CHECKPOINT_SHUTDOWN; COMMIT records "
                                    "after it: 0")


def test_a_killed_primary_is_fenced_where_its_wal_ends():
    control = CONTROL_CLEAN.replace("shut down", "in production")
    run, _ = _host({"pg_controldata": control, "-s 0/15167D8 2>&1": KILLED_TAIL})
    taken = receipt.take("aws", "10.0.0.1", run)
    assert (taken.fence_lsn, taken.last_commit.lsn, taken.last_commit.xid) == ("0/1516938", "0/1516910", 726)
    assert taken.to_dict()["fence_point"] == "end of the WAL (not stopped cleanly)" and taken.after == ()


def test_a_commit_after_the_fence_point_fails_the_fence():
    after = AFTER_CLEAN.replace("pg_waldump: error", "rmgr: Transaction len (rec/tot):     34/    34, tx:        "
                                "727, lsn: 0/01516850, prev 0/015167D8, desc: COMMIT 2026-12-04 20:03:00.1 UTC\n"
                                "pg_waldump: error")
    run, _ = _host({"pg_controldata": CONTROL_CLEAN, "-s 0/15167D8 2>&1": after, "-e 0/15167D8": BEFORE})
    taken = receipt.take("aws", "10.0.0.1", run)
    with pytest.raises(FailoverError, match=r"site aws: host 10.0.0.1's WAL holds 1 COMMIT record\(s\) after its "
                                            r"fence point 0/15167D8: 0/1516850 \(xid 727\)"):
        receipt.require_none_after(taken)


def test_the_last_commit_is_looked_for_a_segment_at_a_time_and_no_further_than_the_wal_kept():
    control = CONTROL_CLEAN.replace("0/15167D8", "0/30000A0")
    run, asked = _host({"pg_controldata": control, "-s 0/30000A0 2>&1": AFTER_CLEAN.replace("0/15167D8", "0/30000A0"),
                        "-s 0/3000000 -e 0/30000A0": "", "-s 0/2000000 -e 0/3000000": BEFORE})
    taken = receipt.take("aws", "10.0.0.1", run)
    assert taken.last_commit.lsn == "0/15167B0" and taken.searched_from == "0/2000000"
    run, asked = _host({"pg_controldata": control, "-s 0/30000A0 2>&1": ""})
    taken = receipt.take("aws", "10.0.0.1", run)  # nothing in the segment, and the one before is gone
    assert taken.last_commit is None and "no commit in its WAL back to" in taken.summary()


def test_no_cluster_no_receipt():
    assert receipt.take("pilot", "10.0.0.3", lambda c: (False, "pg_controldata: error: could not open file")) \
        .startswith("no receipt: pg_controldata found no cluster")
