"""Running a host step's commands as the service user, locally (invoke) or over SSH (Fabric).

A step is a plain function `step(c, ...)` of an invoke Context; a fabric Connection is one
too, so the same step runs on a cloud VM or in the embedded local cloud. PostgreSQL,
pgBackRest and rclone run as the `postgres` user (initdb and pg_ctl refuse root): when the
context runs as root, commands are wrapped in `runuser`.
"""
from __future__ import annotations

import base64
import shlex

from invoke.exceptions import CommandTimedOut

SERVICE_USER = "postgres"


def as_service(c, argv: list[str]) -> str:
    """The shell command for argv, run as the service user when the context is root."""
    command = shlex.join(argv)
    if _is_root(c):
        return f"runuser -u {SERVICE_USER} -- {command}"
    return command


def run(c, argv: list[str], warn: bool = False, timeout: float | None = None, env: dict | None = None):
    """Runs argv as the service user; raises invoke's UnexpectedExit unless warn=True.

    With warn=True a command that outlives `timeout` comes back as a failed result too.
    """
    try:
        return c.run(as_service(c, argv), hide=True, warn=warn, timeout=timeout, env=env or {}, in_stream=False)
    except CommandTimedOut as error:
        if not warn:
            raise
        result = error.result
        result.exited = 124
        result.stderr = (result.stderr or "") + f"\ntimed out after {timeout}s"
        return result


def _is_root(c) -> bool:
    cached = getattr(c, "_failover_is_root", None)
    if cached is None:
        cached = c.run("id -u", hide=True, in_stream=False).stdout.strip() == "0"
        try:
            c._failover_is_root = cached
        except AttributeError:
            pass
    return cached


def ensure_dir(c, path: str, mode: str = "700") -> None:
    """Creates a directory owned by the service user (idempotent)."""
    owner = f"{SERVICE_USER}:{SERVICE_USER}" if _is_root(c) else ""
    chown = f" && chown {owner} {shlex.quote(path)}" if owner else ""
    c.run(f"mkdir -p {shlex.quote(path)}{chown} && chmod {mode} {shlex.quote(path)}", hide=True, in_stream=False)


def write_file(c, path: str, text: str, mode: str = "600") -> None:
    """Writes a file owned by the service user, through the shell so it works over SSH too.

    The content travels base64-encoded inside the command: invoke feeds in_stream a character
    at a time, which made every config write take seconds.
    """
    quoted = shlex.quote(path)
    payload = base64.b64encode(text.encode()).decode()
    owner = f" && chown {SERVICE_USER}:{SERVICE_USER} {quoted}.tmp" if _is_root(c) else ""
    result = c.run(f"echo {payload} | base64 -d > {quoted}.tmp{owner} && chmod {mode} {quoted}.tmp "
                   f"&& mv {quoted}.tmp {quoted}", hide=True, in_stream=False, warn=True)
    if not result.ok:  # never echo the command: the payload may hold credentials
        raise OSError(f"could not write {path} on {getattr(c, 'host', 'localhost')}: {result.stderr.strip()}")
