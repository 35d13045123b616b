"""The bench's pure arithmetic and rendering, tested with data (no timing, no processes)."""
from __future__ import annotations


import pytest

from infra.bench import baseline, cluster, drills, overhead, report, stats

MB = stats.MB


def measured(size_gb=1.0, copy=(10.0, 12.0, 11.0), pgbackrest=(15.0, 14.0, 16.0), dump=(60.0, 50.0, 55.0)):
    return {"size_gb": size_gb, "datadir_bytes": 1100 * MB, "pg_wal_bytes": 33 * MB, "restored_bytes": 1000 * MB,
            "backup_seconds": 30.0, "counts": {"database_bytes": 1000 * MB, "posts": 1_700_000},
            "seconds": {"copy": list(copy), "pgbackrest": list(pgbackrest), "dump": list(dump),
                        "dump_only": [20.0, 21.0, 22.0], "restore_only": [35.0, 30.0, 33.0]}}


def drill(scenario="warm", size_gb=0.25, rto=31.0, ttl=30, rpo=0.0, steps=None, error=""):
    return {"scenario": scenario, "size_gb": size_gb, "seed_mb": 231, "dns_ttl": ttl, "result": "pass" if not error else "error",
            "rto_seconds": rto, "rto_from_command_seconds": rto, "rpo_seconds": rpo, "writes_lost": 0, "writes_acked": 50,
            "steps": steps or [{"step": "promote", "status": "done", "seconds": 1.2}], "error": error}


def test_median_ignores_missing_values_and_none_when_empty():
    assert stats.median([3.0, None, 1.0, 2.0]) == 2.0
    assert stats.median([]) is None


def test_rates_and_ratios_guard_against_zero():
    assert stats.mb_per_s(100 * MB, 4.0) == 25.0
    assert stats.mb_per_s(100 * MB, 0) is None
    assert stats.ratio(5.0, 10.0) == 0.5
    assert stats.ratio(5.0, None) is None
    assert stats.overhead(90.0, 100.0) == pytest.approx(0.10)


def test_restore_row_divides_the_same_size_so_ratios_are_time_ratios():
    row = stats.restore_row(measured())
    assert row["copy_seconds"] == 11.0 and row["pgbackrest_seconds"] == 15.0 and row["dump_seconds"] == 55.0
    assert row["copy_mb_s"] == pytest.approx(100.0)
    assert row["pgbackrest_vs_copy"] == pytest.approx(11 / 15)
    assert row["pgbackrest_vs_dump"] == pytest.approx(55 / 15)
    assert row["copy_spread"] == pytest.approx(2 / 11)


def test_restore_checks_at_one_gigabyte():
    checks = stats.restore_checks([stats.restore_row(measured(0.25)), stats.restore_row(measured(1.0, pgbackrest=(30, 30, 30)))])
    assert [c.passed for c in checks] == [False, False]  # 11/30 of the copy, 55/30 of the dump
    assert stats.restore_checks([stats.restore_row(measured(0.25))])[0].passed is None


def test_drill_checks_issue_9_net_rto_and_losses_with_issue_8_flatness_and_rpo():
    checks = stats.drill_checks([drill(size_gb=0.25, rto=30.9), drill(size_gb=1.0, rto=31.5),
                                 drill("pilot-light", 1.0, rto=50.0, rpo=2.5)])
    verdicts = {c.target: c.passed for c in checks}
    assert verdicts["warm RTO - TTL <= 1 s at 0.25 GB"] is True  # 0.9 s beyond the TTL
    assert verdicts["warm RTO - TTL <= 1 s at 1 GB"] is False  # 1.5 s
    assert verdicts["warm RTO - TTL flat from 0.25 to 1 GB (within 30%)"] is False  # 0.9 s -> 1.5 s is +67%
    assert verdicts["pilot-light RTO - TTL <= 5 s at 1 GB"] is False  # 20 s
    assert verdicts["pilot-light RPO window <= 1 s at 1 GB"] is False
    assert verdicts["warm: 0 acknowledged writes lost at 1 GB"] is True
    pilot = {c.target: c.passed for c in stats.drill_checks([drill("pilot-light", 1.0, rto=34.9)])}
    assert pilot["pilot-light RTO - TTL <= 5 s at 1 GB"] is True  # 4.9 s
    assert pilot["warm RTO - TTL <= 1 s"] is None  # not measured, not failed


