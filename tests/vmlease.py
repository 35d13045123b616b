"""What the VM tests of the lease share: the protector's state on a VM, whether its PostgreSQL
runs, a poll with a deadline, and a canary that writes to one app's address from the host."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.appclient import APP_PORT

STATE = "var/lib/postgresql/failover/lease-state.json"
PGDATA = "var/lib/postgresql/15/main"


def host_state(vm) -> dict:
    """The protector's lease state in the VM (infra/data/replicator.save_state), {} if none yet."""
    try:
        return json.loads((vm.root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def postmaster_alive(vm) -> bool:
    try:
        pid = int((vm.root / PGDATA / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists() and os.readlink(f"/proc/{pid}/root") == str(vm.root)


def wait(condition, seconds: float, what: str, every: float = 0.1):
    """The first true value of `condition()` within `seconds`, else AssertionError naming `what`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {seconds} s")


class Canary:
    """Numbered posts to one address at a time, from the host; every 201 is an acknowledged write
    (the drill's canary, infra/drill/canary.py, goes through DNS instead)."""

    def __init__(self, address: str):
        self.address, self.seq = address, 0
        self.acks: list[dict] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Canary":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            sent = time.monotonic()
            body = json.dumps({"canary_seq": self.seq, "body": "lease"}).encode()
            request = urllib.request.Request(f"http://{self.address}:{APP_PORT}/posts", body,
                                             {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    doc = json.loads(reply.read())
                self.acks.append({"seq": self.seq, "site": doc["site"], "epoch": doc["epoch"], "sent": sent,
                                  "acked": time.monotonic()})
            except (urllib.error.URLError, OSError, ValueError):
                self.failures += 1
            time.sleep(0.05)
