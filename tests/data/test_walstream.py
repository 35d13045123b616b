"""Where pg_receivewal starts after the primary changed (infra/data/walstream.py), decided with data.

The cases are the ones seen on the VMs: a new timeline that starts exactly at a segment
boundary, a failback after a failover to the pilot-light (whose restore completed its
`.partial`), WAL past the fork, and a server that no longer has the segment to start from."""
from __future__ import annotations

from infra.data import walstream
from infra.data.walstream import Segment, Timelines, default_start, lsn, parse_history, plan_start

MB16 = 16 << 20


def name(tli: int, segno: int, partial: bool = False) -> str:
    return Segment(segno, tli, partial).name(MB16)


def test_names_and_positions_round_trip():
    assert name(2, 0x0C) == "00000002000000000000000C"
    assert name(1, 0x100 + 5, True) == "000000010000000100000005.partial"
    assert Segment.parse("000000010000000100000005.partial", MB16) == Segment(0x105, 1, True)
    assert Segment.parse("00000002.history", MB16) is None
    assert lsn("0/C000000") == 0x0C000000 and walstream.lsn_text(0x1_0000_0028) == "1/28"
    assert parse_history("1\t0/C000000\tno recovery target specified\n\n2\t0/160000A0\tx\n") == \
        {1: 0x0C000000, 2: 0x160000A0}


def test_a_timeline_that_starts_at_a_segment_boundary_gets_a_placeholder_on_the_new_timeline():
    """Seen on the VMs: gcp promoted after a segment switch, timeline 2 from 0/C000000; the
    receiver held 9, A, B complete on timeline 1 and asked for C on timeline 1 for ever."""
    files = [name(1, 9), name(1, 0xA), name(1, 0xB)]
    timelines = Timelines(2, {1: 0x0C000000})
    assert default_start([Segment.parse(n, MB16) for n in files]) == (1, 0xC)  # what pg_receivewal did
    start = plan_start(files, timelines, MB16)
    assert start.move_aside == () and start.placeholder == name(2, 0xC, True) == start.start


def test_a_partial_before_the_fork_needs_nothing():
    """The receiver was mid-segment when the primary changed: it streams that segment again on
    the old timeline up to the fork, and the server takes it over to the new one."""
    files = [name(1, 9), name(1, 0xA, True)]
    start = plan_start(files, Timelines(2, {1: 0x0A0034F0}), MB16)
    assert start.placeholder is None and start.move_aside == () and start.start == name(1, 0xA, True)


def test_a_failback_from_the_pilot_light_moves_its_completed_partial_and_starts_on_the_middle_timeline():
    """A failover to azure restored it from its stream (its .partial copied to a whole name, 0/A
    on timeline 1) and it became the primary of timeline 2 at 0/A0034F0; the failback promoted
    aws to timeline 3 at 0/16000A0. pg_receivewal would ask for 0/B on timeline 1."""
    files = [name(1, 9), name(1, 0xA), name(1, 0xA, True), name(1, 0xB)]
    timelines = Timelines(3, {1: 0x0A0034F0, 2: 0x160000A0})
    start = plan_start(files, timelines, MB16)
    assert start.move_aside == (name(1, 0xB),)  # past the fork: never on the new primary's history
    assert start.placeholder == name(2, 0xA, True)


def test_files_of_a_timeline_the_server_never_had_are_moved_aside():
    files = [name(1, 9), name(3, 0xA, True)]
    start = plan_start(files, Timelines(2, {1: 0x0A000100}), MB16)
    assert start.move_aside == (name(3, 0xA, True),)
    assert start.start == name(1, 9 + 1, True) and start.placeholder is None  # 9 complete: pg_receivewal picks A on 1


def test_a_start_the_server_no_longer_has_begins_at_its_oldest_segment():
    start = plan_start([name(1, 3)], Timelines(1, {}), MB16, oldest_on_server=0x20)
    assert start.placeholder == name(1, 0x20, True)


def test_an_empty_directory_is_left_to_pg_receivewal():
    start = plan_start([], Timelines(4, {1: 1, 2: 2, 3: 3}), MB16)
    assert start.placeholder is None and start.start is None and start.move_aside == ()


def test_streaming_on_the_current_timeline_changes_nothing():
    files = [name(2, 0xC), name(2, 0xD, True), "00000002.history"]
    start = plan_start(files, Timelines(2, {1: 0x0C000000}), MB16)
    assert start == walstream.StreamStart((), None, name(2, 0xD, True), start.reason)


def test_the_primarys_timelines_come_in_one_row_whose_history_may_span_lines():
    """protect.TIMELINES_SQL's row as psql -At prints it (infra.sites.protect.parse_timelines)."""
    from infra.sites.protect import parse_timelines

    row = "00000003000000000000000E|16777216|000000000000000A|1\t0/C000000\tno recovery target specified\n" \
          "2\t0/D0000A0\tno recovery target specified\n\n"
    timelines, size, oldest = parse_timelines(row)
    assert (timelines.current, timelines.ends, size) == (3, {1: 0x0C000000, 2: 0x0D0000A0}, MB16)
    assert oldest == 0x0A
    first, _, none = parse_timelines("000000010000000000000003|16777216||\n")
    assert (first.current, first.ends, none) == (1, {}, None)
