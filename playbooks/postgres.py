"""PostgreSQL host steps: create, configure, start, stop, promote, replicate. Each is idempotent."""
from __future__ import annotations

import shlex
import time

from playbooks.host import ensure_dir, run, write_file

BIN = "/usr/lib/postgresql/15/bin"


def is_running(c, pgdata: str) -> bool:
    return run(c, [f"{BIN}/pg_ctl", "status", "-D", pgdata], warn=True).exited == 0


def init_cluster(c, pgdata: str) -> bool:
    """initdb with data checksums unless the cluster exists. True if it created one."""
    if run(c, ["test", "-f", f"{pgdata}/PG_VERSION"], warn=True).ok:
        return False
    ensure_dir(c, pgdata)
    run(c, [f"{BIN}/initdb", "-D", pgdata, "-U", "postgres", "--data-checksums", "-A", "trust", "-E", "UTF8"])
    return True


def configure(c, pgdata: str, settings: dict[str, str], hba: list[str]) -> None:
    """Writes the managed settings to postgresql.auto-like include file and pg_hba.conf.

    A restored or cloned cluster inherits its source's address, port and archive_command, so
    every start rewrites them from the site's own values.
    """
    write_file(c, f"{pgdata}/failover.conf", render_settings(settings))
    write_file(c, f"{pgdata}/pg_hba.conf", "\n".join(hba) + "\n")
    include = "include_if_exists = 'failover.conf'"
    conf = f"{pgdata}/postgresql.conf"
    if not run(c, ["grep", "-qF", include, conf], warn=True).ok:
        c.run(f"echo {shlex.quote(include)} >> {shlex.quote(conf)}", hide=True, in_stream=False)


def render_settings(settings: dict[str, str]) -> str:
    """postgresql.conf lines for the settings, each value quoted."""
    return "".join(f"{key} = {_quote(value)}\n" for key, value in sorted(settings.items()))


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def start(c, pgdata: str, log: str, timeout: int = 60, nice: int = 0) -> None:
    """Starts the cluster unless it runs; `nice` lowers the CPU priority of all its processes."""
    if is_running(c, pgdata):
        return
    prefix = ["nice", "-n", str(nice)] if nice else []
    run(c, [*prefix, f"{BIN}/pg_ctl", "start", "-w", "-t", str(timeout), "-D", pgdata, "-l", log])


def stop(c, pgdata: str, mode: str = "fast", warn: bool = False) -> None:
    """Stops the cluster; a fast shutdown that does not finish in time (a busy machine, a
    walsender waiting on its receiver) becomes an immediate one: crash recovery handles that.

    A postmaster that exits while pg_ctl signals it (or was killed and left its pid file)
    makes pg_ctl fail with "No such process": the cluster is down all the same.
    """
    if not is_running(c, pgdata):
        return
    argv = [f"{BIN}/pg_ctl", "stop", "-w", "-t", "60", "-D", pgdata]
    for attempt in dict.fromkeys((mode, "immediate")):
        if run(c, [*argv, "-m", attempt], warn=True).ok or not is_running(c, pgdata):
            return
    run(c, [*argv, "-m", "immediate"], warn=warn)  # still up after both: report pg_ctl's error


def reload(c, pgdata: str) -> None:
    if is_running(c, pgdata):
        run(c, [f"{BIN}/pg_ctl", "reload", "-D", pgdata])


def psql(c, host: str, port: int, sql: str, db: str = "postgres", warn: bool = False):
    """Runs SQL with psql; returns the invoke Result (stdout unaligned, tuples only)."""
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", host, "-p", str(port), "-U", "postgres", "-d", db, "-c", sql]
    return run(c, argv, warn=warn, timeout=120)


def streaming(c, host: str, port: int, name: str) -> bool:
    """Whether the cluster at host:port streams WAL to the receiver that calls itself `name`."""
    sql = f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
    result = psql(c, host, port, sql, warn=True)
    return result.ok and result.stdout.strip() == "1"


def in_recovery(c, host: str, port: int) -> bool:
    return psql(c, host, port, "SELECT pg_is_in_recovery()").stdout.strip() == "t"


def promote(c, pgdata: str, host: str, port: int, timeout: float = 30) -> float:
    """Promotes a standby (no-op if already primary); returns seconds until it takes writes."""
    started = time.monotonic()
    if not in_recovery(c, host, port):
        return 0.0
    run(c, [f"{BIN}/pg_ctl", "promote", "-w", "-t", str(int(timeout)), "-D", pgdata])
    return time.monotonic() - started


def clone_replica(c, pgdata: str, primary_host: str, primary_port: int, app_name: str) -> bool:
    """Creates a streaming replica with pg_basebackup -R unless pgdata exists. True if created."""
    if run(c, ["test", "-f", f"{pgdata}/PG_VERSION"], warn=True).ok:
        return False
    ensure_dir(c, pgdata)
    conninfo = f"host={primary_host} port={primary_port} user=postgres application_name={app_name}"
    run(c, [f"{BIN}/pg_basebackup", "-D", pgdata, "-d", conninfo, "-X", "stream", "-R", "-c", "fast"], timeout=3600)
    return True
