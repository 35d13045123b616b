"""RTO, RPO and the pass/fail judgement, computed from canary records given as data."""
from dataclasses import replace

from infra.drill import measure, report
from infra.drill.canary import Write
from infra.drill.measure import Ack, Targets
from infra.drill.result import ScenarioResult


def writes(*rows):
    """(seq, answered, acked, site) rows; sent is answered - 0.01."""
    return [Ack(seq, at - 0.01, at, acked, site) for seq, at, acked, site in rows]


CANARY = writes(
    (1, 100.0, True, "aws"), (2, 100.5, True, "aws"), (3, 101.0, True, "aws"),  # cut-off at 101.2
    (4, 101.5, False, None), (5, 110.0, False, None),
    (6, 125.0, True, "gcp"), (7, 125.5, True, "gcp"),
)


def test_rto_counts_from_cut_off_and_from_command_to_first_ack_on_new_site():
    assert measure.rto(CANARY, "gcp", 101.2) == 23.8
    assert measure.rto(CANARY, "gcp", 104.0) == 21.0
    assert measure.rto(CANARY, "azure", 101.2) is None


def test_acks_on_the_new_site_before_the_mark_do_not_count():
    assert measure.first_ack_on(CANARY, "aws", 100.6).seq == 3


def test_rpo_is_zero_when_every_ack_is_present():
    result = measure.rpo(CANARY, {1, 2, 3, 6, 7})
    assert (result.lost, result.window_seconds, result.lost_seqs) == (0, 0.0, ())


def test_rpo_counts_missing_acks_and_their_window():
    result = measure.rpo(CANARY, {1, 6, 7, 5})  # 5 was never acked: present or not, it is not a loss
    assert result.lost == 2
    assert result.lost_seqs == (2, 3)
    assert result.window_seconds == 0.5
    assert (result.first_lost_at, result.last_lost_at) == (100.5, 101.0)


def test_outage_counts_failed_and_acked_after_cut_off():
    assert measure.outage(CANARY, 101.2) == (2, 2)


def test_judge_passes_within_ttl_plus_margin_and_no_loss():
    lost = measure.rpo(CANARY, {1, 2, 3, 6, 7})
    assert measure.judge(Targets(), 30, 34.9, lost) == []


def test_judge_names_every_missed_target():
    lost = measure.rpo(CANARY, {1, 6, 7})
    missed = measure.judge(Targets(rpo_window_seconds=0.1), 30, 40.0, lost)
    assert len(missed) == 3
    assert "RTO 40.0s" in missed[0] and "35.0s" in missed[0]
    assert "2 acknowledged writes lost" in missed[1]
    assert "RPO window 0.50s" in missed[2]


def test_judge_fails_when_the_new_site_never_took_a_write():
    assert measure.judge(Targets(), 30, None, measure.rpo([], set())) == [
        "the new site never acknowledged a write through DNS"]


def test_targets_explicit_rto_wins_over_ttl():
    assert Targets(rto_seconds=12).rto_limit(30) == 12
    assert Targets(rto_margin_seconds=30).rto_limit(30) == 60


def scenario(name, passed, **changes):
    result = ScenarioResult(
        name=name, description="d", source="aws", target="gcp", dns_ttl=30, targets=Targets(), rto_limit_seconds=35.0,
        cut_off="t", command_started="t", command_ended="t", command_seconds=5.0,
        rto_seconds=20.0 if passed else None, rto_from_command_seconds=19.0 if passed else None, rpo_seconds=0.0,
        archive_lag_seconds=None, recovered_to=None, newest_segment_age_seconds=None, writes_acked=10, writes_lost=0,
        lost_seqs=[], writes_failed_after_cut_off=0, writes_attempted=10, passed=passed,
        missed=[] if passed else ["never"], error=None, epoch=2, steps=[], integrity={"summary": "ok"},
        canary=[Write(1, 0.5, 0.6, "127.0.0.2", True, "gcp")])
    return replace(result, **changes)


