"""The runbook's decisions and its journal, tested with data (no processes)."""
import types

import pytest

from infra.data.storage import Store
from infra.errors import FailoverError
from infra.runbook import steps
from infra.runbook.journal import DONE, FAILED, STARTED, Journal, JournalStore
from infra.sites.contract import MediaRemote, Repository, SiteOutputs
from infra.sites.site import SiteError
from infra.spec import DnsProvider

NAMES = ["aws", "gcp", "azure"]


def test_good_inputs_have_no_problems():
    assert steps.input_problems(NAMES, "aws", {"aws"}, "gcp", None) == []
    assert steps.input_problems(NAMES, "aws", set(), "gcp", "aws") == []


@pytest.mark.parametrize("target, source, dropped, expected", [
    ("oracle", None, set(), "unknown site 'oracle'"),
    ("aws", None, set(), "already the active primary"),
    ("gcp", None, {"gcp"}, "gcp is dropped"),
    ("gcp", "azure", set(), "--from azure is not the active primary (aws)"),
    ("gcp", "nowhere", set(), "unknown --from site 'nowhere'"),
])
def test_bad_inputs_are_named(target, source, dropped, expected):
    problems = steps.input_problems(NAMES, "aws", dropped, target, source)
    assert any(expected in p for p in problems), problems


def test_a_streaming_replica_is_promoted_with_no_expected_loss_when_synchronous():
    source = steps.choose_source("warm", True, "sync", [])
    assert source.kind == steps.PROMOTE and source.expected_loss.startswith("none") and source.has_every_commit
    asynchronous = steps.choose_source("warm", True, "async", [])
    # An asynchronous replica may be behind the archive: its promotion keeps the archive.
    assert "lag" in asynchronous.expected_loss and not asynchronous.has_every_commit


def test_without_a_replica_the_repository_with_the_newest_wal_is_chosen():
    repos = [
        {"name": "repo2", "index": 2, "site": "gcp", "last_backup": "2026-01-01T10:00", "last_archived_wal": "00000001000000000000000A"},
        {"name": "repo3", "index": 3, "site": "azure", "last_backup": "2026-01-01T09:00", "last_archived_wal": "00000001000000000000000C"},
        {"name": "repo4", "index": 4, "site": "x", "last_backup": None, "last_archived_wal": None, "error": "no stanza"},
    ]
    source = steps.choose_source("pilot-light", False, "sync", repos)
    assert (source.kind, source.repo_index, source.repo_site) == (steps.RESTORE, 3, "azure")


def test_a_target_without_data_is_refused_with_the_reasons():
    with pytest.raises(FailoverError, match="repo2 at gcp: no stanza"):
        steps.choose_source("pilot-light", False, "sync", [{"name": "repo2", "index": 2, "site": "gcp", "last_backup": None,
                                                          "error": "no stanza"}])


def test_missing_dns_secrets_are_named(monkeypatch):
    monkeypatch.delenv("FAILOVER_TEST_NO_SUCH_SECRET", raising=False)
    monkeypatch.setenv("FAILOVER_TEST_SECRET", "s3cret")
    providers = [DnsProvider("knot-a", "x.Y", {"key_secret": "env/FAILOVER_TEST_SECRET", "host": "127.0.0.1"}, "v"),
                 DnsProvider("knot-b", "x.Y", {"key_secret": "env/FAILOVER_TEST_NO_SUCH_SECRET"}, "v")]
    assert steps.missing_dns_secrets(providers) == ["knot-b.key_secret (env/FAILOVER_TEST_NO_SUCH_SECRET)"]


def test_a_new_run_claims_the_epoch_after_the_inventorys_unless_told():
    from infra.runbook import claim

    assert claim.epoch_for(1, None) == 2
    assert claim.epoch_for(1, 5) == 5


def test_journal_resumes_after_the_last_completed_step():
    journal = Journal.new("failover", "aws", "gcp", 2, ["a", "b", "c"], {})
    journal.record("a", STARTED)
    journal.record("a", DONE)
    journal.record("b", STARTED)  # crashed here
    assert journal.completed() == {"a"}
    assert journal.pending() == ["b", "c"]
    journal.record("b", FAILED, error="boom")
    journal.record("b", STARTED)
    journal.record("b", DONE)
    rows = {r["step"]: r for r in journal.timings()}
    assert rows["b"]["attempts"] == 2 and rows["b"]["status"] == DONE
    assert rows["c"]["status"] == "pending"
    assert not journal.complete


