"""Quorum commit's pure decisions: the standby list per mode, which WAL a failover takes from the
other secondary (infra/data/quorum.py), and what `status` says commits wait for."""
from __future__ import annotations

import pytest

from infra.data import protection, quorum
from infra.data.walstream import Segment
from infra.runbook import steps
from infra.status import commit_waits

MB16 = 16 << 20


@pytest.mark.parametrize("mode, expected", [
    ("quorum", 'ANY 1 ("gcp", "azure")'),
    ("sync", '"gcp"'),
    ("async", ""),
])
def test_standby_names_per_mode(mode, expected):
    assert protection.standby_names(mode, ["gcp"], ["azure"]) == expected


def test_quorum_without_a_warm_site_waits_for_the_receiver_and_sync_for_nobody():
    assert protection.standby_names("quorum", [], ["azure"]) == 'ANY 1 ("azure")'
    assert protection.standby_names("sync", [], ["azure"]) == ""
    assert protection.standby_names("quorum", [], []) == ""


WALDUMP = """rmgr: Heap        len (rec/tot):     54/    54, tx:        748, lsn: 0/2F003440, prev 0/2F003408, desc: INSERT off 9
rmgr: Transaction len (rec/tot):     34/    34, tx:        748, lsn: 0/2F003478, prev 0/2F003440, desc: COMMIT 2026-12-04
"""


def test_the_last_record_is_read_from_pg_waldump():
    assert quorum.last_record(WALDUMP) == 0x2F003478
    assert quorum.last_record("") is None


def test_the_other_side_beyond_ours_gives_its_segments_from_ours_to_its_last():
    other = [Segment(0x2E, 5), Segment(0x2F, 5, True), Segment(0x30, 5, True), Segment(0x2F, 4)]
    taken = quorum.to_take(0x2F000028, 0x30000100, other, 5, MB16)
    assert taken == [Segment(0x2F, 5, True), Segment(0x30, 5, True)]  # timeline 5 only, from ours on


def test_a_whole_segment_is_preferred_over_a_partial_of_the_same_one():
    other = [Segment(0x2F, 5, True), Segment(0x2F, 5)]
    assert quorum.to_take(0x2F000028, 0x2F003478, other, 5, MB16) == [Segment(0x2F, 5)]


@pytest.mark.parametrize("own, theirs", [(0x2F003478, 0x2F003478), (0x2F003478, 0x2F000028), (None, 0x30), (0x30, None)])
def test_nothing_is_taken_unless_the_other_side_is_known_to_hold_more(own, theirs):
    assert quorum.to_take(own, theirs, [Segment(0x2F, 5)], 5, MB16) == []


def test_newest_segment_is_on_the_highest_timeline():
    names = ["00000001000000000000000B", "000000020000000000000016.partial", "00000002.history",
             "000000010000000000000020"]
    assert quorum.newest(names, MB16) == Segment(0x16, 2, True)


def test_status_says_whom_commits_wait_for():
    both = commit_waits("quorum", 'ANY 1 ("gcp", "azure")',
                        [("azure", "streaming", "quorum"), ("gcp", "streaming", "quorum")])
    assert both["waits_for"] == "any one of azure, gcp" and not both["blocked"]
    one = commit_waits("quorum", 'ANY 1 ("gcp", "azure")', [("azure", "streaming", "quorum")])
    assert one["candidates"] == ["azure"] and one["waits_for"] == "azure"
    none = commit_waits("quorum", 'ANY 1 ("gcp", "azure")', [("azure", "startup", "potential")])
    assert none["blocked"] and "nobody connected" in none["waits_for"]
    asynchronous = commit_waits("async", "", [("gcp", "streaming", "async")])
    assert asynchronous["candidates"] == [] and "asynchronous" in asynchronous["waits_for"]
    assert not asynchronous["blocked"]


def test_under_quorum_the_plan_names_the_other_secondary_and_keeps_the_archive_until_it_answered():
    promote = steps.choose_source("warm", True, "quorum", [])
    assert promote.kind == steps.PROMOTE and "receiver" in promote.expected_loss and not promote.has_every_commit
    repos = [{"name": "repo2", "index": 2, "site": "gcp", "last_backup": "2026-01-01", "last_archived_wal": "A"}]
    restore = steps.choose_source("pilot-light", False, "quorum", repos)
    assert restore.kind == steps.RESTORE and "warm replica" in restore.expected_loss
