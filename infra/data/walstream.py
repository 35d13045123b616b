"""Where the pilot-light's pg_receivewal starts after the primary changed: WAL names, timelines, the plan.

pg_receivewal picks its start from its own directory alone: the highest segment there (ties
go to the higher timeline), the next one on that timeline when the file is complete, the start
of a `.partial` one. After a failover or a failback that goes wrong in two ways:
- the directory holds segments of the old timeline past the point where the new primary's
  history forked from it (WAL that the new primary never had, or a `.partial` that a restore
  completed): it asks for the old timeline past the fork, and the server refuses ("requested
  starting point ... is not in this server's history");
- the new timeline starts exactly at a segment boundary (the last record before the promotion
  was a segment switch): it asks for the next segment on the old timeline, which the server
  answers with the next timeline instead of a stream ("could not send replication command
  START_REPLICATION"), and it retries that for ever.
`plan_start` decides from the files and the server's timeline history: the files past a fork
are moved aside (kept, never deleted), and where pg_receivewal would still start on the wrong
timeline, an empty segment-sized `.partial` on the right one makes it start there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
DIVERGED_DIR = "diverged"  # in the stream's directory: segments past a fork, kept for forensics


def lsn(text: str) -> int:
    """'0/C000000' -> 201326592."""
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL file name: its timeline, its segment number and whether it is pg_receivewal's `.partial`."""

    segno: int
    tli: int
    partial: bool = False

    @classmethod
    def parse(cls, name: str, segment_size: int) -> "Segment | None":
        match = SEGMENT_NAME.match(name)
        if not match:
            return None
        tli, high, low = (int(match.group(i), 16) for i in (1, 2, 3))
        return cls(high * segments_per_id(segment_size) + low, tli, bool(match.group(4)))

    def name(self, segment_size: int) -> str:
        per = segments_per_id(segment_size)
        return f"{self.tli:08X}{self.segno // per:08X}{self.segno % per:08X}" + (".partial" if self.partial else "")


def segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


def parse_history(text: str) -> dict[int, int]:
    """A timeline history file (`<parent tli> <switch point> <reason>` per line) as {tli: the LSN it ends at}."""
    ends = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            ends[int(fields[0])] = lsn(fields[1])
    return ends


@dataclass(frozen=True)
class Timelines:
    """The server's history: its current timeline and where each earlier one ended."""

    current: int
    ends: dict[int, int]

    def end(self, tli: int) -> float:
        return self.ends.get(tli, float("inf")) if tli != self.current else float("inf")

    def known(self, tli: int) -> bool:
        return tli == self.current or tli in self.ends

    def at(self, position: int) -> int:
        """The timeline the server's history has at `position` (a switch point belongs to the next one)."""
        for tli in sorted(self.ends):
            if position < self.ends[tli]:
                return tli
        return self.current


@dataclass(frozen=True)
class StreamStart:
    """What to do in the stream's directory before pg_receivewal starts."""

    move_aside: tuple[str, ...] = ()
    placeholder: str | None = None  # an empty, segment-sized `.partial` to create
    start: str | None = None  # where it will start (segment name), for the report
    reason: str = ""


def _data_end(segment: Segment, timelines: Timelines, size: int) -> int:
    """How far the server's history can use this file: its end (a `.partial` is streamed again
    from its start), cut at the point its timeline ended."""
    end = segment.segno * size if segment.partial else (segment.segno + 1) * size
    return int(min(end, timelines.end(segment.tli)))


def default_start(segments: list[Segment]) -> tuple[int, int] | None:
    """(timeline, segment) pg_receivewal starts from with these files (its FindStreamingStart)."""
    if not segments:
        return None
    high = max(segments, key=lambda s: (s.segno, s.tli, not s.partial))
    return high.tli, high.segno if high.partial else high.segno + 1


def plan_start(names: list[str], timelines: Timelines, size: int, oldest_on_server: int | None = None) -> StreamStart:
    """The moves and the placeholder that make pg_receivewal continue from the newest WAL of its
    directory that lies on the server's history. `oldest_on_server`: the oldest segment the
    server still has; a start before it begins there instead (the archive holds the gap)."""
    segments = [s for s in (Segment.parse(n, size) for n in names) if s]
    stale = [s for s in segments if not timelines.known(s.tli) or s.segno * size >= timelines.end(s.tli)]
    valid = [s for s in segments if s not in stale]
    moves = tuple(s.name(size) for s in sorted(stale))
    if not valid:
        return StreamStart(moves, reason="no WAL on the server's history here: it starts where the server is")
    position = max(_data_end(s, timelines, size) for s in valid)
    segno = position // size
    if oldest_on_server is not None and segno < oldest_on_server:
        segno, position = oldest_on_server, oldest_on_server * size
    wanted = (timelines.at(position), segno)
    start = Segment(segno, wanted[0], True).name(size)
    if default_start(valid) == wanted:
        return StreamStart(moves, None, start, "its own files point at the server's history")
    return StreamStart(moves, start, start, f"the server's timeline {wanted[0]} holds {lsn_text(position)}")