def test_a_lost_acknowledged_write_fails_its_drill():
    lost = {**drill(size_gb=1.0), "writes_lost": 1}
    check = next(c for c in stats.drill_checks([lost]) if "acknowledged" in c.target)
    assert check.passed is False and check.measured == "1 of 50"


def test_net_rto_is_never_less_than_the_runbook_time_until_dns_serves_a_writable_site():
    steps = [{"step": "promote", "status": "done", "seconds": 1.5}, {"step": "verify_app", "status": "done", "seconds": 0.1},
             {"step": "verify_dns", "status": "done", "seconds": 0.2}, {"step": "protect", "status": "done", "seconds": 40.0}]
    assert stats.until_writable(steps) == pytest.approx(1.8)
    assert stats.net_rto(drill(rto=12.0, ttl=30, steps=steps)) == pytest.approx(1.8)  # the cache expired early
    assert stats.net_rto(drill(rto=33.0, ttl=30, steps=steps)) == pytest.approx(3.0)
    assert stats.until_writable(steps[:1]) is None and stats.net_rto(drill(rto=None)) is None


def test_time_to_dns_is_wall_time_when_steps_overlap():
    def step(name, started, ended):
        return {"step": name, "status": "done", "seconds": ended - started,
                "started": f"2026-11-28T10:00:{started:06.3f}+00:00", "ended": f"2026-11-28T10:00:{ended:06.3f}+00:00"}

    steps = [step("promote", 1.0, 3.0), step("media", 1.0, 2.5), step("verify_dns", 3.0, 3.4), step("protect", 3.4, 9.0)]
    assert stats.until_reads(steps) == pytest.approx(2.4)  # not 2.0 + 1.5 + 0.4


def test_a_restored_site_serves_reads_through_dns_before_it_takes_writes():
    def step(name, started, ended):
        return {"step": name, "status": "done", "seconds": ended - started,
                "started": f"2026-11-28T10:00:{started:06.3f}+00:00", "ended": f"2026-11-28T10:00:{ended:06.3f}+00:00"}

    # DNS moved and was verified while WAL replay went on; the app became writable after take_writes.
    steps = [step("promote", 1.0, 4.0), step("shift_dns", 4.0, 4.1), step("take_writes", 4.1, 9.0),
             step("verify_dns", 4.1, 4.15), step("verify_app", 9.0, 9.1)]
    assert stats.until_reads(steps) == pytest.approx(3.15)
    assert stats.until_writable(steps) == pytest.approx(8.1)


def test_command_to_writes_adds_the_plan_made_before_the_first_step():
    def step(name, started, ended):
        return {"step": name, "status": "done", "seconds": ended - started,
                "started": f"2026-11-28T10:00:{started:06.3f}+00:00", "ended": f"2026-11-28T10:00:{ended:06.3f}+00:00"}

    steps = [step("preflight", 1.6, 1.7), step("verify_dns", 2.0, 2.1), step("verify_app", 2.2, 2.3)]
    run = {**drill(steps=steps), "command_started": "2026-11-28T10:00:01.000+00:00"}
    assert stats.until_writable(steps) == pytest.approx(0.7)
    assert stats.command_until_writable(run) == pytest.approx(1.3)
    assert stats.command_until_writable(drill(steps=steps)) is None  # an older JSON without the command's start


def test_a_failed_pilot_light_drill_is_not_measured_rather_than_failed():
    checks = stats.drill_checks([drill(), drill("pilot-light", 1.0, rto=None, rpo=None, error="exit 2")])
    assert [c.passed for c in checks if c.target.startswith("pilot-light")] == [None, None]


def test_overhead_checks_pass_under_ten_percent_and_report_sync():
    checks = stats.overhead_checks({"off": 1000.0, "async": 950.0, "sync": 600.0})
    assert checks[0].passed is True and checks[0].measured == "5.0%"
    assert checks[1].measured == "40.0%" and checks[1].verdict == "reported"


