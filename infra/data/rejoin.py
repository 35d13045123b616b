"""The rejoin agent: on a site's own host, at boot, makes its database follow the active primary.

Run as `python3 -m infra.data.rejoin SITE` by supervisor, as root, whenever the host boots
(`sites protect` installs it on every site's host, with Debian's start.conf set to `manual`, so
PostgreSQL itself never starts at boot with what the disk holds). A provider that gives a
dropped VM back boots it; nobody runs a command. The agent:
1. reads every store named by the Inventory the engine last left on the host
   (/etc/failover/inventory.json) and keeps the newest Inventory it finds (highest epoch);
   with none reachable it waits, and the database stays down;
2. if that Inventory names this site active, starts the database as it is and exits;
3. otherwise holds the app (its config says `rejoining`: it answers 503 not-ready to every
   request) and makes the database follow the active primary: a warm site (or an old primary)
   as its streaming replica, rewound with pg_rewind, else cloned afresh; a pilot-light with
   pg_receivewal towards it (infra/data/standby.py). Stale data never serves: the cluster
   starts only as a standby of the current primary;
4. once it follows, releases the app at the Inventory's epoch and exits 0 (supervisor does not
   restart it until the next boot; a failure is retried).
It acts at boot only: afterwards the engine (the runbook, `sites protect`) owns the database.
It uses the replication passfile and TLS certificates that `sites protect` left on the host.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from invoke import Context
from invoke.exceptions import UnexpectedExit

from infra import secrets
from infra.data import protection, standby
from infra.data.storage import Store, StoreError
from infra.sites.contract import Inventory, SiteOutputs
from infra.sites.layout import (APP_CONFIG, DB_VERSION, INVENTORY_COPY, INVENTORY_FILE, LOG_DIR, PATHS,
                                PROGRAM_DIR, SERVICE_USER, SETTINGS_FILE, WALSTREAM_PROGRAM, program)
from playbooks import postgres
from playbooks.host import write_file

INTERVAL = 2.0
STREAM_WAIT = 60.0  # seconds for a follower to stream before the next way is tried
BEHIND_WAIT = 30.0  # the same for a standby started as it is (a diverged one never streams)
WAIT, START, DONE, REPLICA, WALSTREAM = "wait", "start", "done", "replica", "walstream"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)  # supervisor keeps it in the program's log


# ---------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Local:
    """What this host sees of its own database and WAL receiver."""

    db_running: bool
    in_recovery: bool | None  # None: it does not answer
    upstream: str | None  # the host its WAL receiver streams from, when it streams
    stream_source: str | None  # the host the pilot-light's pg_receivewal program points at
    stream_running: bool = False


def newest(inventories: list[Inventory]) -> Inventory | None:
    """The Inventory with the highest epoch (then the latest update): the failover's word wins
    over the copy a dropped site kept in its own store."""
    return max(inventories, key=lambda i: (i.epoch, i.updated), default=None)


def decide(inventory: Inventory | None, site: str, local: Local) -> str:
    """What the agent does next: wait, start (it is active), replica, walstream or done."""
    if inventory is None:
        return WAIT
    if inventory.active == site:
        return DONE if local.db_running else START
    primary = inventory.site(inventory.active).db_host
    if inventory.site(site).role == "pilot-light":
        following = not local.db_running and local.stream_running and local.stream_source == primary
        return DONE if following else WALSTREAM
    following = local.db_running and local.in_recovery is True and local.upstream == primary
    return DONE if following else REPLICA


def stream_source(conf: str) -> str | None:
    """The primary host in a walstream program's config (its conninfo's host=)."""
    for word in shlex.split(conf.replace("command=", " ")) if conf else []:
        for part in word.split():
            if part.startswith("host="):
                return part[len("host="):]
    return None


def synchronous(settings: str) -> bool:
    """Whether the site's settings made it a synchronous replica (replica_settings leaves the
    status interval at its default then); an old primary's settings count as synchronous."""
    return "wal_receiver_status_interval" not in settings


# ---------------------------------------------------------------- the host

class AsService:
    """Commands as the service user (pg_rewind, pg_basebackup and psql refuse root or need its
    files): the step functions of infra/data/standby.py run unchanged through it."""

    def __init__(self, c: Context):
        self.c = c

    def run(self, command: str, warn: bool = False, timeout: float | None = None, **_):
        return self.c.run(f"runuser -u {SERVICE_USER} -- sh -c {shlex.quote(command)}", hide=True, warn=warn,
                          timeout=timeout, in_stream=False)


