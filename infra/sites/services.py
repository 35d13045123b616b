"""The toolkit's services on a site's database host, reached only through its `Site`.

Three things run there besides PostgreSQL, all as the service user under supervisor (the
bootstrap starts supervisord: a systemd unit on cloud VMs, the daemon itself in a chroot VM):
- the toolkit's own code, shipped to TOOLKIT_DIR (`install_toolkit`): the host then runs the
  same `infra` and `playbooks` packages as the operator, so there is one protector and one app;
- the reference app (`start_app`), configured by `app_config`: it reads its database over the
  unix socket, writes media through its site's crypt remote, and re-reads its config when it changes;
- the protector (`start_protector`), only on the primary's host: it reads the Inventory the
  engine writes there and keeps WAL and media flowing to the other sites (infra/data/replicator.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import shlex
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.data import lease
from infra.data import media as media_config
from infra.data import protection
from infra.sites.contract import Inventory, SiteOutputs
from infra.sites.site import (APP_CONFIG, APP_PROGRAM, PATHS, PROTECTOR_PROGRAM, SERVICE_USER, TOOLKIT_DIR, Site,
                              SiteError)
from infra.sites.layout import (INVENTORY_FILE, LOG_DIR, PROGRAM_DIR, REJOIN_PROGRAM,  # noqa: F401 - named here before
                                REJOIN_UNIT, START_CONF, program, rejoin_unit)
from infra.sites.processes import wait_for
from infra.spec import Spec

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infra", "playbooks")
SOURCE_SUFFIXES = (".py", ".sql", ".sh", ".yaml")
VERSION_FILE = f"{TOOLKIT_DIR}/.version"
LEASE_STATE = f"{PATHS.pgbackrest_dir}/lease-state.json"  # the protector's lease state (infra/data/replicator.py)
# Seconds for a protector the runbook starts to hold its lease: its Python start and a first
# round (milliseconds on posix stores, up to ROUND_TIMEOUT through rclone), with room for load.
HOLD_WITHIN = 30.0


# ---------------------------------------------------------------- the toolkit's code

def toolkit_files(root: Path = ROOT) -> list[Path]:
    """The toolkit's source files, relative to `root`: no caches, no editor or hidden files."""
    files = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            relative = path.relative_to(root)
            if (path.is_file() and path.suffix in SOURCE_SUFFIXES
                    and not any(part.startswith((".", "__pycache__")) for part in relative.parts)):
                files.append(relative)
    return files


def toolkit_archive(root: Path = ROOT) -> tuple[bytes, str]:
    """A gzipped tar of the toolkit's sources (root-owned, world-readable) and their content hash.

    The hash covers names and contents only, so the same sources give the same version on
    every run and a host that already has them is left alone."""
    digest, buffer = hashlib.sha256(), io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for relative in toolkit_files(root):
            data = (root / relative).read_bytes()
            digest.update(f"{relative}\0{len(data)}\0".encode() + data)
            info = tarfile.TarInfo(str(relative))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), digest.hexdigest()


def install_toolkit(site: Site, packed: tuple[bytes, str] | None = None) -> bool:
    """Ships the toolkit to TOOLKIT_DIR on the site's database host; False when it was already there.

    `packed` is `toolkit_archive()` made once for several hosts. The new tree is unpacked beside
    the old one and swapped in with two renames, so a service that imports a module meanwhile
    sees one version or the other, never half of each."""
    archive, version = packed or toolkit_archive()
    if site.root().run(f"cat {VERSION_FILE}", warn=True).stdout.strip() == version:
        return False
    staged = f"{TOOLKIT_DIR}.tar.gz"
    site.write(staged, archive, owner="root")
    new, old = f"{TOOLKIT_DIR}.new", f"{TOOLKIT_DIR}.old"
    script = (f"set -e; trap 'rm -f {staged}' EXIT; rm -rf {new} {old}; mkdir -p {new}; "
              f"tar -xzf {staged} -C {new} --no-same-owner --no-same-permissions; chmod -R u=rwX,go=rX {new}; "
              f"echo {version} > {new}/.version; if [ -d {TOOLKIT_DIR} ]; then mv {TOOLKIT_DIR} {old}; fi; "
              f"mv {new} {TOOLKIT_DIR}; rm -rf {old}")
    result = site.root().run(script, warn=True, timeout=120)
    if not result.ok:
        raise SiteError(f"site {site.name}: host {site.db_host}: could not install the toolkit in {TOOLKIT_DIR}: "
                        f"{result.stderr.strip()[-300:]}; check the host's disk and that tar is installed")
    return True


