"""The Site seam: everything the engine does to a site goes through its SSH hosts and its store.

A `Site` is built from the site's `SiteOutputs` plus the operator's SSH settings (a key and a
known_hosts file that the toolkit owns). It gives:
- `connection()`: one Fabric Connection per host, kept open, whose host key must already be in
  the known_hosts file (never trusted on first use);
- `service()` / `root()`: invoke-style contexts on the database host that run each command as
  the PostgreSQL service user or as root through `sudo -n`, so playbooks written as
  `step(c, ...)` run there unchanged, for a non-root `ssh_user` as for any other;
- `paths`: Debian's layout on the database host, the same on cloud VMs and local VMs;
- `reachable()`: an SSH round-trip with a timeout, the one definition of "reachable".

Errors name the site, the host and what to do; nothing has changed on the site when they occur.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from infra.data.pgbackrest import HostPaths
from infra.errors import FailoverError
from infra.data.storage import Store
from infra.sites.contract import SiteOutputs
from infra.sites.layout import (APP_CONFIG, APP_PROGRAM, CONF_DIR, DB_VERSION, PATHS,  # noqa: F401 - the Site seam's names
                                 PROTECTOR_PROGRAM, SERVICE_USER, SETTINGS_FILE, TOOLKIT_DIR)
from infra.sites.shell import HostShell, ShellDied, ShellError, SudoRefused

KNOWN_HOSTS_ENV, KEY_ENV = "FAILOVER_SSH_KNOWN_HOSTS", "FAILOVER_SSH_KEY"
PULLED_KNOWN_HOSTS = "known_hosts"  # in the work directory: the stacks' host keys, from `failover inventory pull`


class SiteError(FailoverError):
    """A site cannot be reached or used; the message names the site, the host and what to do."""


@dataclass(frozen=True)
class SshSettings:
    """The operator's side of SSH: the key it logs in with and the known_hosts it trusts."""

    known_hosts: Path
    key: Path | None = None
    connect_timeout: float = 10.0

    @classmethod
    def from_env(cls, toolkit_dir: Path | None = None, workdir: Path | None = None) -> "SshSettings":
        """FAILOVER_SSH_KNOWN_HOSTS / FAILOVER_SSH_KEY; else the toolkit's own files in `toolkit_dir`
        (the VM cloud's ssh/) when it has them; else the known_hosts that `failover inventory pull`
        wrote beside the Inventory in `workdir`; else ~/.ssh/known_hosts. The key, without
        FAILOVER_SSH_KEY: the VM cloud's, else the user's usual keys."""
        own = toolkit_dir if toolkit_dir and (toolkit_dir / "known_hosts").exists() else None
        pulled = workdir / PULLED_KNOWN_HOSTS if workdir and (workdir / PULLED_KNOWN_HOSTS).is_file() else None
        known = (os.environ.get(KNOWN_HOSTS_ENV) or (own and own / "known_hosts") or pulled
                 or Path.home() / ".ssh" / "known_hosts")
        key = os.environ.get(KEY_ENV) or (own / "id_ed25519" if own else None)
        return cls(Path(known), Path(key) if key else None)


