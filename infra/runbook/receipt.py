"""The fence receipt: where the old primary is reachable, proof from its own WAL that it
committed nothing after it was fenced.

Once `fence` has stopped the old primary's PostgreSQL, nothing can append to its WAL. The
receipt reads, on its host (as the service user, with PostgreSQL's own tools):
- `pg_controldata`: the cluster's state and its latest checkpoint. A clean (fast) stop ends
  the WAL with a shutdown checkpoint: that record is the fence point. A cluster that was
  killed ends where its WAL ends, which pg_waldump finds;
- `pg_waldump` from the fence point to the end of the WAL: every record there, none of which
  may be a COMMIT (after a clean stop, the shutdown checkpoint is the only one);
- `pg_waldump -r Transaction` back from the fence point, a segment at a time, for the last
  COMMIT record: the old primary's last committed LSN, its transaction id and time.

The decisions (parsing, the fence point, what counts as a commit) are plain functions over the
tools' output; `take()` runs the tools.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from infra.data.walstream import lsn, lsn_text  # one LSN arithmetic for the toolkit
from infra.errors import FailoverError
from infra.sites.site import DB_VERSION, PATHS

BIN = f"/usr/lib/postgresql/{DB_VERSION}/bin"
BACK_SEGMENTS = 8  # how far back the last commit is looked for: 128 MB of WAL at the default segment size
LSN = r"[0-9A-F]+/[0-9A-F]+"
RECORD = re.compile(rf"^rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(\d+), lsn: ({LSN}), prev \S+, desc: (.*)$")
CLEAN = "shut down"


@dataclass(frozen=True)
class Record:
    """One WAL record as pg_waldump prints it."""

    lsn: str
    rmgr: str
    xid: int
    desc: str

    @property
    def commit(self) -> bool:
        """A COMMIT or COMMIT_PREPARED record: a transaction became durable here."""
        return self.rmgr == "Transaction" and self.desc.startswith("COMMIT")

    @property
    def kind(self) -> str:
        return self.desc.split(" ", 1)[0].rstrip(";")

    @property
    def at(self) -> str | None:
        """A commit record's time, as the WAL holds it."""
        found = re.match(r"COMMIT(?:_PREPARED)? (?:\d+: )?(\d{4}-\d\d-\d\d [\d:.]+ \S+)", self.desc)
        return found.group(1).rstrip(";") if found else None


def parse_records(text: str) -> list[Record]:
    records = []
    for line in text.splitlines():
        found = RECORD.match(line.strip())
        if found:
            rmgr, xid, position, desc = found.groups()
            records.append(Record(lsn_text(lsn(position)), rmgr, int(xid), desc))
    return records


def wal_end(text: str) -> str | None:
    """Where pg_waldump stopped reading: the last LSN of its closing error ("invalid record
    length at 0/1516850: wanted 24, got 0" is the end of the WAL written)."""
    errors = [line for line in text.splitlines() if "error" in line and "WAL record" in line]
    found = re.findall(LSN, errors[-1]) if errors else []
    return found[-1] if found else None