def run_toolkit(site: Site, module: str, *args: str, timeout: float = 600):
    """`python3 -m module args` from TOOLKIT_DIR on the database host, as the service user."""
    return site.service().run(f"cd {TOOLKIT_DIR} && python3 -B -m {module} {shlex.join(args)}", timeout=timeout)


# ---------------------------------------------------------------- supervisor programs

# supervisord itself: a VM given back after a drop has a stale socket and no daemon. Its pid
# file is read rather than asking supervisorctl (a Python start-up: 0.3 s on the failover path).
ENSURE_SUPERVISOR = ('{ p=$(cat /run/supervisord.pid 2>/dev/null) && grep -qs supervisord "/proc/$p/cmdline"; } '
                     "|| { if [ -d /run/systemd/system ]; then systemctl start "
                     "supervisor; else rm -f /run/supervisor.sock; /usr/bin/supervisord -c "
                     "/etc/supervisor/supervisord.conf; fi; sleep 0.5; }")


def start_script(name: str, seconds: int = 15, wait: bool = True) -> str:
    """One root shell script (one SSH round trip instead of six): supervisord up, the program's
    config loaded (`update` restarts a program whose config changed), the program started, and
    RUNNING within `seconds` (a program `update` just added stays STARTING for startsecs), else
    the tail of its log and exit 1. `wait=False`: supervisord up, then `update` and `start` in the
    background (each supervisorctl is a Python start, and `start` waits startsecs); the caller
    watches for what it needs (`start` of a running program changes nothing)."""
    if not wait:
        return f"{ENSURE_SUPERVISOR}; (supervisorctl update; supervisorctl start {name}) </dev/null >/dev/null 2>&1 &"
    return (f"{ENSURE_SUPERVISOR}; supervisorctl update >/dev/null; "
            f"case $(supervisorctl status {name}) in *RUNNING*) exit 0;; *STARTING*|*BACKOFF*) ;; "
            f"*) supervisorctl start {name} >/dev/null;; esac; "
            f"for i in $(seq {seconds * 4}); do supervisorctl status {name} | grep -q RUNNING && exit 0; "
            f"sleep 0.25; done; tail -n 5 {LOG_DIR}/{name}.log; exit 1")


# supervisord's own XML-RPC API on its socket, from the standard library (`python3 -S`): 70-300 ms
# a call on the VMs under load, where each supervisorctl took 280-420 ms, most of it importing
# pkg_resources to find its entry point. Used where a follower's restart counts (the exposure window).
SUPERVISOR_SOCKET = "/run/supervisor.sock"
RPC_CLIENT = ("import http.client, socket, sys, xmlrpc.client\n"
              "class Unix(http.client.HTTPConnection):\n"
              "    def connect(self):\n"
              "        self.sock = socket.socket(socket.AF_UNIX)\n"
              f"        self.sock.connect('{SUPERVISOR_SOCKET}')\n"
              "class Transport(xmlrpc.client.Transport):\n"
              "    def make_connection(self, host):\n"
              "        return Unix('localhost')\n"
              "s = xmlrpc.client.ServerProxy('http://localhost', transport=Transport()).supervisor\n"
              "name = sys.argv[1]\n")
# Stopped, or not there at all (no such program, or no supervisord: a host given back after a drop).
RPC_STOP = ("try:\n"
            "    s.stopProcess(name)\n"
            "except (FileNotFoundError, ConnectionRefusedError):\n"
            "    pass\n"
            "except xmlrpc.client.Fault as fault:\n"
            "    if fault.faultString.split(':')[0] not in ('NOT_RUNNING', 'BAD_NAME'):\n"
            "        raise\n")