def test_summary_fails_when_one_scenario_fails_and_drops_raw_records():
    result = report.summary([scenario("warm", True), scenario("pilot-light", False)])
    assert result["passed"] is False
    assert "canary" not in result["scenarios"][0]
    assert {"name", "rto_seconds", "rpo_seconds", "writes_acked", "writes_lost", "passed", "steps"} <= set(
        result["scenarios"][0])


def test_junit_has_a_case_per_scenario_and_failures():
    xml = report.junit([scenario("warm", True), scenario("pilot-light", False)])
    assert 'tests="2"' in xml and 'failures="1"' in xml and "<failure" in xml


def test_report_files_are_written(tmp_path):
    written = report.write(tmp_path, [scenario("warm", True)])
    assert written["passed"]
    assert {"report.json", "report.md", "junit.xml", "timeline-warm.png"} <= set(written["files"])
    assert "| warm | aws → gcp |" in (tmp_path / "report.md").read_text()


def test_archive_lag_runs_from_the_last_ack_before_cut_off_to_the_last_replayed_commit():
    # The restore replayed up to a commit at 100.2: writes 2 and 3 (acked 100.5, 101.0) are lost.
    assert measure.archive_lag(CANARY, "aws", 101.2, 100.2) == 0.8
    assert measure.archive_lag(CANARY, "aws", 101.2, 101.1) == 0.0  # the archive held every ack
    assert measure.archive_lag(CANARY, "aws", 101.2, None) is None
    assert measure.archive_lag(CANARY, "azure", 101.2, 100.2) is None


def test_the_rpo_window_of_a_restore_never_exceeds_the_archive_lag():
    lost = measure.rpo(CANARY, {1, 6, 7})
    lag = measure.archive_lag(CANARY, "aws", 101.2, 100.2)
    assert lost.window_seconds == 0.5 and lost.window_seconds <= lag
    within = Targets(rto_margin_seconds=30, max_writes_lost=None, rpo_within_archive_lag=True)
    assert measure.judge(within, 30, 24.0, lost, lag) == []


def test_judge_fails_a_window_beyond_the_archive_lag_or_an_unmeasured_lag():
    within = Targets(rto_margin_seconds=30, max_writes_lost=None, rpo_within_archive_lag=True)
    lost = measure.rpo(CANARY, {6, 7})  # 1.0 s window
    assert any("exceeds the WAL archive lag 0.50s" in m for m in measure.judge(within, 30, 24.0, lost, 0.5))
    assert any("could not be measured" in m for m in measure.judge(within, 30, 24.0, lost, None))
    assert measure.judge(Targets(max_writes_lost=None), 30, 24.0, lost, None) == []  # warm: not asked


def test_report_md_shows_the_exposure_window():
    warm = scenario("warm", True, exposure_seconds=0.73, exposure_written_seconds=0.41)
    text = report.markdown([warm])
    assert "| exposure window |" in text and "| 0.73s |" in text and "0.41s until one had received them" in text


def test_report_md_shows_the_archive_lag(tmp_path):
    pilot = scenario("pilot-light", True, archive_lag_seconds=0.51)
    assert "| WAL archive lag |" in report.markdown([pilot])
    assert "| 0.51s |" in report.markdown([pilot])


# The keys of a scenario in report.json before the result was a dataclass: the report keeps its form
# (the exposure window's two fields were added after integrity).
REPORT_KEYS = ["name", "description", "source", "target", "dns_ttl", "targets", "cut_off", "command_started",
               "command_ended", "command_seconds", "rto_seconds", "rto_from_command_seconds", "rpo_seconds",
               "archive_lag_seconds", "recovered_to", "newest_segment_age_seconds", "writes_acked", "writes_lost",
               "lost_seqs", "writes_failed_after_cut_off", "writes_attempted", "passed", "missed", "error", "epoch",
               "steps", "integrity", "exposure_seconds", "exposure_written_seconds", "canary", "cut_off_ts",
               "command_started_ts", "lease_wait_seconds", "fenced_directly"]


