"""`failover drill --scenario all` on the local cloud's Debian VMs (127.0.84.x), every site reached
only over SSH: warm, then pilot-light.

One drill run for the module (about 2.5 minutes): each scenario gets a pristine local cloud
(the drill resets the one the previous scenario changed), and the report holds both.
- warm: RTO from cut-off <= TTL + 5 s, no acknowledged write lost;
- pilot-light: RTO <= TTL + 30 s, and the RPO window no larger than the WAL archive lag the
  drill measured (last ack on the old primary minus the commit time of the last transaction
  the restore replayed from the archive).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import failover, remove_unmounted, service_dir

PREFIX = "127.0.84"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


@pytest.fixture(scope="module")
def drill():
    workdir = service_dir("drill")
    reports = workdir / "report"
    result = None
    try:
        result = failover("drill", "--scenario", "all", "--prefix", PREFIX, "--seed-mb", "5", "--json",
                          "--report-dir", str(reports), workdir=workdir, check=False, timeout=1200)
        yield result, reports
    finally:
        failover("local", "down", workdir=workdir, check=False)
        if result is None or result.returncode != 0:  # keep the report and the journal: a failed drill must be explainable
            kept = Path(os.environ.get("FAILOVER_KEEP_FAILED", tempfile.gettempdir())) / f"{workdir.name}-failed"
            shutil.copytree(workdir, kept, ignore=shutil.ignore_patterns("vms"), dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)
            print(f"failed drill kept in {kept}")
        remove_unmounted(workdir)


def scenario(result, name: str) -> dict:
    return next(s for s in json.loads(result.stdout)["scenarios"] if s["name"] == name)


def test_both_scenarios_pass_and_the_exit_code_says_so(drill):
    result, _ = drill
    summary = json.loads(result.stdout)
    missed = {s["name"]: s.get("missed") for s in summary["scenarios"]}  # first, so a failure names the target
    assert result.returncode == 0, (missed, summary, result.stderr[-3000:])
    assert summary["passed"] and [s["name"] for s in summary["scenarios"]] == ["warm", "pilot-light"]
    for s in summary["scenarios"]:
        assert {"name", "rto_seconds", "rpo_seconds", "writes_acked", "writes_lost", "passed", "steps"} <= set(s)
        assert [st["step"] for st in s["steps"]][:2] == ["claim", "preflight"] and all(st["status"] == "done" for st in s["steps"])


def test_warm_loses_nothing_within_ttl_plus_5(drill):
    warm = scenario(drill[0], "warm")
    assert (warm["source"], warm["target"]) == ("aws", "gcp")
    assert warm["writes_lost"] == 0 and warm["writes_acked"] > 20
    assert warm["rto_seconds"] <= warm["dns_ttl"] + 5


def test_pilot_light_restores_within_ttl_plus_30_and_loses_at_most_the_archive_lag(drill):
    pilot = scenario(drill[0], "pilot-light")
    assert (pilot["source"], pilot["target"]) == ("aws", "azure")
    assert pilot["rto_seconds"] <= pilot["dns_ttl"] + 30
    assert pilot["archive_lag_seconds"] is not None and pilot["recovered_to"]
    assert pilot["rpo_seconds"] <= pilot["archive_lag_seconds"]
    promote = next(st for st in pilot["steps"] if st["step"] == "promote")
    assert promote["detail"]["how"].startswith("restored from repo")
    protect = next(st for st in pilot["steps"] if st["step"] == "protect")
    assert "aws" in protect["detail"]["skipped"] and protect["detail"]["repositories"]
    assert pilot["integrity"]["ok"], pilot["integrity"]


def test_report_files_are_written(drill):
    _, reports = drill
    names = {p.name for p in reports.iterdir()}
    assert {"report.json", "report.md", "junit.xml", "timeline-warm.png", "timeline-pilot-light.png"} <= names
    suite = ET.parse(reports / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "WAL archive lag" in (reports / "report.md").read_text()
    assert (reports / "timeline-pilot-light.png").read_bytes()[:4] == b"\x89PNG"
