"""A long-lived shell per SSH host: about half a millisecond per command instead of a new SSH session.

Every `Connection.run()` opens a session, and sshd's per-session start costs about 85 ms here
(local-vm.md, "What one command over SSH costs here"). A `HostShell` opens ONE session that
runs `bash --noprofile --norc` (or `sudo -n bash ...` for a root shell) and feeds it commands
on its stdin. It looks like an invoke Context for `.run()`, so playbooks written as
`step(c, ...)` run over it unchanged:

    shell = HostShell(connection)                 # the caller owns the host-key policy
    shell.run("pg_lsclusters", hide=True, warn=True, timeout=5).stdout

The protocol, for each command:

    __hs_cmd='<command, shell-quoted>'; ( eval "$__hs_cmd" ) </dev/null; \
    printf '%s%s %d\\n' A B $?; printf '%s%s' A B >&2; unset __hs_cmd

- The command runs in a subshell, so `exit`, `cd`, `set -e`, traps and `exec` stay inside it,
  as with Fabric's one shell per command. It is eval'd from a quoted string, so a syntax error
  (an unbalanced quote) fails that command with bash's exit 2 instead of swallowing the framing.
- stdin is /dev/null: a command that reads stdin gets EOF at once, and cannot eat the framing
  that follows it on the shell's own stdin.
- The shell then prints a marker (A+B, 128 random bits, new for every command) and the exit
  code on stdout, and the marker on stderr. SSH carries stdout and stderr apart, so each
  stream is cut at its own marker: no temp files, no per-command process beyond the subshell,
  output without a trailing newline comes back as it was, and a stray newline is never added.
  The marker is printed from two halves, so even a command that turns on `set -x` in the
  shell cannot put the whole marker into a stream early.
- The command text travels in a variable: when bash reports a job killed by a signal
  ("Killed  ( eval ... )" on stderr) it shows `"$__hs_cmd"`, never the text, which may hold
  credentials. For the same reason no exception or repr here includes the command.
- The shell runs with job control (`set -m`), so each command is its own process group. On a
  timeout the shell is broken (it is still busy with the command): it is closed, the
  command's process group is killed through a second session (best effort), and the next
  call opens a new shell. A shell that ended between commands is reopened silently; one that
  ends during a command raises `ShellDied`, since the command may or may not have run.

A lock per shell serialises commands (the runbook runs steps in threads); use one HostShell
per concurrent caller to run commands on a host in parallel (they share the SSH connection).

Known limits: output is never echoed (`hide` is accepted and ignored); `in_stream` must be
False or None; a background process that keeps the shell's stdout open (`cmd &` without a
redirect) writes into whatever command runs next, where Fabric would instead wait for it;
bash reads the command text a byte at a time from the pipe, so a command costs about 0.16 s
per MB of its text (put larger payloads in a file through SFTP). The subshell is most of the
cost per command (a fork, about 0.35 ms here; the round trip alone is about 0.2 ms): that is
the price of commands not leaking state into each other.
"""
from __future__ import annotations

import re
import secrets
import select
import shlex
import socket
import threading
import time

import paramiko
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from invoke.runners import Result

