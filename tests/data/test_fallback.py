"""The asynchronous fallback's decisions with data, and its statements against a fake database."""
from __future__ import annotations

import pytest

from infra.data import fallback
from infra.data.fallback import ASYNC, GO_ASYNC, GO_BACK, SYNC, Observation, State


@pytest.mark.parametrize("setting, names", [
    ("", set()), ("gcp", {"gcp"}), ('"gcp"', {"gcp"}), ('ANY 1 ("gcp", "azure")', {"gcp", "azure"}),
    ("FIRST 1 (gcp, azure)", {"gcp", "azure"}), ("2 (a, b, c)", {"a", "b", "c"}), ("*", {"*"}),
    ("any 1 (gcp)", {"gcp"})])
def test_the_standby_names_of_every_form_of_the_setting(setting, names):
    assert fallback.standby_names(setting) == names


def test_a_listed_standby_streaming_is_connected_an_unlisted_one_is_not():
    assert fallback.connected('ANY 1 ("gcp", "azure")', ["azure"])
    assert not fallback.connected('"gcp"', ["azure"])
    assert fallback.connected("*", ["anyone"]) and not fallback.connected("*", [])


def look(now, streaming=(), holding=True, held_since=None, setting='ANY 1 ("gcp", "azure")') -> Observation:
    return Observation(now, setting, list(streaming), holding, now if held_since is None else held_since)


def test_it_goes_asynchronous_only_after_the_bounded_time_with_every_standby_gone_and_the_lease_held():
    state = State()
    assert fallback.decide(state, look(0.0, ["gcp"]), after=5) is None and state.gone_since is None
    assert fallback.decide(state, look(1.0), after=5) is None and state.gone_since == 1.0
    assert fallback.decide(state, look(5.9), after=5) is None  # not yet
    assert fallback.decide(state, look(6.0, holding=False), after=5) is None  # the lease does not hold
    assert fallback.decide(state, look(6.0), after=5) == GO_ASYNC


def test_a_primary_cut_off_from_everything_never_goes_asynchronous():
    """Its standbys and its stores went at once: its last held round started before they went."""
    state = State()
    fallback.decide(state, look(10.0, held_since=9.5), after=5)
    for now in (12.0, 15.0, 16.0):  # the lease still runs (it has not run out yet), but no round held since
        assert fallback.decide(state, look(now, held_since=9.5), after=5) is None


def test_a_standby_back_or_the_lease_lost_ends_the_asynchronous_mode():
    state = State(mode=ASYNC, saved_setting='ANY 1 ("gcp", "azure")')
    assert fallback.decide(state, look(1.0, setting=""), after=5) is None
    assert fallback.decide(state, look(2.0, ["azure"], setting=""), after=5) == GO_BACK
    assert fallback.decide(state, look(3.0, holding=False, setting=""), after=5) == GO_BACK


def test_a_primary_without_synchronous_standbys_is_left_alone():
    state = State()
    assert fallback.decide(state, look(0.0, setting=""), after=0) is None
    assert fallback.decide(state, look(100.0, setting=""), after=0) is None and state.mode == SYNC


class Database:
    """Answers the fallback's statements like PostgreSQL would, and records them."""

    def __init__(self, setting: str, streaming: str = "", auto: str = ""):
        self.setting, self.streaming, self.auto, self.statements = setting, streaming, auto, []

    def __call__(self, sql: str) -> str:
        self.statements.append(sql)
        if sql == fallback.LOOK:
            return f"{self.setting}|{self.streaming}"
        if sql == fallback.AUTO_VALUE:
            return self.auto
        return ""


def test_the_setting_is_read_and_restored_as_it_was(capsys):
    db, messages = Database('ANY 1 ("gcp", "azure")'), []
    running = fallback.Fallback(db, messages.append, after=2)
    running.round(0.0, True, 0.0)
    assert running.round(2.5, True, 2.0) == GO_ASYNC
    assert "ALTER SYSTEM SET synchronous_standby_names = ''" in db.statements
    assert running.status()["mode"] == ASYNC and "asynchronous" in messages[-1]
    db.setting, db.streaming = "", "gcp"
    assert running.round(3.0, True, 3.0) == GO_BACK
    assert db.statements[-2] == "ALTER SYSTEM RESET synchronous_standby_names"  # conf.d's value comes back
    assert running.status()["mode"] == SYNC and "gcp streams again" in messages[-1]


def test_a_value_set_with_alter_system_is_put_back_rather_than_reset():
    db = Database('"gcp"', auto='"gcp"')
    running = fallback.Fallback(db, lambda m: None, after=1)
    running.round(0.0, True, 0.0)
    assert running.round(1.5, True, 1.0) == GO_ASYNC
    db.setting, db.streaming = "", "gcp"
    running.round(2.0, True, 2.0)
    assert db.statements[-2] == "ALTER SYSTEM SET synchronous_standby_names = '\"gcp\"'"