# `supervisorctl update` for one program: a changed config restarts it, a new one is added (and
# autostarted), else it is started unless it runs; startProcess does not wait out startsecs.
RPC_LAUNCH = ("added, changed, removed = s.reloadConfig()[0]\n"
              "if name in changed:\n"
              "    s.stopProcessGroup(name)\n"
              "    s.removeProcessGroup(name)\n"
              "if name in changed or name in added:\n"
              "    s.addProcessGroup(name)\n"
              "elif s.getProcessInfo(name)['statename'] not in ('RUNNING', 'STARTING'):\n"
              "    s.startProcess(name, False)\n")


def rpc_script(body: str, name: str) -> str:
    """A root shell command that runs `body` against supervisord's API for program `name`."""
    return f"python3 -S -c {shlex.quote(RPC_CLIENT + body)} {shlex.quote(name)}"


def hold_program(site: Site, name: str) -> None:
    """Stops a supervisor program (done when it is not running or not there), in one quick call."""
    result = site.root().run(rpc_script(RPC_STOP, name), warn=True, timeout=60)
    if not result.ok:
        raise SiteError(f"site {site.name}: host {site.db_host}: supervisord did not stop {name}: "
                        f"{result.stderr.strip()[-300:]}; see {LOG_DIR}/{name}.log there")


def launch_program(site: Site, name: str, command: str, directory: str = TOOLKIT_DIR) -> None:
    """Installs (or updates) an autostarted program and (re)starts it without waiting out startsecs
    for RUNNING: its caller watches the program do its job instead. One root script: supervisord
    up (ENSURE_SUPERVISOR), then one call of its API (RPC_LAUNCH)."""
    site.write(f"{PROGRAM_DIR}/{name}.conf", program(name, command, True, directory), owner="root", mode="644")
    result = site.root().run(f"{ENSURE_SUPERVISOR}; {rpc_script(RPC_LAUNCH, name)}", warn=True, timeout=120)
    if not result.ok:
        raise SiteError(f"site {site.name}: host {site.db_host}: supervisord did not start {name}: "
                        f"{result.stderr.strip()[-400:]}; see {LOG_DIR}/{name}.log there")


def run_program(site: Site, name: str, command: str, autostart: bool = True, directory: str = TOOLKIT_DIR,
                wait: bool = True) -> None:
    """Installs (or updates) the program and starts it unless it runs; a changed command restarts
    it. `wait=False`: its start is not waited for (see `start_script`)."""
    site.write(f"{PROGRAM_DIR}/{name}.conf", program(name, command, autostart, directory), owner="root", mode="644")
    result = site.root().run(start_script(name, wait=wait), warn=True, timeout=120)
    if not result.ok:
        raise SiteError(f"site {site.name}: host {site.db_host}: {name} does not stay up: "
                        f"{(result.stdout + result.stderr).strip()[-400:]}; see {LOG_DIR}/{name}.log there")


# ---------------------------------------------------------------- the app

def dsn(site: SiteOutputs, database: str) -> str:
    """The database as the service user reaches it on its own host: the unix socket, peer
    authentication (no password anywhere)."""
    return f"host={PATHS.socket_dir} port={site.db_port} user={SERVICE_USER} dbname={database}"


