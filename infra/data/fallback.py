"""The asynchronous fallback: a primary whose every synchronous standby is gone commits alone,
after a bounded time, and only while it holds its lease (infra/data/lease.py).

Synchronous (or quorum) commit makes every write wait for a secondary. When none is left, every
write hangs. After `after` seconds (the spec's `database.async_after_seconds`) with no standby
of `synchronous_standby_names` streaming, the protector empties that setting, so commits stop
waiting. It does that only while the lease holds, and only once a round that *started after*
the standbys went away has held: a primary that is cut off from everything loses its standbys
and its stores at the same moment, so no round holds after that, and it never goes
asynchronous. As soon as a listed standby streams again, or the lease stops holding, the setting
goes back to what it was. The value is read, never assumed: `sites protect` writes it in conf.d
(a standby's name, or `ANY 1 (…)`), and a failback may set it with ALTER SYSTEM; the fallback
restores the ALTER SYSTEM value it found, or resets it.

The decisions are plain functions over an `Observation`; `Fallback` applies them with psql.
docs/lease.md, Asynchronous fallback, has the trade-off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SYNC, ASYNC = "synchronous", "asynchronous"
AFTER = 5.0  # seconds; the spec's database.async_after_seconds overrides it
GO_ASYNC, GO_BACK = "go asynchronous", "go back"


def standby_names(setting: str) -> set[str]:
    """The standby names in a synchronous_standby_names value: `gcp`, `"gcp"`, `FIRST 1 (a, b)`,
    `ANY 1 ("gcp", "azure")`, `2 (a, b)`; `*` stays `*`; empty for ''."""
    text = setting.strip()
    match = re.match(r'^(?:(?:ANY|FIRST)\s+)?\d+\s*\((.*)\)\s*$', text, re.IGNORECASE)
    inner = match.group(1) if match else text
    return {part.strip().strip('"') for part in inner.split(",") if part.strip().strip('"')}


def connected(setting: str, streaming: list[str]) -> bool:
    """Does any standby the setting names stream now? (application names from pg_stat_replication)"""
    names = standby_names(setting)
    return "*" in names and bool(streaming) or bool(names & set(streaming))


@dataclass(frozen=True)
class Observation:
    """One look at the primary: its setting, who streams, and its lease."""

    now: float  # monotonic
    setting: str  # SHOW synchronous_standby_names
    streaming: list[str]  # application_name of every pg_stat_replication row in state streaming
    holding: bool  # the lease's latest round held and has not run out
    held_since: float | None  # the start of the latest held round (monotonic)


@dataclass
class State:
    mode: str = SYNC
    gone_since: float | None = None  # when no listed standby streamed any more
    saved: str | None = None  # the ALTER SYSTEM value found when going asynchronous (None: none)
    saved_setting: str = ""  # the effective value then: which standbys bring it back
    reason: str = ""
    changes: int = 0  # how often the mode changed (a metric)
    history: list[str] = field(default_factory=list)


def decide(state: State, seen: Observation, after: float = AFTER) -> str | None:
    """GO_ASYNC, GO_BACK or None; updates `state.gone_since`. Pure: the caller applies the action."""
    if state.mode == ASYNC:
        if seen.streaming and (not state.saved_setting or connected(state.saved_setting, seen.streaming)):
            return GO_BACK
        if not seen.holding:
            return GO_BACK
        return None
    if not standby_names(seen.setting) or connected(seen.setting, seen.streaming):
        state.gone_since = None
        return None
    if state.gone_since is None:
        state.gone_since = seen.now
    fresh = seen.held_since is not None and seen.held_since >= state.gone_since
    if seen.now - state.gone_since >= after and seen.holding and fresh:
        return GO_ASYNC
    return None


def why(seen: Observation, after: float) -> str:
    return (f"no standby of synchronous_standby_names = '{seen.setting}' streamed for {after:.0f} s, and the lease "
            "holds: committing without a secondary")


# ---------------------------------------------------------------- on the host, with psql

AUTO_VALUE = ("SELECT setting FROM pg_file_settings WHERE name = 'synchronous_standby_names' "
              "AND sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1")
LOOK = ("SELECT current_setting('synchronous_standby_names'), coalesce(string_agg(application_name, ','), '') "
        "FROM pg_stat_replication WHERE state = 'streaming'")


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Fallback:
    """Runs `decide` against this host's PostgreSQL through `sql(statement) -> str` (raises on
    failure), logging every change; `status()` is for the protector's state file and metrics."""

    def __init__(self, sql, log, after: float = AFTER):
        self.sql, self.log, self.after = sql, log, after
        self.state = State()

    def look(self, now: float, holding: bool, held_since: float | None) -> Observation:
        setting, streaming = (self.sql(LOOK).split("|") + [""])[:2]
        names = [n for n in streaming.split(",") if n]
        if self.state.mode == ASYNC:
            setting = self.state.saved_setting  # what it was: '' now, by our own hand
        return Observation(now, setting, names, holding, held_since)

    def round(self, now: float, holding: bool, held_since: float | None) -> str | None:
        seen = self.look(now, holding, held_since)
        action = decide(self.state, seen, self.after)
        if action == GO_ASYNC:
            self._go_async(seen)
        elif action == GO_BACK:
            self._go_back(seen)
        return action

    def _go_async(self, seen: Observation) -> None:
        saved = self.sql(AUTO_VALUE).strip() or None
        self.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
        self.sql("SELECT pg_reload_conf()")
        self.state.mode, self.state.saved, self.state.saved_setting = ASYNC, saved, seen.setting
        self.state.reason = why(seen, self.after)
        self._changed(f"asynchronous: {self.state.reason}")

    def _go_back(self, seen: Observation) -> None:
        if self.state.saved is None:
            self.sql("ALTER SYSTEM RESET synchronous_standby_names")
        else:
            self.sql(f"ALTER SYSTEM SET synchronous_standby_names = {quote(self.state.saved)}")
        self.sql("SELECT pg_reload_conf()")
        cause = (f"standby {', '.join(seen.streaming)} streams again" if seen.streaming
                 else "the lease no longer holds")
        self.state.reason = f"back to synchronous_standby_names = '{self.state.saved_setting}': {cause}"
        self.state.mode, self.state.gone_since, self.state.saved = SYNC, None, None
        self._changed(self.state.reason)

    def _changed(self, message: str) -> None:
        self.state.changes += 1
        self.state.history = (self.state.history + [message])[-10:]
        self.log(f"commit mode {message}")

    def status(self) -> dict:
        return {"mode": self.state.mode, "reason": self.state.reason, "changes": self.state.changes,
                "after_seconds": self.after, "saved_setting": self.state.saved_setting}