def parse_controldata(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class Receipt:
    """The old primary's last commit and the WAL after its fence point."""

    site: str
    host: str
    state: str  # pg_controldata's "Database cluster state"
    timeline: int
    fence_lsn: str  # the shutdown checkpoint, or the end of the WAL of a cluster that was killed
    last_commit: Record | None
    after: tuple[Record, ...] = ()  # every record from the fence point to the end of the WAL
    searched_from: str = ""  # how far back the last commit was looked for

    @property
    def commits_after(self) -> list[Record]:
        fence = lsn(self.fence_lsn)
        return [r for r in self.after if r.commit and lsn(r.lsn) >= fence]

    @property
    def clean(self) -> bool:
        return self.state == CLEAN

    def to_dict(self) -> dict:
        last = self.last_commit
        return {"site": self.site, "host": self.host, "state": self.state, "timeline": self.timeline,
                "fence_lsn": self.fence_lsn,
                "fence_point": "shutdown checkpoint" if self.clean else "end of the WAL (not stopped cleanly)",
                "last_commit_lsn": last.lsn if last else None, "last_commit_xid": last.xid if last else None,
                "last_commit_at": last.at if last else None,
                "records_after_fence": [f"{r.lsn} {r.rmgr} {r.kind}" for r in self.after],
                "commits_after_fence": len(self.commits_after), "searched_from": self.searched_from}

    def summary(self) -> str:
        last = self.last_commit
        committed = (f"last commit at LSN {last.lsn} (xid {last.xid}, {last.at})" if last
                     else f"no commit in its WAL back to {self.searched_from}")
        point = "its shutdown checkpoint" if self.clean else "the end of its WAL (it was not stopped cleanly)"
        after = ", ".join(f"{r.rmgr} {r.kind}" for r in self.after) or "none"
        return (f"fence receipt: {self.site} (host {self.host}) fenced at LSN {self.fence_lsn}, {point}, "
                f"timeline {self.timeline}; {committed}; WAL records after the fence point: {after}; "
                f"COMMIT records after it: {len(self.commits_after)}")


def judge(site: str, host: str, control: dict[str, str], after: list[Record], end: str | None,
          last_commit: Record | None, searched_from: str) -> Receipt:
    """The receipt from the tools' output: `after` is pg_waldump's records from the latest
    checkpoint (clean) or its REDO point (killed) to `end`, the end of the WAL."""
    state = control.get("Database cluster state", "unknown")
    clean = state == CLEAN
    fence = control["Latest checkpoint location"] if clean else (end or control["Latest checkpoint location"])
    return Receipt(site, host, state, int(control.get("Latest checkpoint's TimeLineID", "1")), fence, last_commit,
                   tuple(after) if clean else (), searched_from)


def problems(receipt: Receipt) -> list[str]:
    if receipt.commits_after:
        shown = ", ".join(f"{r.lsn} (xid {r.xid})" for r in receipt.commits_after[:5])
        return [f"site {receipt.site}: host {receipt.host}'s WAL holds {len(receipt.commits_after)} COMMIT "
                f"record(s) after its fence point {receipt.fence_lsn}: {shown}. Something started and wrote to "
                "it after it was fenced: stop it by hand, find who writes to it, then run again"]
    return []


# ---------------------------------------------------------------- on the host

def take(site: str, host: str, run: Callable[[str], tuple[bool, str]]) -> Receipt | str:
    """The receipt of a stopped cluster, or why there is none. `run` runs a command on the
    host as the service user and returns (ok, stdout and stderr together)."""
    ok, text = run(f"{BIN}/pg_controldata -D {PATHS.pgdata}")
    if not ok:
        return f"no receipt: pg_controldata found no cluster ({text.strip()[-200:]})"
    control = parse_controldata(text)
    timeline = control.get("Latest checkpoint's TimeLineID", "1")
    dump = f"{BIN}/pg_waldump -p {PATHS.pgdata}/pg_wal -t {timeline}"
    if control.get("Database cluster state") == CLEAN:
        start = control["Latest checkpoint location"]
        _, text = run(f"{dump} -s {start} 2>&1 | head -n 1000")
        after, end = parse_records(text), wal_end(text)
        last, searched = _last_commit(run, dump, start, int(control.get("Bytes per WAL segment", 16 << 20)))
    else:  # killed: everything from the REDO point may hold commits; the fence is where the WAL ends
        redo = control["Latest checkpoint's REDO location"]
        _, text = run(f"{dump} -r Transaction -s {redo} 2>&1 | tail -n 5")
        after, end = [], wal_end(text)
        commits = [r for r in parse_records(text) if r.commit]
        last, searched = (commits[-1], redo) if commits else _last_commit(
            run, dump, redo, int(control.get("Bytes per WAL segment", 16 << 20)))
    return judge(site, host, control, after, end, last, searched)


def _last_commit(run: Callable[[str], tuple[bool, str]], dump: str, before: str,
                 segment: int) -> tuple[Record | None, str]:
    """The last COMMIT record before `before`, looked for a segment at a time, back to
    BACK_SEGMENTS segments or the oldest segment kept."""
    end = lsn(before)
    start = (end - 1) - (end - 1) % segment  # the segment that holds the record just before `before`
    searched = before
    for _ in range(BACK_SEGMENTS):
        if start < segment:  # segment 0 is never written
            break
        ok, text = run(f"{dump} -r Transaction -s {lsn_text(start)} -e {lsn_text(end)} 2>&1 | tail -n 3")
        if "could not find file" in text or "could not open file" in text:
            break  # recycled, or of an older timeline
        searched = lsn_text(start)
        commits = [r for r in parse_records(text) if r.commit]
        if commits:
            return commits[-1], searched
        end, start = start, start - segment
    return None, searched


def require_none_after(receipt: Receipt) -> None:
    found = problems(receipt)
    if found:
        raise FailoverError("; ".join(found))