def app_config(inventory: Inventory, site_name: str, spec: Spec, epoch: int, fenced: bool = False,
               unreachable: frozenset[str] | set[str] = frozenset()) -> dict:
    """The app's config on `site_name`'s host (the keys infra/app/server.py reads).

    It runs there as the service user, so it reaches its database on the unix socket with
    peer authentication (no password in the file). It writes media through its site's crypt
    remote (the host's rclone.conf); with synchronous replication the active site's app also
    writes each media object into the warm sites' buckets before it acknowledges a post, as the
    database waits for the warm replica; `unreachable` sites are left out of those mirrors, or
    every post would fail while one is gone."""
    site = inventory.site(site_name)
    mirrors = []
    if spec.database.replication == "sync" and inventory.active == site_name:
        mirrors = [media_config.bucket(inventory, s.site) for s in inventory.sites
                   if s.role == "warm" and s.site != site_name and s.site not in unreachable]
    return {
        "site": site_name, "address": site.public_addresses[0], "port": spec.app.port,
        "epoch": epoch, "fenced": fenced,
        "dsn": dsn(site, spec.database.name),
        "media_remote": media_config.bucket(inventory, site_name),
        "media_mirrors": mirrors,
        "rclone_config": protection.rclone_config_path(PATHS),
        # The app refuses writes once any peer reports a higher epoch (see infra/app/server.py).
        "peers": [f"http://{s.public_addresses[0]}:{spec.app.port}/healthz" for s in inventory.sites
                  if s.site != site_name],
    }


def start_app(site: Site, config: dict) -> None:
    """Writes the app's config and makes sure the app runs; a running app picks a new config up
    by itself (it re-reads the file when it changes), so only a stopped one is started."""
    site.write_app_config(config)
    run_program(site, APP_PROGRAM, f"python3 -m infra.app.server {APP_CONFIG}")


# ---------------------------------------------------------------- the protector

def write_inventory(site: Site, inventory: Inventory) -> None:
    """The Inventory the protector on this host reads each round (the runbook rewrites it: once it
    names another site active, that host's protector stands down)."""
    site.write(INVENTORY_FILE, inventory.to_json(), mode="640")


def protector_command(site_name: str, async_after: int | None = None) -> str:
    """The protector's command line: the Inventory, the site it protects from, this host's layout,
    and the spec's database.async_after_seconds when given."""
    extra = ["--async-after", str(async_after)] if async_after is not None else []
    return shlex.join(["python3", "-m", "infra.data.replicator", INVENTORY_FILE, site_name,
                       "--pgdata", PATHS.pgdata, "--socket-dir", PATHS.socket_dir,
                       "--pgbackrest-dir", PATHS.pgbackrest_dir, *extra])


def start_protector(site: Site, inventory: Inventory, async_after: int | None = None, wait: bool = True,
                    fresh: bool = True) -> None:
    """The protector on the primary's database host, reading `inventory` (written there first).
    `wait=False`: not waited for; the runbook waits for its lease instead (`wait_lease_held`).
    `fresh=False`: a state the protector saved at this epoch is kept (the runbook's start of a
    new primary: only its own run can have saved one, and a fenced one must stay fenced)."""
    if inventory.active != site.name:
        raise SiteError(f"site {site.name}: the protector runs on the active site's host, and the inventory "
                        f"names {inventory.active} active; start it there (or write the inventory first)")
    write_inventory(site, inventory)
    protection.install_host_secrets(site.service(), inventory, PATHS)
    if fresh:  # `sites protect` starts it on purpose: a fenced state left by an earlier run is not carried on
        site.service().run(f"rm -f {LEASE_STATE}")
    # Not started by supervisord on its own: an old primary given back after a failover still has
    # an inventory naming itself active, and would copy its stale bucket over the others' objects.
    run_program(site, PROTECTOR_PROGRAM, protector_command(site.name, async_after), autostart=False, wait=wait)


def lease_state(site: Site) -> dict:
    """The protector's lease state on the site's host ({} when there is none, or it is unreadable)."""
    result = site.service().run(f"cat {LEASE_STATE}", warn=True)
    try:
        return json.loads(result.stdout) if result.ok else {}
    except ValueError:
        return {}


def lease_held(state: dict, site: str, epoch: int) -> bool:
    return state.get("holder") == site and state.get("epoch") == epoch and state.get("state") == lease.HELD