class Host:
    """This site's host, as root (supervisorctl, pg_ctlcluster) and as the service user."""

    def __init__(self, site: str, c: Context | None = None):
        self.site, self.c = site, c or Context()
        self.service = AsService(self.c)

    def sh(self, command: str, warn: bool = True, timeout: float = 600):
        return self.c.run(command, hide=True, warn=warn, timeout=timeout, in_stream=False)

    def read(self, path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    def local(self) -> Local:
        running = self.service.run(f"test -s {PATHS.pgdata}/postmaster.pid && {postgres.BIN}/pg_ctl status -D "
                                   f"{PATHS.pgdata}", warn=True).ok
        recovery, upstream = None, None
        if running:
            row = self.psql("SELECT pg_is_in_recovery(), (SELECT sender_host FROM pg_stat_wal_receiver "
                            "WHERE status = 'streaming')")
            if row:
                flag, _, host = row.partition("|")
                recovery, upstream = flag == "t", host or None
        status = self.sh(f"supervisorctl status {WALSTREAM_PROGRAM}").stdout
        return Local(running, recovery, upstream, stream_source(self.read(f"{PROGRAM_DIR}/{WALSTREAM_PROGRAM}.conf")),
                     "RUNNING" in status)

    def psql(self, sql: str, conninfo: str | None = None) -> str | None:
        target = ["-d", conninfo] if conninfo else ["-p", self.port(), "-h", PATHS.socket_dir]
        result = self.service.run(shlex.join(["psql", "-X", "-At", *target, "-c", sql]), warn=True, timeout=30)
        return result.stdout.strip() if result.ok else None

    def port(self) -> str:
        for line in self.read(SETTINGS_FILE).splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                return value.strip().strip("'")
        return "5432"

    def cluster(self, action: str, mode: str = "") -> None:
        extra = f" -m {mode}" if mode else ""
        self.sh(f"pg_ctlcluster {DB_VERSION} main {action}{extra}", warn=False)

    def stop_database(self) -> None:
        if self.local().db_running:
            self.cluster("stop", "fast")


# ---------------------------------------------------------------- what it reads

def reachable_inventories(known: Inventory) -> list[Inventory]:
    """The Inventory copy in every store this host reaches (an unreachable one is skipped)."""
    found = [known]
    for outputs in known.sites:
        try:
            found.append(Inventory.from_json(Store(outputs).get(INVENTORY_COPY).decode(), where=str(Store(outputs))))
        except (StoreError, ValueError, secrets.MissingSecret, OSError):
            continue
    return found


# ---------------------------------------------------------------- the app

def hold_app(host: Host, epoch: int | None = None) -> None:
    """The app answers not-ready (`rejoining`) until the database follows; released at `epoch`."""
    text = host.read(APP_CONFIG)
    if not text.strip():
        return  # no app on this host
    config = json.loads(text)
    if epoch is None:
        if config.get("rejoining"):
            return
        config["rejoining"] = True
    else:
        config.pop("rejoining", None)
        config["epoch"] = max(int(config.get("epoch", 0)), epoch)
    write_file(host.c, APP_CONFIG, json.dumps(config, indent=2), mode="640")


# ---------------------------------------------------------------- following the primary

def follow_as_replica(host: Host, me: SiteOutputs, primary: SiteOutputs) -> str:
    """A standby that was only behind streams again as it is (PostgreSQL follows the primary's
    new timeline when it forked after the standby's position); one whose timeline diverged
    (an old primary, or a standby ahead of the fork) is rewound with pg_rewind; a fresh clone
    when neither works. The cluster starts only as a standby of `primary`."""
    if host.local().db_running:
        host.cluster("stop", "fast")
    settings = standby.follower_settings("warm", me.db_host, me.db_port, primary.db_host, primary.db_port, me.site,
                                         synchronous(host.read(SETTINGS_FILE)))
    write_file(host.c, SETTINGS_FILE, postgres.render_settings(settings), mode="644")
    source = standby.conninfo(primary.db_host, primary.db_port, me.site)
    has_data = host.service.run(f"test -s {PATHS.pgdata}/global/pg_control", warn=True).ok
    was_standby = host.service.run(f"test -e {PATHS.pgdata}/standby.signal", warn=True).ok
    if has_data and was_standby:
        if _started_streaming(host, primary, BEHIND_WAIT):
            return f"streaming from {primary.site} (it was only behind)"
        host.stop_database()  # a clean shutdown in recovery: pg_rewind needs no crash recovery then
    if has_data:
        # A crashed primary is crash-recovered by pg_rewind itself (single-user mode, which a
        # standby.signal would refuse: the rewind's own signal comes after).
        rewound = standby.rewind(host.service, standby.conninfo(primary.db_host, primary.db_port, me.site, "postgres"))
        log(f"pg_rewind onto {primary.site}: " + ("done" if rewound.ok else
                                                   f"failed ({_tail(rewound.stderr)}); cloning instead"))
        if rewound.ok and _started_streaming(host, primary, STREAM_WAIT):
            return f"rewound onto {primary.site}, streaming"
        host.stop_database()
    standby.clone(host.service, source)
    if _started_streaming(host, primary, STREAM_WAIT):
        return f"cloned from {primary.site}, streaming"
    raise RuntimeError(f"cloned from {primary.site} but it does not stream")


def _started_streaming(host: Host, primary: SiteOutputs, seconds: float) -> bool:
    standby.mark_standby(host.service)
    try:
        host.cluster("start")
    except UnexpectedExit as failure:  # it cannot start as a standby of this primary
        log(f"the standby did not start: {_tail(failure.result.stderr or failure.result.stdout)}")
        return False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if host.local().upstream == primary.db_host:
            return True
        time.sleep(0.5)
    return False


def follow_with_walstream(host: Host, me: SiteOutputs, primary: SiteOutputs) -> str:
    """pg_receivewal towards the primary, on its slot (created there over the replication
    protocol when missing); a stream directory the new primary's history cannot continue is
    put aside and the stream starts afresh."""
    host.stop_database()
    settings = standby.follower_settings("pilot-light", me.db_host, me.db_port, primary.db_host, primary.db_port,
                                         me.site, False)
    write_file(host.c, SETTINGS_FILE, postgres.render_settings(settings), mode="644")
    source = standby.conninfo(primary.db_host, primary.db_port, me.site)
    slot = protection.stream_slot(me.site)
    host.service.run(shlex.join([f"{postgres.BIN}/pg_receivewal", "--create-slot", "--if-not-exists", "-S", slot,
                                 "-d", source]), warn=True, timeout=60)
    host.service.run(f"mkdir -p -m 700 {PATHS.wal_stream}")
    conf = program(WALSTREAM_PROGRAM, standby.walstream_command(slot, source), directory=PATHS.wal_stream)
    write_file(host.c, f"{PROGRAM_DIR}/{WALSTREAM_PROGRAM}.conf", conf, mode="644")
    host.sh("chown root:root " + shlex.quote(f"{PROGRAM_DIR}/{WALSTREAM_PROGRAM}.conf"))
    for attempt in ("as it is", "afresh"):
        host.sh(f"supervisorctl update >/dev/null; supervisorctl restart {WALSTREAM_PROGRAM}")
        if _streams_to(host, primary, me.site):
            return f"pg_receivewal streaming from {primary.site} ({attempt})"
        aside = f"{PATHS.wal_stream}.{int(time.time())}"
        log(f"pg_receivewal does not stream from {primary.site}; its directory goes to {aside}")
        host.sh(f"supervisorctl stop {WALSTREAM_PROGRAM}; mv {PATHS.wal_stream} {aside}")
        host.service.run(f"mkdir -p -m 700 {PATHS.wal_stream}")
    raise RuntimeError(f"pg_receivewal does not stream from {primary.site}; see {LOG_DIR}/{WALSTREAM_PROGRAM}.log")


def _streams_to(host: Host, primary: SiteOutputs, name: str) -> bool:
    """Asked of the primary as the replication role (it sees its own walsenders)."""
    check = standby.conninfo(primary.db_host, primary.db_port, f"{name}-check", "postgres")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if host.psql(f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' "
                     "AND state = 'streaming'", check) == "1":
            return True
        time.sleep(0.5)
    return False


def _tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return secrets.redact(lines[-1][-200:]) if lines else "no output"


# ---------------------------------------------------------------- the loop

def step(host: Host) -> bool:
    """One look and one action; True once the site follows (or is active and started)."""
    known = Inventory.load(Path(INVENTORY_FILE))
    secrets.load_env_file(Path(PATHS.host_secrets), override=True)  # store credentials, where left here
    inventory = newest(reachable_inventories(known))
    action = decide(inventory, host.site, host.local())
    if action == WAIT:
        return False
    if action == DONE:
        hold_app(host, inventory.epoch)
        write_file(host.c, INVENTORY_FILE, inventory.to_json(), mode="640")
        log(f"{host.site} follows the Inventory of epoch {inventory.epoch} ({inventory.active} active)")
        return True
    if action == START:
        log(f"{host.site} is active at epoch {inventory.epoch}: starting its database as it is")
        host.cluster("start")
        return False
    hold_app(host)
    me, primary = inventory.site(host.site), inventory.site(inventory.active)
    log(f"{host.site} rejoins: following {primary.site} (epoch {inventory.epoch})")
    way = follow_with_walstream if action == WALSTREAM else follow_as_replica
    log(f"{host.site}: {way(host, me, primary)}")
    return False


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python3 -m infra.data.rejoin SITE")
    host = Host(argv[0])
    log(f"rejoin agent of {host.site}: reading the newest Inventory from the stores")
    while True:
        try:
            if step(host):
                return
        except Exception as error:  # keep trying: a bad round is logged, the next one retries
            log(f"rejoin round failed: {type(error).__name__}: {secrets.redact(str(error))[-500:]}")
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main(sys.argv[1:])
