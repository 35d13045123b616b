"""Claimed epochs: epoch N belongs to the run that created N's claim object, by a conditional
create, in a majority of the sites' stores. docs/claims.md has the protocol and its proof.

A claim object is `.failover/claims/epoch-<N, six digits>.json` holding the claimant (target,
run id, host), the time (for people only: no decision reads a clock) and the names of the
stores claimed over. Claim objects are never replaced or deleted, so once a majority of the
stores hold one claimant's object for N, N has that winner forever, and no other run can
assemble a majority of its own (two majorities of one set share a store).

`claim()` claims one epoch and says how it went; `claim_epoch()` is what a runbook calls: it
returns the won Claim, moves on to N+1 only when N can never be won by anyone (a settled
split), and raises ClaimLost (naming the winner) or ClaimUndecided otherwise.
"""
from __future__ import annotations

import json
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

from infra import secrets
from infra.data.storage import Store, StoreError, UncertainWrite

PREFIX = ".failover/claims/"
VERSION = 1
SETTLE = 5.0  # seconds a deferring claimer waits for the claimer ahead of it to reach a majority
POLL = 0.05
ATTEMPTS = 3  # epochs claim_epoch tries when each one ends split

WON, LOST, SUPERSEDED, SPLIT, UNDECIDED = "won", "lost", "superseded", "split", "undecided"


def key(epoch: int) -> str:
    return f"{PREFIX}epoch-{epoch:06d}.json"


@dataclass(frozen=True)
class Claimant:
    """Who claims: the run (its journal's id), the site it fails over to, and the host it runs on."""

    target: str
    run_id: str
    host: str = field(default_factory=socket.gethostname)
    # A failback (a planned switchover) names the primary it switches away from: that primary
    # keeps serving until the run itself stops its writes, so its lease ignores this claim.
    switchover_from: str = ""

    def __str__(self) -> str:
        return f"run {self.run_id} (target {self.target}, host {self.host})"


@dataclass(frozen=True)
class Holding:
    """What one store says about an epoch: who holds its claim object there, if anyone."""

    site: str
    holder: Claimant | None = None  # None: no claim object there, or the store was not reached
    created: bool = False  # this call created the object
    error: str = ""  # why the store could not be asked (redacted); "" when it answered
    unread: bool = False  # never asked (the claimer deferred before reaching it)

    @property
    def open(self) -> bool:
        """The store may still take anyone's claim: empty, unreachable or unread."""
        return self.holder is None


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming `epoch`: won, lost (winner named), superseded (a later epoch is
    claimed), split (nobody can ever win it) or undecided (nobody has a majority yet)."""

    epoch: int
    claimant: Claimant
    outcome: str
    holdings: tuple[Holding, ...]
    winner: Claimant | None = None
    later: int | None = None  # the later epoch found claimed (superseded)

    @property
    def won(self) -> bool:
        return self.outcome == WON

    @property
    def majority(self) -> int:
        return len(self.holdings) // 2 + 1

    def held_by(self, run_id: str) -> list[str]:
        return [h.site for h in self.holdings if h.holder and h.holder.run_id == run_id]

    def describe(self) -> str:
        """Where each store stands, for messages: `aws: run 1a2b (target gcp, host x); gcp: empty; ...`."""
        parts = []
        for h in self.holdings:
            state = str(h.holder) if h.holder else "not asked" if h.unread else h.error or "no claim"
            parts.append(f"{h.site}: {state}")
        return "; ".join(parts)


class ClaimError(RuntimeError):
    """A claim that did not make this run the epoch's owner. `claim` says how every store stood."""

    def __init__(self, message: str, claim: Claim | None = None):
        super().__init__(secrets.redact(message))
        self.claim = claim


class ClaimLost(ClaimError):
    """Another run owns the epoch (or a later one): `winner` says which; this run must stop."""

    @property
    def winner(self) -> Claimant | None:
        return self.claim.winner if self.claim else None


class ClaimUndecided(ClaimError):
    """Nobody owns the epoch yet, and someone still could: run again when the stores answer."""


class ClaimConflict(ClaimError):
    """A claim object that this run cannot weigh: made over another set of stores, by the same
    run for another target, or not a claim at all. Majorities over different sets need not
    overlap, so the claim stops until an operator sees to it."""


# --- claiming -----------------------------------------------------------------------------------

def claim_epoch(stores: Iterable[Store], epoch: int, claimant: Claimant, attempts: int = ATTEMPTS,
                settle: float = SETTLE) -> Claim:
    """Claims `epoch` for `claimant` and returns the won Claim (its epoch may be higher: see
    below). Raises ClaimLost when another run owns it, ClaimUndecided when nobody does yet but
    somebody still could, ClaimConflict for a claim it cannot weigh.

    A split epoch (every store answered or is accounted for, and no claimant can reach a
    majority any more) can never have a winner, so the next epoch is tried, `attempts` in all.
    """
    stores = list(stores)
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for candidate in range(epoch, epoch + attempts):
        result = claim(stores, candidate, claimant, settle)
        if result.won:
            return result
        if result.outcome in (LOST, SUPERSEDED):
            raise ClaimLost(_lost_message(result), result)
        if result.outcome == UNDECIDED:
            raise ClaimUndecided(_undecided_message(result), result)
    raise ClaimUndecided(f"epochs {epoch}-{epoch + attempts - 1} all split between concurrent runs, none won "
                         f"by anyone ({result.describe()}): run again; if it keeps happening, fewer runs at once",
                         result)