def test_overhead_target_uses_the_isolated_replica_and_reports_the_shared_one():
    checks = stats.overhead_checks({"off": 1000.0, "archive": 980.0, "async": 800.0, "async_isolated": 920.0,
                                    "sync": 600.0, "sync_isolated": 700.0})
    assert "tmpfs at nice 19" in checks[0].target and checks[0].measured == "8.0%" and checks[0].passed is True
    reported = {c.target: c.measured for c in checks[1:]}
    assert reported["protection overhead, archiving + async replica on the same disk and CPUs"] == "20.0%"
    assert reported["protection overhead, archiving only"] == "2.0%"
    assert all(c.verdict == "reported" for c in checks[1:]) and len(checks) == 5
    assert stats.overhead_checks({"off": 1000.0, "async_isolated": 850.0})[0].passed is False


def test_text_table_aligns_columns():
    text = report.table(["a", "long header"], [["x", "1"], ["yyyy", "22"]])
    lines = text.splitlines()
    assert lines[0] == "a     long header"
    assert lines[2] == "x     1"


def test_markdown_renders_every_section_with_targets():
    result = {"started": "2026-11-28T19:00:00+00:00", "arguments": "--sizes 0.25,1", "duration_seconds": 600,
              "environment": {"cpus": 2, "drop_caches": "yes"}, "restore": [measured(1.0)],
              "drills": [drill(steps=[{"step": "promote", "status": "done", "seconds": 1.2},
                                      {"step": "shift_dns", "status": "failed", "seconds": 0.3}]),
                         drill("pilot-light", 1.0, rto=None, rpo=None, error="exit 2: restore failed")],
              "overhead": {"scale": 10, "clients": 4, "threads": 2, "seconds": 20,
                           "tps": {"off": [500.0, 520.0, 510.0], "async": [480.0], "sync": [300.0]},
                           "cpu": {"off": [{"walsender": 0.0, "archiving": 0.0, "replica": 0.0}],
                                   "async": [{"walsender": 7.5, "archiving": 2.0, "replica": 20.0},
                                             {"walsender": 8.5, "archiving": 4.0, "replica": 30.0}]}},
              "notes": ["a note"], "restore_notes": []}
    text = report.markdown(result)
    assert "| 1 GB | 1100 MB | cp -a (machine limit) | 11.00 | 100.0 | 1.00x | 18% |" in text
    assert "| pgBackRest restore >= 0.6x cp -a at 1 GB | 0.73x | pass |" in text
    assert "| shift_dns | 0.30 s (failed) |" in text
    assert "pilot-light at 1 GB: exit 2: restore failed" in text
    assert "| archiving + async replica (same disk and CPUs) | 480 | 480 | 5.9% |" in text
    assert "![benchmarks](img/benchmarks.png)" in text and "- a note" in text
    assert "| archiving + async replica (same disk and CPUs) | 8.0% | 3.0% | 25.0% | - |" in text
    assert "| off (no archiving, no replica) |" not in text.split("Where protection's CPU goes")[1].split("## Notes")[0]
    assert "Protection overhead" in report.text(result)
    assert "come from another run" not in text
    result["overhead"]["run"] = {"started": "2026-11-28T21:00:00+00:00", "arguments": "--skip restore,drills"}
    assert "`scripts/bench --skip restore,drills` started 2026-11-28T21:00:00+00:00" in report.markdown(result)


STAT = ("4242 (postgres) S 4200 4242 4242 0 -1 4194560 3000 100 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 "
        "500 229376 1200 18446744073709551615 1 1 0 0 0 0 0 16781312 16384 0 0 0 17 1 0 0 0 0 0")


def test_process_stat_gives_parent_and_cpu_including_waited_for_children():
    assert overhead.parse_stat(STAT.format(utime=120, stime=30, cutime=40, cstime=10)) == (4200, 200)
    # a process title with a parenthesis and spaces does not shift the fields
    assert overhead.parse_stat(STAT.replace("(postgres)", "(post (gres) x)").format(utime=1, stime=2, cutime=3, cstime=4)) == (4200, 10)


