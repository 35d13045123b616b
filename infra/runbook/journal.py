"""The failover journal: every step recorded before and after it runs, so a rerun resumes.

One JSON document per run, `<workdir>/journal/current.json` while the run is open and
`<workdir>/journal/<run id>.json` once it completed. It is rewritten atomically after every
event and put into every reachable site's store (`.failover/journal.json`, through
`Storage.put`), so the record of a failover never lives only with one provider; `latest`
reads those copies back when the work directory has none.
"""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from infra.data.storage import Store, StoreError, put_all

STARTED, DONE, FAILED = "started", "done", "failed"
REMOTE_PATH = ".failover/journal.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id() -> str:
    """A run's identity: its journal's id, and the claimant's id in its epoch's claim objects."""
    return uuid.uuid4().hex[:12]


@dataclass
class Event:
    step: str
    status: str  # started | done | failed
    at: str
    detail: dict = field(default_factory=dict)


@dataclass
class Journal:
    """One run of the runbook: what it was asked, its plan, and the events of its steps."""

    run_id: str
    kind: str  # failover | failback
    source: str
    target: str
    epoch: int
    steps: list[str]
    started: str = field(default_factory=now)
    finished: str | None = None
    events: list[Event] = field(default_factory=list)
    plan: dict = field(default_factory=dict)

    @classmethod
    def new(cls, kind: str, source: str, target: str, epoch: int, steps: list[str], plan: dict,
            run_id: str | None = None) -> "Journal":
        """A new run's journal; `run_id` is the id it claimed its epoch with, when it claimed first."""
        return cls(run_id or new_run_id(), kind, source, target, epoch, steps, plan=plan)

    def completed(self) -> set[str]:
        """Steps whose last event is `done`: never run again by a resumed run."""
        last: dict[str, str] = {}
        for event in self.events:
            last[event.step] = event.status
        return {step for step, status in last.items() if status == DONE}

    def pending(self) -> list[str]:
        done = self.completed()
        return [s for s in self.steps if s not in done]

    @property
    def complete(self) -> bool:
        return not self.pending()

    def record(self, step: str, status: str, **detail) -> Event:
        event = Event(step, status, now(), detail)
        self.events.append(event)
        return event

    def timings(self) -> list[dict]:
        """Per step: first start, last end, seconds, status and detail (for reports and `failover journal`)."""
        rows = []
        for step in self.steps:
            events = [e for e in self.events if e.step == step]
            if not events:
                rows.append({"step": step, "status": "pending", "started": None, "ended": None, "seconds": None,
                             "attempts": 0, "detail": {}})
                continue
            starts = [e for e in events if e.status == STARTED]
            ends = [e for e in events if e.status != STARTED]
            first, last = (starts or events)[0], (ends or [None])[-1]
            seconds = None
            if last is not None:
                seconds = round((_parse(last.at) - _parse(first.at)).total_seconds(), 3)
            rows.append({"step": step, "status": last.status if last else STARTED, "started": first.at,
                         "ended": last.at if last else None, "seconds": seconds, "attempts": len(starts),
                         "detail": last.detail if last else {}})
        return rows

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Journal":
        events = [Event(**e) for e in data.get("events", [])]
        return cls(**{**data, "events": events})


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


class JournalStore:
    """Where journals live: the work directory, plus copies in every reachable site's bucket."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir) / "journal"

    @property
    def current_file(self) -> Path:
        return self.dir / "current.json"

    def current(self) -> Journal | None:
        if not self.current_file.exists():
            return None
        return Journal.from_dict(json.loads(self.current_file.read_text()))

    def latest(self, stores: Iterable[Store] = ()) -> Journal | None:
        """The open run if any, else the most recently finished one; else the newest copy in `stores`."""
        current = self.current()
        if current is not None:
            return current
        done = sorted(self.dir.glob("run-*.json"), key=lambda p: p.stat().st_mtime) if self.dir.exists() else []
        return Journal.from_dict(json.loads(done[-1].read_text())) if done else from_stores(stores)

    def save(self, journal: Journal, copies: Iterable[Store] = ()) -> list[str]:
        """Writes the journal atomically and puts it into `copies`; returns their errors (stores that failed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(journal.to_dict(), indent=2)
        _atomic_write(self.current_file, text)
        return put_all(copies, REMOTE_PATH, text.encode())[1] if copies else []

    def close(self, journal: Journal) -> Path:
        """Moves a completed run out of `current.json`, so the next `run` starts a new one."""
        final = self.dir / f"run-{journal.started.replace(':', '')[:17]}-{journal.run_id}.json"
        shutil.move(self.current_file, final)
        return final

    def abandon(self) -> None:
        if self.current_file.exists():
            self.close(self.current())


def from_stores(stores: Iterable[Store]) -> Journal | None:
    """The newest journal copy (by its last event) among the stores that hold one and answer."""
    found = []
    for store in stores:
        try:
            found.append(Journal.from_dict(json.loads(store.get(REMOTE_PATH))))
        except (StoreError, ValueError):  # MissingKey is a StoreError
            continue  # a store that is gone or holds nothing readable has no say
    return max(found, key=lambda j: (j.events[-1].at if j.events else j.started), default=None)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
