"""Per-command latency: HostShell vs Fabric's `c.run` vs a new connection per command.

Run as `.venv/bin/python -m tests.sites.bench_shell` (as root: it starts its own sshd on
127.0.60.1, as the integration tests do). Prints median and p90 in milliseconds.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from infra.sites.shell import HostShell
from tests.sites.test_shell import connect, loopback_sshd


def timed(run, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return times


def line(name: str, times: list[float]) -> str:
    p90 = statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else max(times)
    return f"{name:<46} n={len(times):<5} median {statistics.median(times):9.3f} ms   p90 {p90:9.3f} ms"


def new_connection_run(facts: dict) -> None:
    c = connect(facts)
    c.run("true", hide=True, in_stream=False)
    c.close()


def main() -> None:
    with loopback_sshd(users=False) as facts:
        c = connect(facts)
        c.run("true", hide=True, in_stream=False)
        shell = HostShell(c)
        opening = timed(lambda: (shell.close(), shell.run("true")), 20)
        shell.run("true")
        with tempfile.NamedTemporaryFile(dir="/tmp") as blob:
            blob.write(os.urandom(5 * 1024 * 1024))
            blob.flush()
            os.chmod(blob.name, 0o644)
            rows = [
                line("new Fabric connection + c.run('true')", timed(lambda: new_connection_run(facts), 20)),
                line("Fabric c.run('true') on an open connection",
                     timed(lambda: c.run("true", hide=True, in_stream=False), 50)),
                line("HostShell open (session + handshake + 'true')", opening),
                line("HostShell.run('true')", timed(lambda: shell.run("true"), 3000)),
                line("HostShell.run('echo out; echo err >&2')",
                     timed(lambda: shell.run("echo out; echo err >&2"), 2000)),
                line("HostShell.run with env={'A': 'b'}", timed(lambda: shell.run("true", env={"A": "b"}), 2000)),
                line("HostShell.run: 5 MiB of stdout (cat)", timed(lambda: shell.run(f"cat {blob.name}"), 10)),
                line("HostShell.run: a 1 MB command (': <1 MB>')", timed(lambda: shell.run(": " + "x" * 1_000_000), 5)),
            ]
        shell.close()
        c.close()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