CHUNK = 1 << 20
OPEN_TIMEOUT = 30.0
KILL_TIMEOUT = 5.0
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Kills the process group of each job of shell PID (a direct child leading its own group,
# which `set -m` guarantees), then the shell. POSIX sh and /proc only: minimal images lack procps.
# dash's kill takes no `--`, hence "-KILL -$p".
KILL_JOBS = ('for s in /proc/[0-9]*/stat; do read -r line 2>/dev/null < "$s" || continue; '
             'set -- ${{line##*) }}; p=${{s#/proc/}}; p=${{p%/stat}}; '
             '[ "$2" = {pid} ] && [ "$3" = "$p" ] && kill -KILL "-$p"; done; kill -KILL {pid}')


class ShellError(OSError):
    """A host's shell cannot be used. An OSError, so code handling a lost connection handles it."""


class ShellDied(ShellError):
    """The remote shell ended (or its connection dropped) during a command; `result` has the partial output."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class SudoRefused(ShellError):
    """`sudo -n bash` was refused on the host: the SSH user lacks passwordless sudo."""


class ShellResult(Result):
    """An invoke Result that also keeps the raw bytes (`stdout_bytes`, `stderr_bytes`)."""

    def __init__(self, command: str, exited: int, out: bytes, err: bytes, env: dict | None) -> None:
        super().__init__(stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                         encoding="utf-8", command=command, shell="bash", env=env or {}, exited=exited,
                         hide=("stdout", "stderr"))
        self.stdout_bytes, self.stderr_bytes = out, err


class ShellExit(UnexpectedExit):
    """invoke's UnexpectedExit (so `except UnexpectedExit` works) whose text omits the command."""

    def __init__(self, result: Result, where: str) -> None:
        super().__init__(result)
        self.where = where

    def __str__(self) -> str:
        stdout, stderr = self.streams_for_display()
        return (f"a command on {self.where} exited {self.result.exited} (command text withheld: it may "
                f"hold credentials)\n\nStdout:{stdout}\n\nStderr:{stderr}\n")

    def __repr__(self) -> str:
        return f"<ShellExit: {self.where} exited={self.result.exited}>"


class ShellTimedOut(CommandTimedOut):
    """invoke's CommandTimedOut whose text omits the command; the shell it ran in was closed."""

    def __init__(self, result: Result, timeout: float, where: str) -> None:
        super().__init__(result, timeout)
        self.where = where

    def __str__(self) -> str:
        stdout, stderr = self.streams_for_display()
        return (f"a command on {self.where} did not complete within {self.timeout} s; it was killed and "
                f"the shell closed (the next command opens a new one)\n\nStdout:{stdout}\n\nStderr:{stderr}\n")

    def __repr__(self) -> str:
        return f"<ShellTimedOut: {self.where} timeout={self.timeout}>"


class _Ended(Exception):
    """Internal: the channel reached EOF before both markers."""


class _Expired(Exception):
    """Internal: the deadline passed before both markers."""


class HostShell:
    """One long-lived bash on `connection`'s host; `.run()` is a drop-in for Fabric's `c.run()`."""

    def __init__(self, connection, sudo: bool | str = False, open_timeout: float = OPEN_TIMEOUT) -> None:
        """`sudo`: False for the login user's shell, True for root's, or a user name (`sudo -n -u`)."""
        self.connection = connection
        self.sudo = sudo
        self.open_timeout = open_timeout
        self.host, self.user, self.port = connection.host, connection.user, connection.port
        self._lock = threading.Lock()
        self._channel: paramiko.Channel | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        return f"<HostShell {self.where}{' open' if self._channel else ''}>"

    @property
    def where(self) -> str:
        who = "root" if self.sudo is True else self.sudo
        return f"{self.user}@{self.host}:{self.port}" + (f" ({who} through sudo -n)" if self.sudo else "")

    @property
    def alive(self) -> bool:
        """Whether a shell is open and has not ended (the next command opens one if not)."""
        return self._channel is not None and not _ended(self._channel)

    @property
    def pid(self) -> int | None:
        """The remote shell's PID while it is open (for diagnostics and tests)."""
        return self._pid if self.alive else None

    # ------------------------------------------------------------------ the Context seam

    def run(self, command: str, hide=True, warn: bool = False, timeout: float | None = None,
            env: dict | None = None, in_stream=False) -> ShellResult:
        """Runs `command` in the shell, as `c.run(command, hide=True, warn=..., timeout=..., env=...)`.

        Raises ShellExit (an UnexpectedExit) on a non-zero exit unless `warn`, ShellTimedOut (a
        CommandTimedOut) after `timeout` seconds whatever `warn` says, as Fabric does, and
        ShellDied if the shell ends during the command. `hide` is ignored: output is never echoed.
        """
        if in_stream not in (False, None):
            raise ValueError(f"HostShell on {self.where} runs commands with stdin from /dev/null; "
                             "in_stream must be False or None")
        frame, marker = _frame(command, env or {})
        with self._lock:
            exited, out, err = self._send(frame, marker, timeout, command, env)
        result = ShellResult(command, exited, out, err, env)
        if not warn and exited != 0:
            raise ShellExit(result, self.where)
        return result

    def close(self) -> None:
        """Ends the shell (not the connection, which the caller owns). Safe from any thread.

        A command running at that moment raises ShellDied in its thread; on the host it runs to
        its end (as with Fabric, closing a channel signals nothing), then the shell exits.
        """
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> "HostShell":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ one exchange

    def _send(self, frame: bytes, marker: bytes, timeout: float | None, command: str, env) -> tuple[int, bytes, bytes]:
        channel = self._ready()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return _exchange(channel, frame, marker, deadline)
        except _Expired:
            out, err = self._partial_of(channel)
            self._abandon(channel, kill=True)
            raise ShellTimedOut(ShellResult(command, -1, out, err, env), timeout, self.where) from None
        except (_Ended, OSError, ValueError, EOFError, paramiko.SSHException) as error:
            out, err = self._partial_of(channel)
            status = channel.exit_status if channel.exit_status_ready() else "unknown"
            self._abandon(channel, kill=False)
            raise ShellDied(f"the shell on {self.where} ended during a command (exit status {status}, "
                            f"{type(error).__name__}); the command may or may not have run, and the next "
                            "command opens a new shell", ShellResult(command, -1, out, err, env)) from None

    def _ready(self) -> paramiko.Channel:
        """The open shell, opening one if there is none or the last one ended between commands."""
        channel = self._channel
        if channel is not None and not _ended(channel):
            _discard_pending(channel)
            return channel
        if channel is not None:
            self._abandon(channel, kill=False)
        self._channel = self._open()
        return self._channel

    def _open(self) -> paramiko.Channel:
        self.connection.open()
        try:
            channel = self.connection.client.get_transport().open_session(timeout=self.open_timeout)
            channel.exec_command(_shell_command(self.sudo))
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ShellError(f"could not open a shell session on {self.where}: {error}") from None
        frame, marker = _handshake()
        try:
            self._pid, _, _ = _exchange(channel, frame, marker, time.monotonic() + self.open_timeout)
        except (_Ended, _Expired, OSError, EOFError, paramiko.SSHException):
            _, err = self._partial_of(channel)
            channel.close()
            raise self._open_failure(channel, err.decode("utf-8", "replace").strip()) from None
        return channel

    def _open_failure(self, channel: paramiko.Channel, stderr: str) -> ShellError:
        status = channel.exit_status if channel.exit_status_ready() else "unknown"
        said = f" ({stderr.splitlines()[-1]})" if stderr else ""
        if self.sudo:
            who = "root" if self.sudo is True else self.sudo
            return SudoRefused(
                f"sudo -n refused a {who} shell on {self.host} for user {self.user} (exit status {status}){said}: "
                f"grant {self.user} passwordless sudo there (e.g. '{self.user} ALL=(ALL) NOPASSWD:ALL' in "
                f"/etc/sudoers.d/{self.user}), installing sudo first if it is missing")
        return ShellError(f"bash did not start on {self.where} (exit status {status}){said}; "
                          "check that bash is installed and the user's login shell works")

    def _partial_of(self, channel: paramiko.Channel) -> tuple[bytes, bytes]:
        out, err = getattr(channel, "_hostshell_partial", (b"", b""))
        return bytes(out), bytes(err)

    def _abandon(self, channel: paramiko.Channel, kill: bool) -> None:
        """Closes a broken shell; after a timeout also kills the command it is still running."""
        if self._channel is channel:
            self._channel = None
        channel.close()
        if kill and self._pid:
            self._kill(self._pid)
        self._pid = None

    def _kill(self, pid: int) -> None:
        """Best effort, through a second session: the shell itself is busy and now closed."""
        script = KILL_JOBS.format(pid=int(pid))
        command = f"sudo -n sh -c {shlex.quote(script)}" if self.sudo else f"sh -c {shlex.quote(script)}"
        try:
            channel = self.connection.client.get_transport().open_session(timeout=KILL_TIMEOUT)
            channel.exec_command(command)
            deadline = time.monotonic() + KILL_TIMEOUT
            while not channel.exit_status_ready() and time.monotonic() < deadline:  # recv_exit_status never times out
                time.sleep(0.01)
            channel.close()
        except (paramiko.SSHException, OSError, EOFError, AttributeError):
            pass  # the command may run on; the shell it ran in is closed either way


# ---------------------------------------------------------------------- the protocol


def _shell_command(sudo: bool | str) -> str:
    if sudo is True:
        return "exec sudo -n bash --noprofile --norc"
    if sudo:  # another user's shell starts where that user may be: / (the login user's home is private)
        return f"cd / && exec sudo -n -H -u {shlex.quote(sudo)} bash --noprofile --norc"
    return "exec bash --noprofile --norc"


def _marker() -> tuple[str, str]:
    return secrets.token_hex(8), secrets.token_hex(8)


def _frame(command: str, env: dict) -> tuple[bytes, bytes]:
    """The text that runs `command` and then prints the marker; and the marker."""
    a, b = _marker()
    exports = ""
    if env:
        for name in env:
            if not ENV_NAME.match(str(name)):
                raise ValueError(f"environment variable name {name!r} is not a shell identifier")
        assigns = "; ".join(f"export {name}={shlex.quote(str(value))}" for name, value in sorted(env.items()))
        exports = f"__hs_env={shlex.quote(assigns)}; "
        run = '( eval "$__hs_env"; eval "$__hs_cmd" )'
    else:
        run = '( eval "$__hs_cmd" )'
    text = (f"{exports}__hs_cmd={shlex.quote(command)}; {run} </dev/null; "
            f"printf '%s%s %d\\n' {a} {b} $?; printf '%s%s' {a} {b} >&2; unset __hs_cmd __hs_env\n")
    return text.encode(), (a + b).encode()


def _handshake() -> tuple[bytes, bytes]:
    """Turns on job control and reports the shell's PID where a command reports its exit code."""
    a, b = _marker()
    return f"set -m; printf '%s%s %d\\n' {a} {b} $$; printf '%s%s' {a} {b} >&2\n".encode(), (a + b).encode()


def _exchange(channel: paramiko.Channel, frame: bytes, marker: bytes,
              deadline: float | None) -> tuple[int, bytes, bytes]:
    """Sends `frame`, reads both streams up to `marker`; returns (number after it, stdout, stderr).

    Raises _Expired after `deadline`, _Ended on EOF; either way the bytes read so far are left
    on the channel as `_hostshell_partial`.
    """
    out, err = bytearray(), bytearray()
    channel._hostshell_partial = (out, err)
    channel.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
    try:
        channel.sendall(frame)
    except socket.timeout:
        raise _Expired() from None
    out_end = err_end = -1
    out_seen = err_seen = 0
    while True:
        got = False
        if channel.recv_ready():
            out += channel.recv(CHUNK)
            got = True
        if channel.recv_stderr_ready():
            err += channel.recv_stderr(CHUNK)
            got = True
        if got:
            if out_end < 0:
                out_end, out_seen = _find(out, marker, out_seen)
            if err_end < 0:
                err_end, err_seen = _find(err, marker, err_seen)
            if out_end >= 0 and err_end >= 0:
                line_end = out.find(b"\n", out_end)
                if line_end >= 0:
                    number = int(out[out_end + len(marker):line_end])
                    return number, bytes(out[:out_end]), bytes(err[:err_end])
            continue
        if _ended(channel):  # an exited shell prints no marker, even if its command's output still flows
            raise _Ended()
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise _Expired()
        # At most a second: a close() from another thread must not leave this waiting forever.
        select.select([channel], [], [], 1.0 if wait is None else min(wait, 1.0))


def _ended(channel: paramiko.Channel) -> bool:
    return channel.closed or channel.eof_received or channel.exit_status_ready()


def _find(buffer: bytearray, marker: bytes, seen: int) -> tuple[int, int]:
    """Where `marker` starts in `buffer` (or -1), searching only what is new since `seen`."""
    at = buffer.find(marker, max(0, seen - len(marker)))
    return at, len(buffer)


def _discard_pending(channel: paramiko.Channel) -> None:
    """Drops output that arrived between commands (a background process's), so it is not misread."""
    while channel.recv_ready():
        channel.recv(CHUNK)
    while channel.recv_stderr_ready():
        channel.recv_stderr(CHUNK)