def test_protection_cpu_is_attributed_to_walsender_archiver_and_replica():
    assert overhead.primary_role("postgres: walsender postgres 127.0.0.1(5123) streaming 0/3000148") == "walsender"
    assert overhead.primary_role("postgres: archiver last was 000000010000000000000003") == "archiving"
    assert overhead.primary_role("postgres: postgres pgbench [local] UPDATE") is None
    # Debian's cluster_name comes first in every title
    assert overhead.primary_role("postgres: 15/main: walsender replicator 127.0.0.1(40000) streaming 0/3000148") == "walsender"
    assert overhead.primary_role("postgres: 15/main: archiver last was 000000010000000000000003") == "archiving"
    assert overhead.primary_role("postgres: 15/main: postgres pgbench [local] idle") is None
    before = {10: ("walsender", 0), 11: ("archiving", 100), 20: ("replica", 500)}
    after = {10: ("walsender", 200), 11: ("archiving", 200), 20: ("replica", 900),
             21: ("replica", 100)}  # a process that started during the run counts from zero
    assert overhead.core_percent(before, after, 10.0, clock_ticks=100) == {"walsender": 20.0, "archiving": 10.0,
                                                                           "replica": 50.0, "wal_stream": 0.0}


def test_a_hosts_process_listing_is_split_by_the_site_process_it_descends_from():
    listing = __import__("json").dumps({
        "4242": [STAT.replace("4200", "1").format(utime=5, stime=5, cutime=0, cstime=0), "/usr/lib/postgresql/15/bin/postgres"],
        "4250": [STAT.replace("4242 (", "4250 (", 1).replace("4200", "4242").format(utime=7, stime=3, cutime=0, cstime=0),
                 "postgres: walsender replicator 127.0.0.1(40000) streaming 0/3000148"],
        "4251": [STAT.replace("4200", "4242").format(utime=1, stime=1, cutime=2, cstime=0), "postgres: archiver"],
        "9999": [STAT.replace("4200", "777").format(utime=50, stime=50, cutime=0, cstime=0),
                 "postgres: walsender of another agent's VM"]})
    table = overhead.process_table(listing)
    assert table[4250] == (4242, 10, "postgres: walsender replicator 127.0.0.1(40000) streaming 0/3000148")
    assert overhead.process_ticks(table, 4242, overhead.primary_role) == {4250: ("walsender", 10), 4251: ("archiving", 4)}
    assert set(overhead.process_ticks(table, 4242, lambda title: "replica")) == {4242, 4250, 4251}


def test_each_mode_sets_archiving_the_synchronous_standby_and_the_replica_s_replies():
    assert overhead.primary_settings("off", "gcp") == {"synchronous_standby_names": "", "archive_mode": "off"}
    assert overhead.primary_settings("async_stream", "gcp") == {"synchronous_standby_names": ""}
    assert overhead.primary_settings("sync", "gcp") == {"synchronous_standby_names": '"gcp"'}
    assert overhead.replica_settings("async") == {"wal_receiver_status_interval": "0"}
    assert overhead.replica_settings("sync") == {}
    assert [m for m in overhead.MODES if overhead.runs_replica(m)] == ["async", "async_stream", "sync"]


def test_pgbench_modes_alternate_direction_so_drift_falls_on_every_mode_alike():
    modes = ["off", "archive", "async"]
    assert [overhead.run_order(modes, n) for n in (1, 2, 3)] == [modes, modes[::-1], modes]
    assert modes == ["off", "archive", "async"]  # the caller's list is left as it was


def test_pgbench_tps_is_parsed_without_connection_time():
    output = "number of transactions actually processed: 9000\ntps = 449.9 (without initial connection time)\n"
    assert overhead.parse_tps(output) == 449.9
    with pytest.raises(ValueError):
        overhead.parse_tps("connection refused")


def test_drill_json_becomes_a_row_and_missing_json_an_error_row():
    parsed = {"passed": True, "scenarios": [{"name": "warm", "passed": True, "dns_ttl": 30, "rto_seconds": 31.2,
                                             "rto_from_command_seconds": 30.9, "rpo_seconds": 0.0, "writes_lost": 0,
                                             "writes_acked": 80, "steps": [{"step": "promote", "status": "done",
                                                                            "seconds": 1.1, "started": "s", "ended": "e",
                                                                            "detail": {"how": "promoted"}}]}]}
    row = drills.row("warm", 1.0, 999, drills.parse("noise\n" + __import__("json").dumps(parsed)), "")
    assert row["result"] == "pass" and row["rto_seconds"] == 31.2
    # Timestamps are kept: steps of one stage overlap, so time to DNS is wall time, not a sum.
    assert row["steps"] == [{"step": "promote", "status": "done", "seconds": 1.1, "started": "s", "ended": "e"}]
    failed = drills.row("pilot-light", 1.0, 999, drills.parse("Traceback"), "exit 1")
    assert failed["result"] == "error" and failed["error"] == "exit 1"