def wait_lease_held(site: Site, epoch: int, seconds: float = HOLD_WITHIN) -> dict:
    """Waits until the protector on the site's host holds its lease at `epoch` (a renewal round
    held at a majority of the stores); raises naming the site, host and why when it fenced
    itself, or holds nothing within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        state = lease_state(site)
        ours = state.get("holder") == site.name and state.get("epoch") == epoch  # not a state left at another epoch
        if ours and state.get("state") in (lease.HELD, lease.FENCED) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if lease_held(state, site.name, epoch):
        return state
    found = (f"it fenced itself: {state.get('reason')}" if ours and state.get("state") == lease.FENCED else
             f"its state after {seconds:.0f} s: {state.get('state') or 'none'} at epoch {state.get('epoch')} (last round: "
             f"{state.get('last_round') or 'none'})")
    raise SiteError(f"site {site.name}: host {site.db_host}: the protector does not hold the lease at epoch {epoch}, "
                    f"so {site.name} takes no writes; {found}; see {LOG_DIR}/{PROTECTOR_PROGRAM}.log there")


# ---------------------------------------------------------------- the rejoin agent

def install_rejoin(site: Site, inventory: Inventory) -> None:
    """The rejoin agent (infra/data/rejoin.py) as a boot-time program of the site's host, and
    the database left to it at boot: Debian's start.conf `manual` (neither the bootstrap nor
    systemd starts the cluster with what the disk holds). It reads `inventory` (written here)
    for the stores to ask. It is not autostarted: supervisord would also start it whenever a
    `supervisorctl update` loads it, in the middle of a runbook; the boot starts it
    (infra/clouds/bootstrap.sh), and only the boot."""
    write_inventory(site, inventory)
    site.write(START_CONF, "manual\n", mode="644")
    site.write(f"{PROGRAM_DIR}/{REJOIN_PROGRAM}.conf",
               program(REJOIN_PROGRAM, f"python3 -m infra.data.rejoin {site.name}", autostart=False, user="root",
                       once=True), owner="root", mode="644")
    if site.root().run("test -d /run/systemd/system", warn=True).ok:  # later boots run no bootstrap there
        site.write(REJOIN_UNIT, rejoin_unit(), owner="root", mode="644")
        site.root().run("systemctl daemon-reload && systemctl enable failover-rejoin.service")


def stop_protector(site: Site) -> None:
    site.supervise(PROTECTOR_PROGRAM, "stop")


def describe(config: dict) -> str:
    """One line for progress output: where the app listens and at which epoch."""
    fenced = ", fenced" if config["fenced"] else ""
    return f"app on {config['address']}:{config['port']} (epoch {config['epoch']}{fenced})"


# ---------------------------------------------------------------- every site at once

def on_each(sites: list[Site], action) -> list:
    """`action(site)` on every site at once (each has its own SSH connection); the first error raises."""
    with ThreadPoolExecutor(max_workers=max(1, len(sites))) as pool:
        return list(pool.map(action, sites))


def start_services(inventory: Inventory, sites: dict[str, Site], spec: Spec) -> dict[str, str]:
    """The app on the primary and every warm site in `sites`, the protector on the primary (each
    host on its own thread); waits until the primary's app takes writes."""
    names = [inventory.active] + [s.site for s in inventory.sites
                                  if s.role == "warm" and s.site != inventory.active and s.site in sites]
    gone = set(inventory.names) - set(sites)
    configs = {name: app_config(inventory, name, spec, inventory.epoch, unreachable=gone) for name in names}

    def start(site: Site) -> None:
        protection.install_rclone(site.service(), inventory, PATHS)  # the app's mirrors go through it
        start_app(site, configs[site.name])
        if site.name == inventory.active:
            start_protector(site, inventory, spec.database.async_after_seconds)

    on_each([sites[name] for name in names], start)
    wait_writable(sites[inventory.active], spec)
    return {name: describe(config) for name, config in configs.items()}


def wait_writable(primary: Site, spec: Spec, seconds: float = 30) -> None:
    where = f"the app on {primary.outputs.public_addresses[0]}:{spec.app.port}"
    try:
        wait_for(lambda: (primary.healthz() or {}).get("writable"), seconds, f"{where} to take writes", 0.2)
    except TimeoutError:
        raise SiteError(f"site {primary.name}: {where} does not take writes after {seconds:.0f} s (healthz: "
                        f"{primary.healthz()}); see {LOG_DIR}/{APP_PROGRAM}.log on host "
                        f"{primary.db_host}") from None
