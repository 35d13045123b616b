"""Events that domain code emits and user interfaces render (Chaos Toolkit's RunEventHandler).

Domain code never prints: it calls `warn(...)` (or `emit(Event(...))`), and whoever shows the
run subscribes a handler, as the CLI does for every command (`infra.cliutil.command`). With no
handler subscribed, an event goes nowhere. Handlers are process-wide, not per thread, because
the runbook runs the steps of a stage in threads and their warnings must reach the same UI.
A handler that raises is dropped from that one event, never from the run.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

WARNING = "warning"


@dataclass(frozen=True)
class Event:
    kind: str
    message: str


Handler = Callable[[Event], None]
_handlers: list[Handler] = []
_lock = threading.Lock()


def emit(event: Event) -> None:
    with _lock:
        handlers = list(_handlers)
    for handler in handlers:
        try:
            handler(event)
        except Exception:  # noqa: BLE001 - a broken renderer must not fail a failover
            pass


def warn(message: str) -> None:
    """Something went wrong that the run survives (one DNS provider down, say)."""
    emit(Event(WARNING, message))


@contextmanager
def subscribed(handler: Handler) -> Iterator[None]:
    """`handler` receives every event emitted while the block runs, from any thread."""
    with _lock:
        _handlers.append(handler)
    try:
        yield
    finally:
        with _lock:
            _handlers.remove(handler)