def test_growing_adds_what_is_missing_in_bounded_chunks_of_bigint_rows():
    assert cluster.chunk_rows(0, 10**12, 600) == cluster.CHUNK_ROWS
    assert cluster.chunk_rows(1000 * MB, 1000 * MB + 600 * 5000, 600) == 6000  # 5000 missing, 1000 over
    assert cluster.chunk_rows(1000 * MB, 1000 * MB, 600) == 1000
    statement = cluster.grow_statement(12, 5000)
    assert "1::bigint, 5000::bigint" in statement and "g % 12" in statement and "%%" not in statement
    assert cluster.seed_mb_for(1.0) == 999 and cluster.database_target_bytes(1.0) == 2**30 - 25 * MB


def test_the_in_process_figures_are_kept_cell_for_cell():
    assert baseline.cell("restore", "median s", seed="1 GB", method="cp -a (machine limit)") == "2.35"
    assert baseline.cell("drills", "runbook to writes", scenario="pilot-light", seed="1 GB") == "2.53 s"
    assert baseline.cell("steps", "warm 1 GB", step="promote") == "0.38 s"
    assert baseline.cell("drills", "lost", scenario="warm", seed="9 GB") is None
    assert baseline.seconds("0.73 s") == 0.73 and baseline.seconds("0.77x") == 0.77 and baseline.seconds("-") is None


def test_the_page_sets_each_figure_beside_its_in_process_one():
    steps = [{"step": "promote", "status": "done", "seconds": 0.6,
              "started": "2026-11-28T10:00:00.000+00:00", "ended": "2026-11-28T10:00:00.600+00:00"},
             {"step": "verify_dns", "status": "done", "seconds": 0.1,
              "started": "2026-11-28T10:00:00.600+00:00", "ended": "2026-11-28T10:00:00.700+00:00"},
             {"step": "verify_app", "status": "done", "seconds": 0.1,
              "started": "2026-11-28T10:00:00.700+00:00", "ended": "2026-11-28T10:00:00.900+00:00"}]
    result = {"restore": [measured(1.0)], "drills": [drill(size_gb=1.0, rto=20.0, steps=steps)]}
    rows = {(r[0], r[1]): r[2:] for r in report.comparison_rows(result)}
    assert rows[("cp -a (machine limit): median s", "1 GB")] == ["11.00", "2.35", "+8.65 (4.7x)"]
    assert rows[("warm: runbook to writes", "1 GB")] == ["0.90 s", "0.73 s", "+0.17 (1.2x)"]
    assert rows[("warm: acknowledged writes lost", "1 GB")] == ["0 of 50", "0 of 245", "-"]
    header, table = report.step_comparison(result)
    assert header == ["step", "warm 1 GB over SSH", "warm 1 GB before #9"]
    assert ["promote", "0.60 s", "0.38 s"] in table and ["protect", "-", "11.43 s"] in table
    text = report.markdown({**result, "started": "x", "environment": {}})
    assert "## Over SSH (VMs) vs in-process (before #9)" in text
    assert "### Drills (in-process, before #9)" in text and "| warm | 1 GB | pass | 16.66 s |" in text


def test_the_exposure_window_is_checked_after_each_failover_and_an_unclosed_one_fails():
    from infra.bench import stats

    drills_ = [{"scenario": "warm", "size_gb": 1.0, "rto_seconds": 30.5, "exposure_seconds": 0.8},
               {"scenario": "pilot-light", "size_gb": 1.0, "rto_seconds": 33.0, "exposure_seconds": None},
               {"scenario": "warm", "size_gb": 4.0, "rto_seconds": None}]  # a drill that failed: no figure to judge
    checks = stats.exposure_checks(drills_)
    assert [(c.target, c.measured, c.passed) for c in checks] == [
        ("warm: exposure window <= 2 s at 1 GB", "0.80 s", True),
        ("pilot-light: exposure window <= 2 s at 1 GB", "never closed", False)]