@dataclass
class Site:
    outputs: SiteOutputs
    ssh: SshSettings
    app_port: int = 8080  # the spec's app.port (the Fleet sets it)
    _connections: dict[str, Connection] = field(default_factory=dict, repr=False)
    _shells: dict[tuple, HostShell] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    paths = PATHS  # a class attribute: the same Debian layout on every host

    @property
    def name(self) -> str:
        return self.outputs.site

    @property
    def role(self) -> str:
        return self.outputs.role

    @property
    def address(self) -> str:
        """Where clients reach the database: the Inventory's db_host."""
        return self.outputs.db_host

    @property
    def port(self) -> int:
        return self.outputs.db_port

    @property
    def store(self) -> Store:
        """The site's object store (put/get/list of the toolkit's objects), reached from here."""
        return Store(self.outputs)

    @property
    def db_host(self) -> str:
        """The SSH host that runs the database (the last of ssh_hosts unless db_host is one)."""
        hosts = self.outputs.ssh_hosts
        if not hosts:
            raise SiteError(f"site {self.name}: the inventory lists no ssh_hosts; run `failover inventory pull`")
        return self.outputs.db_host if self.outputs.db_host in hosts else hosts[-1]

    # -------------------------------------------------------- connections

    def connection(self, host: str | None = None) -> Connection:
        """An open Connection to `host` (the database host by default), reused while it lives."""
        host = host or self.db_host
        with self._lock:  # a runbook stage's steps share the connection from their threads
            conn = self._connections.get(host)
            if conn is not None and conn.is_connected:
                return conn
            conn = self._open(host)
            self._connections[host] = conn
            return conn

    def _open(self, host: str) -> Connection:
        user, known = self.outputs.ssh_user, self.ssh.known_hosts
        if not known.is_file():
            raise SiteError(f"site {self.name}: no known_hosts file at {known}; put host {host}'s key there "
                            f"(or point {KNOWN_HOSTS_ENV} at one) so the host can be verified")
        kwargs = {"banner_timeout": self.ssh.connect_timeout, "auth_timeout": self.ssh.connect_timeout}
        if self.ssh.key:  # the toolkit's key only; without one, the user's usual keys and agent
            kwargs.update(key_filename=str(self.ssh.key), look_for_keys=False, allow_agent=False)
        conn = Connection(host, user=user, connect_kwargs=kwargs, connect_timeout=self.ssh.connect_timeout)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.load_host_keys(str(known))
        where = f"site {self.name}: host {host} (ssh {user}@{host}:22)"
        try:
            conn.open()
        except paramiko.BadHostKeyException:
            raise SiteError(f"{where} presented a host key different from the one in {known}: a rebuilt host "
                            "or a man in the middle; verify the new key out of band, then replace its line") from None
        except paramiko.AuthenticationException:
            raise SiteError(f"{where} refused the key {self.ssh.key or '(none)'}: put its public half in "
                            f"~{user}/.ssh/authorized_keys there, or set {KEY_ENV}") from None
        except paramiko.SSHException as error:
            if "not found in known_hosts" in str(error):
                raise SiteError(f"{where}: its host key is not in {known}; add the key the site exported "
                                "(`failover inventory pull` writes the stacks' keys to <workdir>/known_hosts; "
                                "the toolkit never trusts a key on first use)") from None
            raise SiteError(f"{where}: SSH failed ({error}); check that the host is up") from None
        except (OSError, socket.timeout) as error:
            raise SiteError(f"{where} does not answer SSH ({type(error).__name__}: {error}); check that the "
                            "site is up and that the admin CIDRs may reach port 22") from None
        return conn

    def shell(self, user: str, host: str | None = None) -> HostShell:
        """A long-lived shell as `user` on `host`, one per calling thread: a command costs about a
        millisecond instead of a new SSH session and sudo (about 50 ms), and the steps that a
        runbook stage runs in threads never wait for each other's commands."""
        conn = self.connection(host)
        me = threading.current_thread()
        with self._lock:
            key = (conn.host, user, me)
            shell = self._shells.get(key)
            if shell is None or shell.connection is not conn:
                # A shell whose thread ended (a finished runbook stage) serves the next thread:
                # opening one costs an SSH session and sudo (50-65 ms) on the critical path.
                idle = next((k for k, s in self._shells.items()
                             if k[:2] == key[:2] and not k[2].is_alive() and s.connection is conn), None)
                shell = self._shells.pop(idle) if idle else HostShell(conn, sudo=True if user == "root" else user)
                self._shells[key] = shell
            for stale in [k for k, s in self._shells.items() if not k[2].is_alive() and s.connection is not conn]:
                self._shells.pop(stale).close()  # a shell on a connection that was replaced
            return shell

    def close(self) -> None:
        for shell in self._shells.values():
            shell.close()
        self._shells.clear()
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    def reachable(self, timeout: float = 5.0) -> bool:
        """An SSH round-trip (`true`) to the database host within `timeout` seconds."""
        try:
            return self.connection().run("true", hide=True, warn=True, timeout=timeout, in_stream=False).ok
        except (SiteError, CommandTimedOut, OSError, paramiko.SSHException, EOFError):
            self._connections.pop(self.db_host, None)
            return False

    # -------------------------------------------------------- commands as a user

    def service(self, host: str | None = None) -> "AsUser":
        """A context that runs commands as the PostgreSQL service user (playbooks run on it)."""
        return AsUser(self, self.connection(host), SERVICE_USER)

    def root(self, host: str | None = None) -> "AsUser":
        return AsUser(self, self.connection(host), "root")

    def check_sudo(self) -> None:
        """Fails with a clear message unless ssh_user may sudo without a password on the database host."""
        conn = self.connection()
        result = conn.run("sudo -n true", hide=True, warn=True, in_stream=False)
        if not result.ok:
            raise SiteError(f"site {self.name}: host {conn.host}: user {self.outputs.ssh_user} may not run sudo "
                            f"without a password ({result.stderr.strip() or 'sudo -n refused'}); grant it "
                            f"NOPASSWD sudo (/etc/sudoers.d/{self.outputs.ssh_user})")

    def write(self, path: str, text: str | bytes, owner: str = SERVICE_USER, mode: str = "600") -> None:
        """Writes a file on the database host over SFTP, then moves it in place as root.

        The content never appears on a command line (sudo logs those; configs hold passwords):
        it lands 0600 in the SSH user's home first, then `install` gives it owner and mode.
        """
        conn = self.connection()
        with self._lock:
            sftp = conn.sftp()  # one SFTP session per connection, kept by Fabric
            staged = f"{sftp.normalize('.')}/.failover-upload-{secrets.token_hex(8)}"
            with sftp.open(staged, "w") as remote:
                remote.chmod(0o600)
                remote.write(text.encode() if isinstance(text, str) else text)
        command = (f"install -o {owner} -g {owner} -m {mode} {shlex.quote(staged)} {shlex.quote(path)}; "
                   f"status=$?; rm -f {shlex.quote(staged)}; exit $status")
        result = self.root().run(command, warn=True)
        if not result.ok:
            raise SiteError(f"site {self.name}: host {conn.host}: could not write {path}: {result.stderr.strip()}")

    def read(self, path: str) -> bytes:
        """Reads a file of the database host over SFTP: root copies it, 0600 and owned by the SSH
        user, into that user's home first, and removes the copy afterwards."""
        conn = self.connection()
        with self._lock:
            sftp = conn.sftp()
            staged = f"{sftp.normalize('.')}/.failover-download-{secrets.token_hex(8)}"
        user = self.outputs.ssh_user
        copied = self.root().run(f"install -o {shlex.quote(user)} -m 600 {shlex.quote(path)} {shlex.quote(staged)}",
                                 warn=True)
        if not copied.ok:
            raise SiteError(f"site {self.name}: host {conn.host}: could not read {path}: {copied.stderr.strip()}")
        try:
            with self._lock, sftp.open(staged, "rb") as remote:
                remote.prefetch()
                return remote.read()
        finally:
            self.root().run(f"rm -f {shlex.quote(staged)}", warn=True)

    def psql(self, sql: str | list[str], db: str = "postgres", warn: bool = False, port: int | None = None,
             timeout: float = 120):
        """SQL on the database host through its unix socket (peer authentication, no password).

        A list runs each statement on its own (`-c` each, one connection), so statements that
        refuse a transaction block (ALTER SYSTEM) can follow others in one round-trip."""
        argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-p", str(port or self.outputs.db_port), "-d", db]
        for statement in [sql] if isinstance(sql, str) else sql:
            argv += ["-c", statement]
        return self.service().run(shlex.join(argv), warn=warn, timeout=timeout)

    # -------------------------------------------------------- the database's service

    def cluster(self, action: str, mode: str | None = None, timeout: float = 600) -> None:
        """start/stop/restart/promote the cluster: systemd where it runs, pg_ctlcluster elsewhere
        (a chroot). `mode` is pg_ctl's shutdown mode for stop (fast by default, immediate)."""
        unit = f"postgresql@{DB_VERSION}-main"
        if mode or action == "promote":  # systemd knows neither; pg_ctlcluster keeps the unit's state right
            extra = f" -m {mode}" if mode else ""
            command = f"pg_ctlcluster {DB_VERSION} main {action}{extra}"
        else:
            command = (f"if [ -d /run/systemd/system ]; then systemctl {action} {unit}; "
                       f"else pg_ctlcluster {DB_VERSION} main {action}; fi")
        self.root().run(command, timeout=timeout)

    def start_cluster(self, timeout: float = 600) -> None:
        """Starts the cluster and returns once it accepts connections, read-only (a standby, or a
        restore still replaying) or read-write.

        `cluster("start")` goes through pg_ctlcluster, which probes the socket with psql every
        0.5 s until three probes in a row agree: at least 2 s however fast the server is. Here
        pg_ctl waits instead (it reads postmaster.pid every 0.1 s) where no systemd runs (a
        chroot); under systemd the unit starts without blocking and postmaster.pid is read the
        same way, so systemd still owns the cluster.
        """
        unit, log = f"postgresql@{DB_VERSION}-main", f"/var/log/postgresql/postgresql-{DB_VERSION}-main.log"
        pg_ctl = (f"install -d -m 2775 -o {SERVICE_USER} -g {SERVICE_USER} {PATHS.socket_dir} && "
                  f"runuser -u {SERVICE_USER} -- /usr/lib/postgresql/{DB_VERSION}/bin/pg_ctl start -w -s "
                  f"-t {int(timeout)} -D {PATHS.pgdata} -l {log} -o '-c config_file={CONF_DIR}/postgresql.conf'")
        started = self.root().run(f"if [ -d /run/systemd/system ]; then systemctl start --no-block {unit}; "
                                  f"else {pg_ctl} || {{ tail -n 5 {log} >&2; exit 1; }}; fi", timeout=timeout + 30,
                                  warn=True)
        if not started.ok:
            raise SiteError(f"site {self.name}: PostgreSQL did not start on host {self.db_host}: "
                            f"{started.stderr.strip()[-400:]}; see {log} there")
        status = (f"s=$(sed -n 8p {PATHS.pgdata}/postmaster.pid 2>/dev/null); echo \"$s\"; "
                  f"[ -d /run/systemd/system ] && systemctl is-failed --quiet {unit} && echo failed; true")
        deadline = time.monotonic() + timeout
        while True:
            state = self.root().run(status).stdout.split()
            if state and state[0] in ("ready", "standby"):
                return
            if "failed" in state:
                raise SiteError(f"site {self.name}: PostgreSQL did not start on host {self.db_host} "
                                f"(systemd unit {unit} failed): see `journalctl -u {unit}` there")
            if time.monotonic() > deadline:
                raise SiteError(f"site {self.name}: PostgreSQL on host {self.db_host} accepted no connection "
                                f"within {timeout:.0f} s of its start: see {log} there")
            time.sleep(0.05)

    def db_running(self) -> bool:
        """A postmaster runs for the cluster (it may not answer yet): its pid file names a live
        process (one command through the host's shell, not pg_ctlcluster's perl start-up)."""
        check = f'p=$(head -n 1 {PATHS.pgdata}/postmaster.pid 2>/dev/null) && [ -n "$p" ] && kill -0 "$p"'
        return self.service().run(check, warn=True).ok

    def recovery_state(self) -> bool | None:
        """pg_is_in_recovery() on the host, or None when the database does not answer."""
        try:
            result = self.psql("SELECT pg_is_in_recovery()", warn=True)
        except (SiteError, OSError, paramiko.SSHException, EOFError):
            return None
        return {"t": True, "f": False}.get(result.stdout.strip()) if result.ok else None

    # -------------------------------------------------------- the app

    def app_config(self) -> dict:
        """The app's config on its host ({} when it has none)."""
        result = self.service().run(f"cat {APP_CONFIG}", warn=True)
        return json.loads(result.stdout) if result.ok and result.stdout.strip() else {}

    def write_app_config(self, config: dict) -> None:
        self.write(APP_CONFIG, json.dumps(config, indent=2), mode="640")

    def supervise(self, program: str, action: str) -> None:
        """supervisorctl start/stop/restart of one of the toolkit's programs on the database host."""
        result = self.root().run(f"supervisorctl {action} {program}", warn=True, timeout=60)
        # Stopping what is not there is done: no such program, or no supervisord at all (a host
        # given back after a drop runs none until something starts it).
        gone = ("no such process", "refused connection", "no such file") if action == "stop" else ()
        settled = ("ALREADY_STARTED", "NOT_RUNNING") + gone
        if not result.ok and not any(word in result.stdout + result.stderr for word in settled):
            raise SiteError(f"site {self.name}: host {self.db_host}: supervisorctl {action} {program} failed: "
                            f"{(result.stdout + result.stderr).strip()[-300:]}")

    def program_running(self, program: str) -> bool:
        result = self.root().run(f"supervisorctl status {program}", warn=True)
        return "RUNNING" in result.stdout

    def healthz(self, timeout: float = 2.0) -> dict | None:
        """The app's /healthz as its clients see it (on the site's public address), or None."""
        url = f"http://{self.outputs.public_addresses[0]}:{self.app_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return None


