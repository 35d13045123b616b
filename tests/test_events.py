"""Domain code emits events; the CLI renders them (infra/events.py, infra/cliutil.py)."""
from __future__ import annotations

import threading

from infra import cliutil, events, secrets
from infra.errors import FailoverError


def test_events_reach_every_subscriber_from_any_thread_and_stop_when_unsubscribed():
    seen = []
    with events.subscribed(seen.append):
        events.warn("from the main thread")
        worker = threading.Thread(target=events.warn, args=("from a step's thread",))
        worker.start()
        worker.join()
    events.warn("after unsubscribing")
    assert [e.message for e in seen] == ["from the main thread", "from a step's thread"]
    assert {e.kind for e in seen} == {events.WARNING}


def test_a_broken_handler_does_not_fail_the_run():
    def broken(event):
        raise RuntimeError("renderer bug")

    seen = []
    with events.subscribed(broken), events.subscribed(seen.append):
        events.warn("still delivered")
    assert [e.message for e in seen] == ["still delivered"]


def test_the_cli_renders_warnings_with_secrets_redacted(capsys):
    secrets.remember("hunter2-secret")

    @cliutil.command
    def a_command():
        events.warn("provider ns1 refused key hunter2-secret")

    a_command()
    err = capsys.readouterr().err
    assert "warning:" in err and "***" in err and "hunter2-secret" not in err


def test_the_cli_module_reexports_the_domain_error():
    assert cliutil.FailoverError is FailoverError
