"""The primary's lease: it renews an object in every store, and fences itself when it cannot.

docs/lease.md has the protocol, its proof and its timings. In short:
- the protector on the primary's host writes `.failover/lease.json` (holder site, epoch, round
  number, length, its wall-clock time for people) into every store about every second, and
  after each write lists the claim objects in that store (infra/data/claims.py);
- a round *holds* when a majority of the stores took the write and none of them lists a claim
  for an epoch above the holder's. The lease then lasts LENGTH from the round's start, on the
  holder's own monotonic clock;
- the holder fences itself GUARD before that end, unless a later round held; at once when any
  store lists a higher claim. A fenced holder never holds again by itself;
- a failover claims its epoch first (at a majority), then waits LENGTH + WAIT_MARGIN on its own
  monotonic clock before it takes writes (`wait_seconds`), unless it fenced the old primary
  directly. Any round that did not see the claim wrote to a store of the claim's majority before
  the claim was created there, so it started before the claim ended: the old primary is fenced
  before the wait ends. No decision compares two hosts' clocks; only their rates.

The top of this module is the decisions, as plain functions over data; `Holder` below runs
them on the host, one thread per store (a store that hangs holds only its own thread) and a
watchdog thread that decides and fences whatever the renewals do.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from infra import secrets
from infra.data import claims
from infra.data.storage import MissingKey, Store, StoreError

KEY = ".failover/lease.json"
VERSION = 1
# Seconds; docs/lease.md explains the choice from the renewal rounds measured on the VMs.
LENGTH = 8.0  # a held round keeps the lease this long from its start
GUARD = 2.0  # the holder fences this much before the end: the fence's own time and clock drift
RENEW_EVERY = 1.0  # one round per second
ROUND_TIMEOUT = 3.0  # a store that has not answered a round by then counts as not renewed
WAIT_MARGIN = 0.5  # a failover waits LENGTH + this after its claim (drift of its clock, polls)
WATCH_EVERY = 0.1  # how often the watchdog decides
REFENCE_EVERY = 1.0  # an unconfirmed fence is tried again this often
UNCONFIRMED = ("could not confirm", "fence failed")  # how replicator.fence_database / Holder say so

HELD, FENCED, STARTING = "held", "fenced", "starting"


# ---------------------------------------------------------------- objects

@dataclass(frozen=True)
class Lease:
    """The lease object in one store. `renewed_at` is the holder's wall clock, for people and
    for `status` only: no decision compares it with another host's clock."""

    holder: str
    epoch: int
    seq: int
    length: float = LENGTH
    renewed_at: float = 0.0
    state: str = HELD  # held, or fenced (the holder's last word where it could still write)
    reason: str = ""

    def to_bytes(self) -> bytes:
        return json.dumps({"version": VERSION, **asdict(self)}, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Lease":
        doc = json.loads(data)
        return cls(str(doc["holder"]), int(doc["epoch"]), int(doc["seq"]), float(doc["length"]),
                   float(doc.get("renewed_at", 0.0)), str(doc.get("state", HELD)), str(doc.get("reason", "")))


@dataclass(frozen=True)
class Answer:
    """One store's part of one round: did it take the write, the highest claim it lists."""

    site: str
    renewed: bool = False
    claimed: int = 0  # the highest epoch with a claim object there (0: none, or not listed)
    error: str = ""  # why not (redacted); "no answer within N s" for a store still busy
    seconds: float | None = None  # the write plus the listing, when it answered


@dataclass(frozen=True)
class Round:
    """One renewal round: when it started (holder's monotonic clock) and what each store said."""

    seq: int
    started: float
    answers: tuple[Answer, ...]

    @property
    def renewed(self) -> list[str]:
        return [a.site for a in self.answers if a.renewed]

    def higher_claim(self, epoch: int) -> Answer | None:
        """The store listing the highest claim above `epoch`, if any does."""
        above = [a for a in self.answers if a.claimed > epoch]
        return max(above, key=lambda a: a.claimed) if above else None

    def holds(self, epoch: int) -> bool:
        """A majority took the write, and no store lists a higher claim."""
        return len(self.renewed) >= majority(len(self.answers)) and self.higher_claim(epoch) is None

    def describe(self) -> str:
        return "; ".join(f"{a.site}: " + ("renewed" if a.renewed else a.error or "not renewed") for a in self.answers)


# ---------------------------------------------------------------- decisions

def majority(stores: int) -> int:
    return stores // 2 + 1


def stores(inventory) -> list[Store]:
    """The stores that count for the lease and for claims: every site's, then every witness's.
    Holder and claimer must count over this same set (claims.md, Safety)."""
    return [Store(s) for s in [*inventory.sites, *inventory.witnesses]]


def expires(last_held: float | None, started: float, length: float = LENGTH, guard: float = GUARD) -> float:
    """When the holder must be fenced (monotonic): GUARD before the end of its last held round;
    a holder that has not held yet counts from its own start (see docs/lease.md, Restarts)."""
    return (last_held if last_held is not None else started) + length - guard


@dataclass(frozen=True)
class Verdict:
    fence: bool
    reason: str = ""
    why: str = ""  # "lease" | "claim": for status and metrics


def verdict(epoch: int, latest: Round | None, last_held: float | None, started: float, now: float,
            length: float = LENGTH, guard: float = GUARD) -> Verdict:
    """Fence or not, from the latest round and when the last held round started.

    A higher claim anywhere fences at once: a failover is under way. Otherwise the lease ends
    `expires()`; the reason names how many stores the latest round reached."""
    if latest is not None:
        above = latest.higher_claim(epoch)
        if above is not None:
            return Verdict(True, f"a higher epoch is claimed: epoch {above.claimed} in {above.site}'s store "
                                 f"(this primary holds epoch {epoch})", "claim")
    if now < expires(last_held, started, length, guard):
        return Verdict(False)
    if latest is None:
        return Verdict(True, f"lost the lease: no renewal round ended within {length - guard:.0f} s", "lease")
    since = "never held" if last_held is None else f"last held {now - last_held:.1f} s ago"
    return Verdict(True, f"lost the lease at {len(latest.answers) - len(latest.renewed)} of {len(latest.answers)} "
                         f"stores (renewed at {len(latest.renewed)}, a majority is {majority(len(latest.answers))}; "
                         f"{since}): {latest.describe()}", "lease")


def wait_seconds(claimed_at: float, now: float, length: float = LENGTH, margin: float = WAIT_MARGIN) -> float:
    """How long a failover that claimed its epoch at `claimed_at` still waits before taking
    writes (both times on its own clock): the old primary is fenced by then."""
    return max(0.0, claimed_at + length + margin - now)


# ---------------------------------------------------------------- reading (status, runbook)

@dataclass(frozen=True)
class Seen:
    """A store's lease object as a reader found it."""

    site: str
    lease: Lease | None = None
    error: str = ""


def read(stores: Iterable[Store]) -> list[Seen]:
    """Every store's lease object (None where there is none), errors named, in parallel."""
    stores = list(stores)

    def one(store: Store) -> Seen:
        try:
            return Seen(store.name, Lease.from_bytes(store.get(KEY)))
        except MissingKey:
            return Seen(store.name)
        except StoreError as error:
            return Seen(store.name, error=secrets.redact(str(error)))
        except (ValueError, KeyError, TypeError) as error:
            return Seen(store.name, error=f"not a lease object: {error}")
        except secrets.MissingSecret as error:
            return Seen(store.name, error=secrets.redact(str(error)))

    return _parallel(one, stores)


def _parallel(fn, items: Sequence) -> list:
    results = [None] * len(items)

    def run(i):
        results[i] = fn(items[i])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(seen: list[Seen]) -> dict:
    """For `status`: the newest lease (highest epoch, then round) and whether its holder fenced."""
    leases = [s.lease for s in seen if s.lease]
    newest = max(leases, key=lambda l: (l.epoch, l.seq, l.state == FENCED), default=None)
    fenced = next((l for l in leases if newest and l.holder == newest.holder and l.epoch == newest.epoch
                   and l.state == FENCED), None)
    return {"holder": newest.holder if newest else None, "epoch": newest.epoch if newest else None,
            "seq": newest.seq if newest else None, "length": newest.length if newest else None,
            "renewed_at": newest.renewed_at if newest else None,
            "state": (FENCED if fenced else newest.state) if newest else None,
            "reason": fenced.reason if fenced else "",
            "stores": {s.site: (s.error or (f"{s.lease.holder} epoch {s.lease.epoch} round {s.lease.seq} "
                                            f"{s.lease.state}" if s.lease else "no lease")) for s in seen}}


# ---------------------------------------------------------------- the holder, on the host

class Lane:
    """One store's worker: at most one write-and-list in flight, so a store that hangs holds
    one thread and misses its rounds, and never delays the others or the watchdog."""

    def __init__(self, store: Store, holder: str = ""):
        self.store, self.holder = store, holder
        self._busy = threading.Lock()
        self._planned: dict[int, bool] = {}  # claim epoch -> a planned switchover away from the holder

    def highest_claim(self) -> int:
        """The highest claim this store lists, passing over a failback's claim that switches away
        from the holder (read once per epoch): that run stops the holder's writes itself."""
        listed = sorted({claims.highest_in([k]) for k in self.store.list(claims.PREFIX)} - {0}, reverse=True)
        for epoch in listed:
            if epoch not in self._planned:
                data = self.store.get(claims.key(epoch))
                self._planned[epoch] = bool(self.holder) and claims.switchover_from(data) == self.holder
            if not self._planned[epoch]:
                return epoch
        return 0

    def start(self, lease: Lease, timeout: float, wait: float = 0.0) -> "_Pending":
        """Writes `lease` and lists the claims, on a thread of its own; with `wait`, waits that
        long for a write still in flight to end first (the fenced last word)."""
        pending = _Pending(self.store.name, timeout)
        acquired = self._busy.acquire(timeout=wait) if wait > 0 else self._busy.acquire(blocking=False)
        if not acquired:
            pending.finish(Answer(self.store.name, error="the previous round has not ended there (store hangs)"))
            return pending
        threading.Thread(target=self._renew, args=(lease, pending), daemon=True).start()
        return pending

    def _renew(self, lease: Lease, pending: "_Pending") -> None:
        clock = time.monotonic()
        try:
            self.store.put(KEY, lease.to_bytes())
            claimed = self.highest_claim()
            pending.finish(Answer(self.store.name, True, claimed, seconds=round(time.monotonic() - clock, 4)))
        except (StoreError, secrets.MissingSecret, OSError) as error:
            pending.finish(Answer(self.store.name, error=secrets.redact(str(error))[:300]))
        except Exception as error:  # a bug in one store's path must not end the lane
            pending.finish(Answer(self.store.name, error=f"{error.__class__.__name__}: {error}"[:300]))
        finally:
            self._busy.release()


class _Pending:
    def __init__(self, site: str, timeout: float):
        self.site, self.timeout = site, timeout
        self._done = threading.Event()
        self.answer: Answer | None = None

    def finish(self, answer: Answer) -> None:
        self.answer = answer
        self._done.set()

    def result(self, deadline: float) -> Answer:
        self._done.wait(max(0.0, deadline - time.monotonic()))
        if self.answer is None:
            return Answer(self.site, error=f"no answer within {self.timeout:.0f} s")
        return self.answer


@dataclass
class HolderState:
    """What the holder knows, shared between its renewal and watchdog threads (and status)."""

    holder: str
    epoch: int
    started: float
    seq: int = 0
    last_held: float | None = None
    latest: Round | None = None
    state: str = STARTING
    reason: str = ""
    why: str = ""
    fenced_at: float | None = None
    fence_detail: str = ""
    rounds: list[float] = field(default_factory=list)  # the last rounds' durations, for the log and metrics

    def to_dict(self) -> dict:
        latest = self.latest
        return {"holder": self.holder, "epoch": self.epoch, "state": self.state, "reason": self.reason,
                "why": self.why, "seq": self.seq, "fence": self.fence_detail,
                "held_for": None if self.last_held is None else round(self.last_held + LENGTH - time.monotonic(), 2),
                "renewed": latest.renewed if latest else [], "stores": len(latest.answers) if latest else None,
                "last_round": latest.describe() if latest else "",
                "round_seconds": self.rounds[-20:]}


class Holder:
    """Renews the lease for `holder` at `epoch` in `stores` and calls `fence(reason)` once, from
    the watchdog thread, when the verdict says so. `holding()` tells others (the async fallback)
    whether the latest round held."""

    def __init__(self, holder: str, epoch: int, stores: Iterable[Store], fence: Callable[[Verdict], str],
                 log: Callable[[str], None] = print, length: float = LENGTH, guard: float = GUARD,
                 every: float = RENEW_EVERY, round_timeout: float = ROUND_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[HolderState], None] = lambda s: None):
        self.lanes = [Lane(s, holder) for s in stores]
        self.fence, self.log, self.clock, self.on_change = fence, log, clock, on_change
        self.length, self.guard, self.every, self.round_timeout = length, guard, every, round_timeout
        self.state = HolderState(holder, epoch, clock())
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- the threads

    def start(self) -> None:
        threading.Thread(target=self._renewing, daemon=True, name="lease-renew").start()
        threading.Thread(target=self._watching, daemon=True, name="lease-watch").start()

    def stop(self) -> None:
        self._stop.set()

    def _renewing(self) -> None:
        while not self._stop.is_set() and self.state.state != FENCED:
            began = self.clock()
            self.renew_once()
            self._stop.wait(max(0.0, self.every - (self.clock() - began)))

    def _watching(self) -> None:
        while not self._stop.is_set() and not (self.state.state == FENCED and self.confirmed):
            self.decide()
            self._stop.wait(WATCH_EVERY)

    @property
    def confirmed(self) -> bool:
        """The fence said it stopped the database (not "could not confirm", not an error)."""
        return bool(self.state.fence_detail) and not self.state.fence_detail.startswith(UNCONFIRMED)

    # -- one round, one decision (the tests call these directly)

    def renew_once(self) -> Round:
        with self._lock:
            self.state.seq += 1
            seq = self.state.seq
        started = self.clock()
        lease = Lease(self.state.holder, self.state.epoch, seq, self.length, time.time())
        pending = [lane.start(lease, self.round_timeout) for lane in self.lanes]
        deadline = time.monotonic() + self.round_timeout
        answers = tuple(p.result(deadline) for p in pending)
        result = Round(seq, started, answers)
        with self._lock:
            if self.state.state == FENCED:
                return result
            self.state.latest = result
            self.state.rounds = (self.state.rounds + [round(self.clock() - started, 4)])[-100:]
            was = self.state.state
            if result.holds(self.state.epoch):
                self.state.last_held = started
                self.state.state = HELD
            if was != self.state.state:
                self.log(f"lease of {self.state.holder} at epoch {self.state.epoch}: held "
                         f"({len(result.renewed)} of {len(answers)} stores, round {seq})")
        self.on_change(self.state)
        return result

    def decide(self) -> Verdict:
        with self._lock:
            if self.state.state == FENCED:
                again = not self.confirmed and self.clock() - (self.state.fenced_at or 0.0) >= REFENCE_EVERY
                if again:
                    self.state.fenced_at = self.clock()
            else:
                again = None
        if again is not None:  # fenced already: try again while the fence is unconfirmed
            if again:
                self._fence(Verdict(True, self.state.reason, self.state.why), last_word=False)
            return Verdict(True, self.state.reason, self.state.why)
        with self._lock:
            result = verdict(self.state.epoch, self.state.latest, self.state.last_held, self.state.started,
                             self.clock(), self.length, self.guard)
            if not result.fence:
                return result
            self.state.state, self.state.reason, self.state.why = FENCED, result.reason, result.why
            self.state.fenced_at = self.clock()
        self._fence(result, last_word=True)
        return result

    def _fence(self, result: Verdict, last_word: bool) -> None:
        self.log(f"fencing {self.state.holder} (epoch {self.state.epoch}): {result.reason}")
        try:
            self.state.fence_detail = self.fence(result)
        except Exception as error:  # recorded, and tried again every REFENCE_EVERY until confirmed
            self.state.fence_detail = f"fence failed: {error}"
        self.log(f"{self.state.holder} fenced: {self.state.fence_detail}")
        if last_word:
            self._last_word(result)
        self.on_change(self.state)

    def holding(self) -> bool:
        """The latest round held and the lease has not run out: only then may the primary
        commit without a secondary (the async fallback)."""
        with self._lock:
            s = self.state
            return (s.state == HELD and s.latest is not None and s.latest.holds(s.epoch)
                    and self.clock() < expires(s.last_held, s.started, self.length, self.guard))

    def _last_word(self, result: Verdict) -> None:
        """The fenced state into every store that still takes it (best effort, not waited for
        beyond one round): `status` then says why, from the stores alone."""
        lease = Lease(self.state.holder, self.state.epoch, self.state.seq + 1, self.length, time.time(), FENCED,
                      result.reason)
        deadline = time.monotonic() + self.round_timeout
        lanes = _parallel(lambda lane: lane.start(lease, self.round_timeout, wait=self.round_timeout), self.lanes)
        for pending in lanes:
            pending.result(deadline + self.round_timeout)