class AsUser:
    """An invoke-Context look-alike over a Connection: every command runs as `user` via `sudo -n`.

    `run()` has Context.run's signature, so playbooks (playbooks/host.py) use it unchanged;
    a refused sudo raises SiteError naming the site and host instead of a bare exit code.
    """

    _failover_is_root = False  # playbooks.host: commands already run as the service user

    def __init__(self, site: Site, conn: Connection, user: str):
        self.site, self.conn, self.user = site, conn, user
        self.host = conn.host

    def run(self, command: str, hide=True, warn: bool = False, timeout: float | None = None,
            env: dict | None = None, in_stream=False, **_):
        shell = self.site.shell(self.user, self.host)
        try:
            result = shell.run(command, warn=True, timeout=timeout, env=env)
        except SudoRefused:
            raise SiteError(f"site {self.site.name}: host {self.host}: user {self.site.outputs.ssh_user} may not "
                            f"sudo to {self.user} without a password; grant it NOPASSWD sudo") from None
        except ShellDied as died:
            raise SiteError(f"site {self.site.name}: host {self.host}: the connection ended during a command "
                            "(the host went away?); it may or may not have run: check the site, then rerun") from died
        except ShellError as error:
            raise SiteError(f"site {self.site.name}: host {self.host}: {error}") from None
        if not warn and not result.ok:
            raise UnexpectedExit(result)
        return result