def test_journal_store_round_trips_copies_and_closes(tmp_path):
    store = JournalStore(tmp_path / "work")
    journal = Journal.new("failover", "aws", "gcp", 2, ["a"], {"data": {}})
    journal.record("a", STARTED)
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    assert store.save(journal, [_posix_store(bucket)]) == []
    assert (bucket / ".failover" / "journal.json").exists()
    loaded = store.current()
    assert loaded.run_id == journal.run_id and loaded.events[0].status == STARTED
    store.close(loaded)
    assert store.current() is None
    assert store.latest().run_id == journal.run_id


def test_journal_copy_to_an_unwritable_store_is_reported_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    failed = JournalStore(tmp_path / "work").save(Journal.new("failover", "aws", "gcp", 2, [], {}),
                                                  [_posix_store(blocker)])
    assert len(failed) == 1 and failed[0].startswith("site aws: posix storage directory ")


def _posix_store(path) -> Store:
    site = SiteOutputs("aws", "local", "loopback", "primary", (), (), "postgres", "127.0.0.1", 5432,
                       Repository("posix", {"path": str(path)}), MediaRemote("local", {}, str(path)))
    return Store(site)


def test_the_failover_steps_are_in_the_issue_order():
    assert steps.STEP_NAMES == ["claim", "preflight", "fence", "capacity", "promote", "media", "start_app", "prepare_dns",
                                "ready_followers", "shift_dns", "take_writes", "verify_dns", "follow", "verify_app", "protect"]


def test_what_runs_at_once_media_app_and_dns_plan_with_the_promotion_dns_proof_with_the_replay():
    together = [[name for name, _ in stage] for stage in steps.FAILOVER_STAGES if len(stage) > 1]
    assert together == [["promote", "media", "start_app", "prepare_dns", "ready_followers"],
                        ["take_writes", "verify_dns", "follow"]]
    # DNS moves once the data is readable; writes are verified only once the replay has ended.
    names = steps.STEP_NAMES
    assert names.index("promote") < names.index("shift_dns") < names.index("take_writes") < names.index("verify_app")


def _stage_run(events: list):
    return steps.Run(None, None, None, "aws", "gcp", 2, None, progress=events.append)


def _journal_and_saves():
    journal, saves = Journal.new("failover", "aws", "gcp", 2, ["a", "b", "c"], {}), []
    return journal, saves, lambda: saves.append(len(journal.events))


def test_the_steps_of_a_stage_run_at_once_and_each_is_journaled():
    import threading

    from infra.runbook import runner

    barrier = threading.Barrier(3, timeout=10)  # passes only when all three steps run at the same time
    stage = [(name, lambda run, n=name: {"name": n, "met": barrier.wait() >= 0}) for name in ("a", "b", "c")]
    journal, saves, save = _journal_and_saves()
    runner._run_stage(_stage_run([]), stage, journal, save)
    assert journal.completed() == {"a", "b", "c"}
    assert all(e.detail["met"] for e in journal.events if e.status == DONE)
    assert [e.status for e in journal.events[:3]] == [STARTED] * 3
    assert saves[0] == 3 and len(saves) == 4  # once with every start, then after each end


def test_a_failed_step_fails_the_stage_after_the_others_end():
    from infra.runbook import runner

    def broken(run):
        raise FailoverError("restore failed")

    journal, _, save = _journal_and_saves()
    stage = [("a", broken), ("b", lambda run: {"copied": 1})]
    with pytest.raises(FailoverError, match="restore failed"):
        runner._run_stage(_stage_run([]), stage, journal, save)
    assert journal.completed() == {"b"}
    assert [e.detail["error"] for e in journal.events if e.status == FAILED] == ["restore failed"]


def test_failback_inputs_are_checked_before_anything_changes():
    from infra.runbook import failback

    assert failback.input_problems(NAMES, "gcp", set(), "aws") == []
    assert "unknown site 'oracle'" in failback.input_problems(NAMES, "gcp", set(), "oracle")[0]
    assert "already the active primary" in failback.input_problems(NAMES, "gcp", set(), "gcp")[0]
    problem = failback.input_problems(NAMES, "gcp", {"aws"}, "aws")[0]
    assert "still unreachable" in problem and "restore-site --site aws" in problem


