"""Start and stop the local cloud's server processes, each recorded by PID in the work directory.

Only processes started here are ever stopped, and only by the PID recorded when they started
(checked against /proc so a recycled PID is never signalled).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    log: Path


class ProcessTable:
    """PID files under `<workdir>/pids/<name>.pid`, one per started server."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir) / "pids"

    def start(self, name: str, argv: list[str], log: Path, user: str | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Started:
        """Starts argv in its own session (optionally as `user`), logging to `log`."""
        if self.running(name):
            return Started(name, self.pid(name), log)
        if user and os.geteuid() == 0:
            argv = ["runuser", "-u", user, "--", *argv]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.record(name, proc.pid)
        return Started(name, proc.pid, log)

    def record(self, name: str, pid: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{name}.pid").write_text(f"{pid}\n{_start_time(pid)}\n")

    def pid(self, name: str) -> int | None:
        path = self.dir / f"{name}.pid"
        if not path.exists():
            return None
        lines = path.read_text().split()
        pid, started = int(lines[0]), lines[1] if len(lines) > 1 else ""
        return pid if _start_time(pid) == started and started else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.pid")) if self.dir.exists() else []

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; the whole process group it started. True if it ran."""
        pid = self.pid(name)
        (self.dir / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            # Stopped means gone: until the kernel has reaped it, its sockets may still accept.
            wait_for(lambda: not _alive(pid), 5, f"{name} (PID {pid}) to exit after SIGKILL")
        return True

    def pause(self, name: str) -> bool:
        """SIGSTOP to the group it started: it keeps its memory and answers nothing. True if it ran."""
        return self._signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> bool:
        """SIGCONT: a paused server goes on where it stopped (harmless on one that runs)."""
        return self._signal(name, signal.SIGCONT)

    def _signal(self, name: str, sig: int) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        _signal_group(pid, sig)
        return True

    def kill(self, name: str) -> bool:
        """SIGKILL at once: how a drill cuts a site off."""
        pid = self.pid(name)
        (self.dir / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        _signal_group(pid, signal.SIGKILL)
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _start_time(pid: int) -> str:
    """The kernel's start time of a PID: with the PID it identifies one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return ""


def port_answers(address: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on address:port (a server of ours, or one in the way)."""
    with socket.socket() as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((address, port)) == 0


class Laps:
    """Where a step's time went: seconds per named part, each from the end of the one before
    (for the journal; the drill's exposure window is explained by the follow step's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now


def wait_for(check, timeout: float, what: str, interval: float = 0.05):
    """Polls check() until it returns a truthy value; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