def claim(stores: Iterable[Store], epoch: int, claimant: Claimant, settle: float = SETTLE) -> Claim:
    """Claims one epoch. Stores are tried one at a time in one order (by site name) shared by
    every claimer; a claimer that meets another's claim defers: it stops creating and reads
    the stores until that claimer has a majority, or `settle` seconds pass, after which it
    creates in every store still open (the claimer ahead may have died). A claimer that
    won also checks that no later epoch is claimed (SUPERSEDED if one is)."""
    round_ = _Round(_ordered(stores), epoch, claimant)
    deferred = round_.create(round_.stores, defer=True)
    result = round_.decide()
    if deferred and result.outcome == UNDECIDED:
        result = round_.settle(time.monotonic() + settle)
        if result.outcome == UNDECIDED:  # the claimer ahead stalled: claim what is still open
            round_.create([s for s in round_.stores if round_.holdings[s.name].open], defer=False)
            result = round_.decide()
    return round_.check_later(result) if result.won else result


@dataclass
class _Round:
    """One claimer's claim of one epoch: the stores in order, and what each one holds."""

    stores: list[Store]
    epoch: int
    claimant: Claimant
    holdings: dict[str, Holding] = field(default_factory=dict)

    def __post_init__(self):
        self.names = [s.name for s in self.stores]  # in the order claimed
        self.store_set = sorted(self.names)
        self.holdings = {name: Holding(name, unread=True) for name in self.names}
        self.body = json.dumps({"version": VERSION, "epoch": self.epoch, "target": self.claimant.target,
                                "run_id": self.claimant.run_id, "host": self.claimant.host, "stores": self.store_set,
                                "switchover_from": self.claimant.switchover_from,
                                "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")},
                               indent=1).encode()

    def create(self, stores: Sequence[Store], defer: bool) -> bool:
        """Creates the claim in each store in turn; with `defer`, stops at the first store that
        another claimer holds, and returns True."""
        for store in stores:
            holding = self.holdings[store.name] = self._create(store)
            if defer and holding.holder and holding.holder.run_id != self.claimant.run_id:
                return True
        return False

    def settle(self, deadline: float) -> Claim:
        """Reads the open stores until the epoch is decided or the deadline passes, less often
        as it waits (many deferring claimers must not crowd out the one they wait for)."""
        pause = POLL
        while True:
            self.read([s for s in self.stores if self.holdings[s.name].open])
            result = self.decide()
            if result.outcome != UNDECIDED or time.monotonic() >= deadline:
                return result
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def decide(self) -> Claim:
        """The outcome from what the stores hold; an open store could still go to anyone."""
        ordered = tuple(self.holdings[n] for n in self.names)
        majority = len(self.names) // 2 + 1
        counts = Counter(h.holder.run_id for h in ordered if h.holder)
        holders = {h.holder.run_id: h.holder for h in ordered if h.holder}
        if counts[self.claimant.run_id] >= majority:
            return Claim(self.epoch, self.claimant, WON, ordered, self.claimant)
        for run_id, count in counts.items():
            if count >= majority:
                return Claim(self.epoch, self.claimant, LOST, ordered, holders[run_id])
        # A claimant with no store yet could still take all the open ones: hence the 0.
        best, open_ = max(counts.values(), default=0), sum(1 for h in ordered if h.open)
        return Claim(self.epoch, self.claimant, SPLIT if best + open_ < majority else UNDECIDED, ordered)

    def check_later(self, won: Claim) -> Claim:
        """A won epoch whose next epoch is claimed somewhere is superseded: a later run took this
        one for stalled and went on, and its claim outranks this one."""
        later = _Round(self.stores, self.epoch + 1, self.claimant)
        later.read(self.stores)
        for holding in later.holdings.values():
            if holding.holder and holding.holder.run_id != self.claimant.run_id:
                return Claim(won.epoch, won.claimant, SUPERSEDED, won.holdings, holding.holder, won.epoch + 1)
        return won

    def read(self, stores: Sequence[Store]) -> None:
        if stores:
            with ThreadPoolExecutor(max_workers=len(stores)) as pool:
                for store, holding in zip(stores, pool.map(self._read, stores)):
                    self.holdings[store.name] = holding

    def _create(self, store: Store) -> Holding:
        for attempt in range(2):  # a write of unknown outcome is created again: that finds out
            try:
                existing = store.create(key(self.epoch), self.body)
            except UncertainWrite as error:
                if attempt:
                    return Holding(store.name, error=secrets.redact(str(error)))
                continue
            except (StoreError, secrets.MissingSecret) as error:
                return Holding(store.name, error=secrets.redact(str(error)))
            if existing is None:
                return Holding(store.name, self.claimant, created=True)
            return Holding(store.name, self._holder(store, existing))
        raise AssertionError("not reached")

    def _read(self, store: Store) -> Holding:
        try:
            existing = store.read(key(self.epoch))
        except (StoreError, secrets.MissingSecret) as error:
            return Holding(store.name, error=secrets.redact(str(error)))
        return Holding(store.name, self._holder(store, existing) if existing is not None else None)

    def _holder(self, store: Store, data: bytes) -> Claimant:
        """The claimant in a claim object; ClaimConflict for one this run cannot weigh."""
        where = f"site {store.name}'s claim for epoch {self.epoch} ({key(self.epoch)})"
        try:
            doc = json.loads(data)
            holder = Claimant(str(doc["target"]), str(doc["run_id"]), str(doc["host"]))
            stores, claimed = sorted(doc["stores"]), int(doc["epoch"])
        except (ValueError, KeyError, TypeError):
            raise ClaimConflict(f"{where} is not a claim object the toolkit wrote: inspect it by hand. The epoch "
                                "cannot be won while it is there: claim a later epoch") from None
        if claimed != self.epoch:
            raise ClaimConflict(f"{where} names epoch {claimed}: inspect the store by hand")
        if stores != self.store_set:
            raise ClaimConflict(f"{where} was made over stores {', '.join(stores)}, this run claims over "
                                f"{', '.join(self.store_set)}: the runs read different Inventories, and majorities of "
                                "different sets need not overlap. Pull the Inventory (`failover inventory pull`) "
                                "and run again")
        if holder.run_id == self.claimant.run_id and holder.target != self.claimant.target:
            raise ClaimConflict(f"{where} holds this run ({holder.run_id}) for target {holder.target}, but it now "
                                f"claims for {self.claimant.target}: resume it with its own target, or start a "
                                "new run")
        return holder