def test_the_failback_steps_reseed_sync_and_stop_writes_before_the_switch():
    from infra.runbook import failback, runner

    assert failback.STEP_NAMES == ["claim", "preflight", "reseed", "sync", "stop_writes", "switch", "media", "start_app",
                                   "verify_app", "shift_dns", "verify_dns", "protect"]
    assert runner.stages_for("failback") == [[step] for step in failback.FAILBACK]
    assert runner.stages_for("failover") is steps.FAILOVER_STAGES
    assert failback.data_source("gcp", "aws").expected_loss.startswith("none")


def test_every_runbook_refuses_missing_dns_secrets_with_one_message(monkeypatch):
    from infra.dns.site import DnsConfig

    monkeypatch.delenv("FAILOVER_TEST_NO_SUCH_SECRET", raising=False)
    config = DnsConfig("example.", ("www",), 30, (DnsProvider("knot-b", "x.Y", {"key_secret": "env/FAILOVER_TEST_NO_SUCH_SECRET"}, "v"),),
                       "providers.yaml")
    with pytest.raises(FailoverError, match=r"DNS secrets missing: knot-b.key_secret .* \(providers from providers.yaml\)"):
        steps.require_dns_secrets(config)


class _Recorder:
    """A target site and fleet that record, in order, what take_writes does to them."""

    def __init__(self):
        self.events: list[str] = []

    def recovery_state(self):
        return False

    def psql(self, statements, db="postgres", warn=False):
        self.events += [s.split()[0] for s in statements if s.startswith("INSERT INTO failover.epoch")]
        return types.SimpleNamespace(stdout="1796400000.5\n")

    def service(self):
        return types.SimpleNamespace(run=lambda command, **_: self.events.append("archive back"))

    def publish(self, inventory):
        self.events.append(f"publish {inventory.active}")


def _take_writes_run(recorder: _Recorder, fenced: dict) -> steps.Run:
    run = types.SimpleNamespace(site=recorder, target="gcp", source="aws", epoch=2, fenced=fenced,
                                progress=lambda m: None,
                                spec=types.SimpleNamespace(database=types.SimpleNamespace(name="social",
                                                                                          async_after_seconds=5)),
                                fleet=recorder)
    run.inventory = types.SimpleNamespace(active="aws", epoch=2)  # fresh per read in the real Run
    return run


@pytest.mark.parametrize("fenced", [{"fenced_directly": True, "claimed_at": 0.0},
                                    {"fenced_directly": False, "claimed_at": 0.0}])
def test_the_new_primary_holds_its_lease_at_the_new_epoch_before_it_stores_the_epoch(monkeypatch, fenced):
    """No write is acknowledged before the target's protector holds the lease at the run's epoch:
    a later failover that cannot reach it then waits the lease out (docs/lease.md)."""
    recorder = _Recorder()
    started: list = []
    monkeypatch.setattr(steps.lease, "wait_seconds", lambda claimed_at, now: 0.2)
    monkeypatch.setattr(steps.services, "start_protector",
                        lambda site, inventory, after, wait=True, fresh=True:
                        started.append((inventory.active, inventory.epoch, wait, fresh))
                        or recorder.events.append("protector started"))
    monkeypatch.setattr(steps.services, "wait_lease_held",
                        lambda site, epoch: recorder.events.append(f"lease held at epoch {epoch}")
                        or {"renewed": ["gcp", "azure"], "stores": 3})
    detail = steps.take_writes(_take_writes_run(recorder, fenced))
    # Its host's Inventory names it active at the new epoch; the runbook waits for the lease, not
    # for supervisor, and keeps what the protector saved at this epoch (a fenced one stays fenced).
    assert started == [("gcp", 2, False, False)]
    assert recorder.events.index("lease held at epoch 2") < recorder.events.index("INSERT")
    assert recorder.events.index("INSERT") < recorder.events.index("publish gcp")
    assert detail["lease"]["stores"] == "2 of 3"


def test_a_new_primary_that_cannot_hold_its_lease_takes_no_writes(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(steps.services, "start_protector", lambda *a, **k: None)

    def fenced(site, epoch):
        raise SiteError("site gcp: host 127.0.10.2: the protector does not hold the lease at epoch 2")

    monkeypatch.setattr(steps.services, "wait_lease_held", fenced)
    with pytest.raises(SiteError, match="does not hold the lease at epoch 2"):
        steps.take_writes(_take_writes_run(recorder, {"fenced_directly": True, "claimed_at": 0.0}))
    assert "INSERT" not in recorder.events and not any(e.startswith("publish") for e in recorder.events)
