"""Quorum commit at failover: the WAL that only the other secondary holds is taken first.

Under `replication: quorum` the primary acknowledges a commit once ANY 1 of the warm replica
and the pilot-light's WAL receiver flushed it (infra.data.protection.standby_names), so the
newest acknowledged commits may sit at only one of them. A failover to either secondary first
takes what the other got beyond it:
- to the warm replica (promote): the receiver's segments from the replica's newest one on are
  copied into the replica's pg_wal, which its startup process reads once streaming has ended;
  the promotion waits until it replayed the receiver's last record;
- to the pilot-light (restore): the replica's segments from the receiver's newest one on are
  copied into the stream's directory under their plain names, where the restore's
  restore_command finds them (after the archive).
Positions come from the files themselves (pg_waldump: the start of the last whole record of a
segment), so they are compared the same way on both sides. Everything goes through the Site
seam (SSH, SFTP); a secondary that does not answer is skipped, and the result says so.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from infra.data import walstream
from infra.data.walstream import Segment
from infra.sites.processes import wait_for
from infra.sites.protect import WALSTREAM_PROGRAM
from infra.sites.site import DB_VERSION, PATHS, Site

WALDUMP = f"/usr/lib/postgresql/{DB_VERSION}/bin/pg_waldump"
PG_WAL = f"{PATHS.pgdata}/pg_wal"
RECORD_LSN = re.compile(r"\blsn: ([0-9A-F]+/[0-9A-F]+),")
REPLAY_SECONDS = 60


# ---------------------------------------------------------------- pure decisions

def last_record(waldump_output: str) -> int | None:
    """The start of the last record pg_waldump printed (None: no whole record in the segment)."""
    found = RECORD_LSN.findall(waldump_output)
    return walstream.lsn(found[-1]) if found else None


def newest(names: list[str], size: int) -> Segment | None:
    """The newest WAL segment among file names (the highest timeline, then segment)."""
    segments = [s for s in (Segment.parse(n, size) for n in names) if s]
    return max(segments, key=lambda s: (s.tli, s.segno, not s.partial), default=None)


def to_take(own_last: int | None, other_last: int | None, other: list[Segment], tli: int, size: int) -> list[Segment]:
    """The other side's segments to copy: those of timeline `tli` from the one holding our own
    last record up to the one holding theirs, when their last record lies beyond ours (they then
    hold ours too: records follow each other). Nothing when we know of no record of ours."""
    if other_last is None or own_last is None or other_last <= own_last:
        return []
    first, last = own_last // size, other_last // size
    chosen = {}
    for segment in other:
        if segment.tli == tli and first <= segment.segno <= last:
            if segment.segno not in chosen or chosen[segment.segno].partial:  # a whole file over a .partial
                chosen[segment.segno] = segment
    return [chosen[n] for n in sorted(chosen)]


@dataclass
class Taken:
    """What a failover took from the other secondary (journaled by the promote step)."""

    source: str
    reached: bool
    own_last: str | None = None
    other_last: str | None = None
    segments: tuple[str, ...] = ()
    note: str = ""
    seconds: dict = field(default_factory=dict)  # positions, copy, replay: where the step's time went

    def to_dict(self) -> dict:
        return self.__dict__ | {"segments": list(self.segments)}


# ---------------------------------------------------------------- positions on the hosts

def segment_size(site: Site) -> int:
    """The WAL segment size, from the control file (works whether the cluster runs or not)."""
    out = site.service().run(f"/usr/lib/postgresql/{DB_VERSION}/bin/pg_controldata {PATHS.pgdata} "
                             "| sed -n 's/^Bytes per WAL segment: *//p'", warn=True).stdout.strip()
    return int(out) if out.isdigit() else 16 << 20


def listing(site: Site, directory: str) -> list[str]:
    return site.service().run(f"ls -1 {directory}", warn=True).stdout.split()


def last_record_in(site: Site, directory: str, segment: Segment, size: int) -> int | None:
    """pg_waldump of one segment (a `.partial` is read under its plain name, from a copy)."""
    name, plain = segment.name(size), Segment(segment.segno, segment.tli).name(size)
    if segment.partial:
        command = (f"d=$(mktemp -d) && cp {directory}/{name} $d/{plain} && {{ {WALDUMP} -p $d {plain} {plain} "
                   f"2>/dev/null | tail -n 1; rm -rf $d; }}")
    else:
        command = f"{WALDUMP} -p {directory} {plain} {plain} 2>/dev/null | tail -n 1"
    return last_record(site.service().run(command, warn=True).stdout)


def last_record_from(site: Site, directory: str, segment: Segment, size: int, back: int = 2) -> int | None:
    """The last whole record of `segment`, else of the whole segments before it on its timeline
    (a segment just begun holds none yet)."""
    for step in range(back + 1):
        candidate = segment if step == 0 else Segment(segment.segno - step, segment.tli)
        found = last_record_in(site, directory, candidate, size)
        if found is not None:
            return found
    return None


def newest_record(site: Site, directory: str, size: int, tries: int = 4) -> tuple[Segment | None, int | None]:
    """The newest segment of a directory that holds a whole record, and that record's start.
    pg_wal keeps recycled segments under future names: those hold no record of theirs."""
    segments = sorted((s for s in (Segment.parse(n, size) for n in listing(site, directory)) if s),
                      key=lambda s: (s.tli, s.segno, not s.partial), reverse=True)
    for segment in segments[:tries]:
        found = last_record_in(site, directory, segment, size)
        if found is not None:
            return segment, found
    return None, None


def replica_segment(replica: Site, size: int) -> Segment | None:
    """The replica's newest received segment, named from its received position when it answers."""
    result = replica.psql("SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())", warn=True)
    position = result.stdout.strip() if result.ok else ""
    names = listing(replica, PG_WAL)
    if "/" not in position:
        return None
    segno = max(walstream.lsn(position) - 1, 0) // size  # the segment of its last byte: a boundary ends one
    on_it = [s for s in (Segment.parse(n, size) for n in names) if s and s.segno == segno and not s.partial]
    return max(on_it, key=lambda s: s.tli, default=None)