def test_report_json_keeps_its_keys_and_the_canary_apart(tmp_path):
    import json

    report.write(tmp_path, [scenario("warm", True)])
    written = json.loads((tmp_path / "report.json").read_text())
    assert list(written) == ["passed", "scenarios", "canary"]
    assert list(written["scenarios"][0]) == [k for k in REPORT_KEYS if k not in ("canary", "cut_off_ts",
                                                                                  "command_started_ts")]
    assert written["scenarios"][0]["targets"]["rto_limit_seconds"] == 35.0 and "rto_margin_seconds" in written["scenarios"][0]["targets"]
    assert list(scenario("warm", True).to_dict()) == REPORT_KEYS
    assert written["canary"]["warm"][0]["site"] == "gcp"


def test_the_report_says_what_the_old_primarys_lease_cost():
    waited = scenario("warm", True)
    waited.lease_wait_seconds, waited.fenced_directly = 6.41, False
    direct = scenario("warm", True)
    direct.lease_wait_seconds, direct.fenced_directly = 0.0, True
    assert "waited 6.41s for its lease to run out" in report.markdown([waited])
    assert "fenced directly over SSH, so no lease was waited for" in report.markdown([direct])
    assert "Lease: not measured" in report.markdown([scenario("warm", True)])


def lsns(*rows):
    """(at, in_recovery, current, flushed, written) rows as samples."""
    return [measure.LsnSample(at, rec, cur, fl, wr) for at, rec, cur, fl, wr in rows]


def test_the_exposure_window_runs_from_the_promotion_until_another_site_flushed_the_sample_before():
    """It opens at the last look in recovery (the promotion came after it: an upper bound)."""
    samples = lsns((10.0, True, None, None, None),
                   (10.2, False, 100, None, None),   # promoted: writes may be acknowledged from here
                   (10.4, False, 150, None, None),
                   (10.6, False, 200, 120, 150),     # a follower streams, behind the sample before
                   (10.8, False, 260, 200, 260))     # it flushed what was there at 10.6
    window = measure.exposure(samples)
    assert (window.started_at, window.ended_at, window.seconds) == (10.0, 10.8, 0.8)
    assert measure.exposure(samples, written=True).seconds == 0.6  # received 150 >= 150 at 10.6
    assert window.interval_seconds == 0.2


def test_an_exposure_window_that_never_closes_has_no_length():
    samples = lsns((1.0, False, 100, None, None), (1.5, False, 200, 90, 90))
    assert measure.exposure(samples).seconds is None and measure.exposure(samples).started_at == 1.0
    assert measure.exposure(lsns((1.0, True, None, None, None))).started_at is None


def test_lsns_are_byte_positions():
    assert measure.lsn("16/B374D848") == (0x16 << 32) + 0xB374D848 and measure.lsn("") is None


def test_the_drill_fails_an_exposure_window_over_its_target_or_one_that_never_closed():
    """Issue 15: <= 2 s after a warm and a pilot-light failover, the default for both scenarios."""
    closed = measure.Exposure(10.0, 11.9, 1.9, 0.15)
    assert Targets().exposure_seconds == 2.0 and measure.judge_exposure(Targets(), closed) == []
    late = measure.judge_exposure(Targets(), measure.Exposure(10.0, 12.1, 2.1, 0.15))
    assert late and "exposure window 2.10s exceeds 2.00s" in late[0]
    never = measure.judge_exposure(Targets(), measure.Exposure(10.0, None, None, 0.15))
    assert never and "never closed" in never[0]
    assert measure.judge_exposure(Targets(exposure_seconds=None), measure.Exposure(10.0, None, None, 0.1)) == []


def test_report_md_shows_the_exposure_target_and_where_the_follow_step_spent_its_time():
    steps = [{"step": "follow", "status": "done", "seconds": 1.2,
              "detail": {"promotion_wait": 0.05, "laps": {"azure": {"directory": 0.06, "launched": 0.41}}}}]
    text = report.markdown([scenario("warm", True, exposure_seconds=0.73, steps=steps)])
    assert "(target 2.00s)" in text
    assert "After the promotion, the followers: azure: directory 0.06s, launched 0.41s." in text
