"""pgBackRest host steps: config, stanza, backup, info, restore. Repositories are numbered alike on every site."""
from __future__ import annotations

import json
import shlex
import time

from playbooks.host import ensure_dir, run, write_file

STANZA = "social"


def install_config(c, path: str, text: str, dirs: list[str]) -> None:
    for directory in dirs:
        ensure_dir(c, directory)
    write_file(c, path, text)


def _argv(config: str, *args: str) -> list[str]:
    return ["pgbackrest", f"--config={config}", f"--stanza={STANZA}", *args]


LOCK_WAIT = 180.0  # seconds a command waits for another pgBackRest process of the stanza


def _waiting_for_lock(c, argv: list[str], timeout: float):
    """Runs a command that takes the stanza's lock, waiting while another pgBackRest process holds
    it (the async archiver, a backup started by the protector): that passes."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        result = run(c, argv, warn=True, timeout=timeout)
        if result.ok or "[050]" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(1)


def stanza_create(c, config: str):
    """Creates the stanza in every configured repository (idempotent in pgBackRest itself)."""
    return _waiting_for_lock(c, _argv(config, "stanza-create"), 120)


def backup(c, config: str, repo: int, kind: str = "full"):
    return _waiting_for_lock(c, _argv(config, f"--repo={repo}", f"--type={kind}", "backup"), 7200)


def info(c, config: str, repo: int) -> tuple[dict | None, str]:
    """The repository's `info --output=json` for the stanza, or (None, error text)."""
    result = run(c, _argv(config, f"--repo={repo}", "--output=json", "info"), warn=True, timeout=60)
    if not result.ok:
        return None, (result.stderr or result.stdout).strip()
    stanzas = json.loads(result.stdout or "[]")
    return (stanzas[0] if stanzas else None), ""


def list_files(c, config: str, repo: int, path: str) -> dict[str, dict] | None:
    """Every file below `path` in the repository (`repo-ls --recurse --output=json`: name -> type,
    size, time), whatever its storage type; None when it cannot be listed."""
    result = run(c, ["pgbackrest", f"--config={config}", f"--repo={repo}", "repo-ls", "--recurse", "--output=json",
                     path], warn=True, timeout=120)
    return json.loads(result.stdout or "{}") if result.ok else None


def restore(c, config: str, repo: int, target_time: str | None = None, archive_off: bool = True,
            process_max: int = 2, restore_command: str | None = None, pg_path: str | None = None):
    """Restores the stanza into pg1-path, or `pg_path` instead (delta: reuses what is already there).

    pgBackRest writes its own restore_command into postgresql.auto.conf; `restore_command`
    replaces it (for example to fall back to a local WAL stream).
    """
    args = [f"--repo={repo}", "--delta", f"--process-max={process_max}"]
    if pg_path:
        args.append(f"--pg1-path={pg_path}")
    if restore_command:
        args.append(f"--recovery-option=restore_command={restore_command}")
    if target_time:
        args += ["--type=time", f"--target={target_time}", "--target-action=promote"]
    else:
        args += ["--type=default"]
    if archive_off:
        args += ["--archive-mode=off"]
    return run(c, _argv(config, *args, "restore"), timeout=7200)


def check(c, config: str):
    return run(c, _argv(config, "check"), warn=True, timeout=120)


def interrupt_archiving(c, config: str, command: str = "archive-push") -> list[int]:
    """Ends the `command` processes (archive-push, or archive-get) started with `config`: one stuck
    retrying a dead object store holds the archive lock, or a standby's recovery, for a minute or
    more (a refused connection is retried); PostgreSQL runs its archive_command or restore_command
    again, and the new ones read the current config. Returns the PIDs signalled.

    Only that command: a backup or restore of the stanza keeps running (`pgbackrest stop --force`
    would end those too, and a runbook's backup right after a failover would fail). Killing the
    restore_command's pgbackrest, not its shell, fails only the look-up: recovery goes on.
    """
    # `archive-pus[h]` matches the processes but not this shell's own command line; only pgbackrest
    # itself is signalled, never the shell PostgreSQL runs it in (a restore_command's shell ended
    # by SIGTERM would end the startup process).
    pattern = f"{command[:-1]}[{command[-1]}]"
    script = (f'for p in $(pgrep -f "{pattern}"); do [ "$(cat /proc/$p/comm 2>/dev/null)" = pgbackrest ] && '
              f'tr "\\0" " " < /proc/$p/cmdline 2>/dev/null | grep -qF -- {shlex.quote(f"--config={config} ")} '
              f'&& kill "$p" 2>/dev/null && echo "$p"; done; true')
    result = run(c, ["sh", "-c", script], warn=True, timeout=60)
    return [int(pid) for pid in result.stdout.split()]