# ---------------------------------------------------------------- the two directions

def copy_segments(source: Site, source_dir: str, target: Site, target_dir: str, segments: list[Segment],
                  size: int) -> tuple[str, ...]:
    """Each segment from `source` into `target` under its plain name, over SFTP through both Sites.

    Gzipped on the way (a segment is mostly zeros past its last record: 16 MB over SFTP took
    seconds). Written over the target's file in place (the same inode), not beside it: a startup
    process that holds the segment open then reads the new records at once."""
    copied = []
    for segment in segments:
        plain = Segment(segment.segno, segment.tli).name(size)
        packed = source.service().run(f"f=$(mktemp) && gzip -1 -c {source_dir}/{segment.name(size)} > $f && echo $f"
                                      ).stdout.strip()
        try:
            data = source.read(packed)
        finally:
            source.service().run(f"rm -f {packed}", warn=True)
        path, staged = f"{target_dir}/{plain}", f"{target_dir}/.{plain}.failover.gz"
        target.write(staged, data)
        target.service().run(f"gzip -d -c {staged} | dd of={path} bs=1M conv=notrunc,fsync status=none "
                             f"&& chmod 600 {path} && rm -f {staged}")
        copied.append(plain)
    return tuple(copied)


def into_replica(replica: Site, receiver: Site, reachable: bool) -> Taken:
    """Before the warm replica is promoted: the pilot-light receiver's WAL beyond it, replayed."""
    if not reachable:
        return Taken(receiver.name, False, note=f"{receiver.name} does not answer: its WAL is not taken")
    clock = time.monotonic()
    size = segment_size(replica)
    own = replica_segment(replica, size)
    own_last = last_record_from(replica, PG_WAL, own, size) if own else None
    stream = [s for s in (Segment.parse(n, size) for n in listing(receiver, PATHS.wal_stream)) if s]
    _, their_last = newest_record(receiver, PATHS.wal_stream, size)
    taken = Taken(receiver.name, True, _text(own_last), _text(their_last))
    taken.seconds["positions"] = round(time.monotonic() - clock, 3)
    segments = to_take(own_last, their_last, stream, own.tli if own else 0, size)
    if not segments:
        taken.note = "nothing beyond the replica" if own_last is not None else "no record found on the replica"
        return taken
    clock = time.monotonic()
    receiver.supervise(WALSTREAM_PROGRAM, "stop")  # it must not write while it is read
    taken.segments = copy_segments(receiver, PATHS.wal_stream, replica, PG_WAL, segments, size)
    taken.seconds["copy"] = round(time.monotonic() - clock, 3)
    clock = time.monotonic()
    # Without a primary to stream from, the startup process reads pg_wal (after the archive); a
    # walreceiver on a half-open connection would hold it until wal_receiver_timeout. The archive
    # is skipped meanwhile (each look-up asks every repository): with the receiver's WAL the
    # replica holds every acknowledged commit. The promote step keeps or removes the file.
    # Its retries come every 100 ms instead of 5 s while it waits.
    replica.service().run(f"touch {PATHS.archive_off}")
    replica.psql(["ALTER SYSTEM SET primary_conninfo = ''", "ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'",
                  "SELECT pg_reload_conf()"])
    try:
        wait_for(lambda: _replayed_past(replica, their_last), REPLAY_SECONDS,
                 f"{replica.name} to replay {receiver.name}'s WAL up to {walstream.lsn_text(their_last)}", 0.1)
    finally:  # the site's settings file names them again
        replica.psql(["ALTER SYSTEM RESET primary_conninfo", "ALTER SYSTEM RESET wal_retrieve_retry_interval"])
    taken.seconds["replay"] = round(time.monotonic() - clock, 3)
    taken.note = f"replayed up to {walstream.lsn_text(their_last)}"
    return taken


def into_stream(receiver: Site, replica: Site, reachable: bool) -> Taken:
    """Before the pilot-light is restored: the warm replica's WAL beyond the receiver's, in the
    stream's directory (the receiver is stopped first: it must not overwrite them)."""
    if not reachable:
        return Taken(replica.name, False, note=f"{replica.name} does not answer: its WAL is not taken")
    receiver.supervise(WALSTREAM_PROGRAM, "stop")
    size = segment_size(receiver)
    own, own_last = newest_record(receiver, PATHS.wal_stream, size)
    theirs = replica_segment(replica, size)
    their_last = last_record_from(replica, PG_WAL, theirs, size) if theirs else None
    taken = Taken(replica.name, True, _text(own_last), _text(their_last))
    names = [s for s in (Segment.parse(n, size) for n in listing(replica, PG_WAL)) if s]
    segments = to_take(own_last, their_last, names, own.tli if own else 0, size)
    if not segments:
        taken.note = "nothing beyond the WAL stream" if own_last is not None else "no record in the WAL stream"
        return taken
    taken.segments = copy_segments(replica, PG_WAL, receiver, PATHS.wal_stream, segments, size)
    taken.note = f"in {PATHS.wal_stream} up to {walstream.lsn_text(their_last)}"
    return taken


def _replayed_past(site: Site, position: int) -> bool:
    result = site.psql(f"SELECT pg_last_wal_replay_lsn() > '{walstream.lsn_text(position)}'::pg_lsn", warn=True)
    return result.stdout.strip() == "t"


def _text(position: int | None) -> str | None:
    return walstream.lsn_text(position) if position is not None else None