def _ordered(stores: Iterable[Store]) -> list[Store]:
    stores = sorted(stores, key=lambda s: s.name)
    names = [s.name for s in stores]
    if not stores:
        raise ValueError("a claim needs at least one store")
    if len(set(names)) != len(names):
        raise ValueError(f"a claim needs each site's store once; given {', '.join(names)}")
    return stores


# --- reading ------------------------------------------------------------------------------------

def holdings(stores: Iterable[Store], epoch: int) -> list[Holding]:
    """Who holds epoch `epoch`'s claim in each store (for status and preflight), claiming nothing."""
    round_ = _Round(_ordered(stores), epoch, Claimant("", "", ""))
    round_.read(round_.stores)
    return [round_.holdings[n] for n in round_.names]


def highest(stores: Iterable[Store]) -> int:
    """The highest epoch with a claim object in any reachable store (0 if none): a new run claims
    above it. Lists through each store's `list`; unreachable stores are skipped."""
    top = 0
    for store in stores:
        try:
            keys = store.list(PREFIX)
        except (StoreError, secrets.MissingSecret):
            continue
        top = max(top, highest_in(keys))
    return top


def switchover_from(data: bytes) -> str:
    """The primary a claim object's run switches away from by plan (a failback), or ""."""
    try:
        return str(json.loads(data).get("switchover_from") or "")
    except (ValueError, AttributeError):
        return ""


def highest_in(keys: Iterable[str]) -> int:
    """The highest epoch among claim object keys (`key()`), 0 if none: one store's listing."""
    top = 0
    for name in keys:
        stem = name.rpartition("/")[2]
        if stem.startswith("epoch-") and stem.endswith(".json") and stem[6:-5].isdigit():
            top = max(top, int(stem[6:-5]))
    return top


# --- messages -----------------------------------------------------------------------------------

def _lost_message(result: Claim) -> str:
    winner = result.winner
    if result.outcome == SUPERSEDED:
        return (f"epoch {result.epoch} was won by this {result.claimant}, but epoch {result.later} is already "
                f"claimed by {winner}: that later run outranks this one, which stops before changing anything")
    sites = ", ".join(result.held_by(winner.run_id)) if winner else "?"
    return (f"epoch {result.epoch} belongs to {winner}, which holds its claim in {sites} "
            f"(a majority of {len(result.holdings)} stores): this {result.claimant} stops before changing "
            "anything. Follow that run (`failover journal`), or once it is over run again for a later epoch")


def _undecided_message(result: Claim) -> str:
    unreachable = [h.site for h in result.holdings if h.error]
    fix = ("run again once the unreachable stores answer (a resumed run recognises its own claim)" if unreachable
           else "run again (a resumed run completes its own claim)")
    return (f"epoch {result.epoch} has no owner yet: no run holds its claim in {result.majority} of "
            f"{len(result.holdings)} stores, and one still could ({result.describe()}); this {result.claimant} "
            f"stops before changing anything: {fix}. If a store is gone for good and the runs that hold a "
            f"part of epoch {result.epoch} are dead, claim epoch {result.epoch + 1} explicitly: it outranks them")
