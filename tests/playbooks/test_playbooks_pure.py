"""Host steps against scripted command results (invoke's MockContext): the races real hosts have."""
from __future__ import annotations

from invoke import MockContext, Result

from playbooks import postgres

PGDATA = "/srv/pg"
STATUS = f"{postgres.BIN}/pg_ctl status -D {PGDATA}"
STOP = f"{postgres.BIN}/pg_ctl stop -w -t 60 -D {PGDATA} -m"
GONE = Result(exited=1, stderr="pg_ctl: could not send stop signal (PID: 9388): No such process\n")


def context(commands: dict) -> MockContext:
    c = MockContext(run=commands)
    c._failover_is_root = False  # commands as written, no runuser prefix
    return c


def test_stop_succeeds_when_the_postmaster_exits_while_pg_ctl_signals_it():
    c = context({STATUS: [Result(exited=0), Result(exited=3)], f"{STOP} fast": GONE})
    postgres.stop(c, PGDATA)
    assert [call.args[0] for call in c.run.call_args_list] == [STATUS, f"{STOP} fast", STATUS]


def test_a_fast_stop_that_fails_becomes_an_immediate_one():
    timed_out = Result(exited=1, stderr="pg_ctl: server does not shut down\n")
    c = context({STATUS: [Result(exited=0), Result(exited=0), Result(exited=3)],
                 f"{STOP} fast": timed_out, f"{STOP} immediate": Result(exited=0)})
    postgres.stop(c, PGDATA)
    assert f"{STOP} immediate" in [call.args[0] for call in c.run.call_args_list]


def test_stop_reports_a_cluster_that_stays_up():
    """The last attempt runs without warn=True: on a real host pg_ctl's failure raises from there."""
    stuck = Result(exited=1, stderr="pg_ctl: server does not shut down\n")
    c = context({STATUS: Result(exited=0), f"{STOP} fast": stuck, f"{STOP} immediate": stuck})
    postgres.stop(c, PGDATA)
    last = c.run.call_args_list[-1]
    assert last.args[0] == f"{STOP} immediate" and last.kwargs["warn"] is False
