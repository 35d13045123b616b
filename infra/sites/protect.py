"""`failover sites protect`: set up and repair protection on every reachable site of an Inventory.

It works on any site reached through the Site seam (cloud VMs that `pulumi up` created, or the
local cloud's Debian VMs), idempotently, in this order:
1. checks first: the primary answers SSH, sudo works on every reachable site, the replication
   password's secret resolves; nothing changes before all of them pass;
2. TLS: a server certificate per site from the toolkit's CA, and the settings and pg_hba lines
   (`hostssl ... scram-sha-256` for the peers, peer authentication on the unix socket, never
   `trust`) on every reachable site;
3. the primary: the replication role (its SCRAM verifier, computed here: the password never
   travels), the epoch schema, pgBackRest with every repository, the stanza and a first full
   backup in every repository that has none;
4. the warm replica (cloned over TLS at verify-full unless it already streams) and the
   pilot-light's WAL receiver (pg_receivewal as a supervisor program, `--synchronous` under
   quorum commit, its start set for the primary's timeline history: infra/data/walstream.py);
5. the primary's synchronous_standby_names for the spec's mode (docs/quorum.md): under quorum
   ANY 1 of the warm replica and the receiver. Until then commits wait only for the secondaries
   that already streamed when protect began, and protect's own writes for none.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from invoke.exceptions import UnexpectedExit

from infra import secrets
from infra.app import seed as app_seed
from infra.data import pgbackrest as pgbr_config
from infra.data import protection, standby, walstream
from infra.data.pgbackrest import STANZA
from infra.data.standby import PASSFILE, REPLICATION_USER, TLS_DIR, TLS_SETTINGS  # noqa: F401 - protect's names
from infra.sites import services
from infra.sites.contract import Inventory
from infra.sites.processes import Laps, wait_for
from infra.sites.layout import REJOIN_PROGRAM, SETTINGS_FILE, WALSTREAM_PROGRAM
from infra.sites.site import CONF_DIR, PATHS, Site, SiteError
from infra.sites.tls import CertificateAuthority
from infra.spec import Spec
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir

PASSWORD_REF = "env/FAILOVER_REPLICATION_PASSWORD"
PRESTAGED = f"{PATHS.pgbackrest_dir}/prestaged"  # the backup label the pilot-light's data directory holds
# Protect's own writes commit on the primary's disk alone: a secondary it is still setting up
# (or one that is gone) must not hold them, whatever synchronous_standby_names says meanwhile.
LOCAL_COMMIT = "SET synchronous_commit = local"
SCHEMA = Path(app_seed.__file__).with_name("schema.sql")
POLL = 0.05  # seconds between looks at pg_stat_replication while a follower connects (one psql each)
QUICK_START = 5.0  # seconds a restarted replica streams within before the archive is opened to it
RELOAD_WAIT = 3.0  # seconds a running standby streams within after a reload, else it is restarted (rewound)


@dataclass
class ProtectReport:
    sites: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def did(self, site: str, what: str) -> None:
        self.sites.setdefault(site, []).append(what)


# ---------------------------------------------------------------- pure parts

def hba_lines(site: Site, peers: list[Site]) -> list[str]:
    """pg_hba.conf: peer auth on the unix socket, TLS + scram from the peers and the site's own app.

    On loopback the kernel gives every connection to a 127.x address the source 127.0.0.1,
    whoever sends it, so peers there are matched as 127.0.0.1.
    """
    sources = sorted({_source(p.outputs.db_host) for p in peers} |
                     {_source(a) for a in site.outputs.public_addresses})
    lines = ["local all postgres peer", "local all all peer"]
    lines += [f"hostssl replication {REPLICATION_USER} {s} scram-sha-256" for s in sources]
    lines += [f"hostssl all all {s} scram-sha-256" for s in sources]
    return lines


def _source(address: str) -> str:
    return "127.0.0.1/32" if address.startswith("127.") else f"{address}/32"


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def conninfo(primary: Site, application: str, database: str | None = None) -> str:
    """How a peer connects to the primary (infra.data.standby.conninfo)."""
    return standby.conninfo(primary.outputs.db_host, primary.outputs.db_port, application, database)


def site_settings(site: Site, primary: Site, standbys: str, replies: bool) -> dict[str, str]:
    """A site's settings (protection's, with TLS): the primary names its synchronous standbys
    (`protection.standby_names`), a warm site streams from the primary, replying to every write
    when commits wait for it (`replies`)."""
    address, port = site.outputs.db_host, site.outputs.db_port
    if site.role == "warm" and site is not primary:
        values = protection.replica_settings(address, port, PATHS, replies)
        values["primary_conninfo"] = conninfo(primary, site.name)
    else:
        values = protection.pg_settings(address, port, PATHS, standbys if site is primary else "")
    return {**values, **TLS_SETTINGS}


# ---------------------------------------------------------------- the run

def protect(inventory: Inventory, sites: dict[str, Site], spec: Spec, ca: CertificateAuthority | None,
            progress=lambda m: None, keep_existing: bool = False) -> ProtectReport:
    """Protects every reachable site (see the module's docstring).

    `keep_existing` (the runbook's re-protection): without the CA or the replication password
    here, what the sites already hold is kept (certificates, passfiles, the role), and only a
    site that lacks one stops the run; `sites protect` itself needs both."""
    started = time.monotonic()
    report = ProtectReport()
    password = _password(keep_existing)
    primary = sites[inventory.active]
    reachable = _check(inventory, sites, primary, report)
    skip = set(inventory.names) - reachable
    peers = [sites[n] for n in inventory.names if n in reachable]
    mode, replies = spec.database.replication, spec.database.standbys_reply
    # While protect runs, commits keep waiting for the secondaries that already stream (none
    # after a failover): a secondary protect is still setting up must not hold the app's writes.
    warm, receivers = secondaries(inventory, primary.name)
    streaming = streaming_standbys(primary) if primary.db_running() else set()
    interim = protection.standby_names(mode, [n for n in warm if n in streaming],
                                       [n for n in receivers if n in streaming])
    for site in peers:
        progress(f"{site.name}: TLS certificate, settings and pg_hba")
        if site.role == "pilot-light" and site is not primary and site.db_running():
            site.cluster("stop")  # it runs no database, only the WAL receiver: no restart for its settings
        _tls(site, ca)
        _configure(site, site_settings(site, primary, interim, replies), [p for p in peers if p is not site], report)
        if password is not None:
            site.write(PASSFILE, f"*:*:*:{REPLICATION_USER}:{password}\n")
        elif not site.service().run(f"test -s {PASSFILE}", warn=True).ok:
            raise SiteError(f"site {site.name}: host {site.db_host} has no replication passfile and "
                            f"{PASSWORD_REF} is not set here: set it, or run `failover sites protect` where it is")
    progress(f"{primary.name}: replication role, epoch schema, pgBackRest stanza and backups")
    _primary(primary, inventory, spec, password, skip, report)
    for site in peers:
        if site is primary:
            continue
        protection.install_pgbackrest(site.service(), inventory, site.name, PATHS, site.outputs.db_port, skip)
        if site.role == "warm":
            progress(f"{site.name}: streaming replica of {primary.name}")
            report.did(site.name, _replica(site, primary))
        elif site.role == "pilot-light":
            progress(f"{site.name}: WAL stream from {primary.name}, data directory prestaged")
            report.did(site.name, _wal_stream(site, primary))
            report.did(site.name, _prestage(site, inventory, skip))
    # The secondaries set up here; one that was unreachable counts once protect has run again.
    standbys = protection.standby_names(mode, [n for n in warm if n in reachable],
                                        [n for n in receivers if n in reachable])
    if standbys != interim:
        _configure(primary, site_settings(primary, primary, standbys, replies), [p for p in peers if p is not primary],
                   report)
        report.did(primary.name, f"synchronous_standby_names = {standbys}")
    for site in peers:  # a host that boots again rejoins by itself (infra/data/rejoin.py)
        services.install_rejoin(site, inventory)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def secondaries(inventory: Inventory, primary: str) -> tuple[list[str], list[str]]:
    """(warm sites, pilot-light sites) besides the primary, in inventory order: who a commit may wait for."""
    others = [s for s in inventory.sites if s.site != primary]
    return [s.site for s in others if s.role == "warm"], [s.site for s in others if s.role == "pilot-light"]


def streaming_standbys(primary: Site) -> set[str]:
    """The application names streaming from the primary over TLS (replicas and WAL receivers)."""
    result = primary.psql("SELECT r.application_name FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                          "WHERE s.ssl AND r.state = 'streaming'", warn=True)
    return set(result.stdout.split()) if result.ok else set()


def follow(inventory: Inventory, sites: dict[str, Site], spec: Spec, skip: set[str],
           progress=lambda m: None, primary_name: str | None = None) -> dict[str, str]:
    """Re-protection's first part (after a failover, before any backup): every reachable
    secondary follows the active primary (`follow_site`), one after the other. It relies on
    what the first `sites protect` left on every host (certificates, passfile, pg_hba, the
    role); `protect` then completes the rest. `primary_name`: the primary to follow when the
    Inventory does not name it active yet. Returns what each site did."""
    primary = sites[primary_name or inventory.active]
    done: dict[str, str] = {}
    for name in followers(inventory, primary.name, skip):
        progress(f"{name}: following {primary.name}")
        done[name] = follow_site(sites[name], primary, spec)
    return done


def followers(inventory: Inventory, primary: str, skip: set[str]) -> list[str]:
    """The secondaries (warm and pilot-light sites) that follow `primary`, in inventory order."""
    return [s.site for s in inventory.sites
            if s.site != primary and s.role in ("warm", "pilot-light") and s.site not in skip]


def follow_site(site: Site, primary: Site, spec: Spec, held: bool = False, laps: Laps | None = None) -> str:
    """One secondary follows `primary`: a warm site as its replica (rewound, else re-cloned,
    unless it streams already), a pilot-light's WAL receiver by streaming from it. `held`: the
    receiver was stopped before the promotion (`hold_stream`). `laps` gets where the time went."""
    laps = laps if laps is not None else Laps()
    if site.role == "warm":
        site.write(SETTINGS_FILE, postgres.render_settings(site_settings(site, primary, "", spec.database.standbys_reply)))
        laps.lap("settings")
        return _replica(site, primary, laps=laps)
    # Its settings name no primary, and it runs no database (protect sees to both).
    return _wal_stream(site, primary, held, laps)


def hold_stream(site: Site) -> str:
    """Before a promotion: a pilot-light's WAL receiver stopped, so that the time this costs lies
    before the exposure window instead of inside it. It receives nothing meanwhile (its primary
    is cut off or fenced), and it must not write while `_wal_stream` sets its directory for the
    new primary's timeline. Under quorum commit the promote step reads its WAL as it is:
    stopped, it holds still."""
    services.hold_program(site, WALSTREAM_PROGRAM)
    return "WAL receiver stopped until it follows the new primary"


def _password(optional: bool) -> str | None:
    try:
        return secrets.resolve(PASSWORD_REF, "the replication role (sites protect)")
    except secrets.MissingSecret:
        if optional:
            return None
        raise


def _check(inventory: Inventory, sites: dict[str, Site], primary: Site, report: ProtectReport) -> set[str]:
    """Every check before any change: the primary's SSH and sudo, the others' where they answer."""
    primary.connection()  # raises SiteError naming the site, host and what to do
    primary.check_sudo()
    reachable = {primary.name}
    for name in inventory.names:
        site = sites[name]
        if site is primary:
            continue
        if not site.reachable():
            report.skipped[name] = f"host {site.db_host} does not answer SSH: protected once it is back"
            continue
        site.check_sudo()
        reachable.add(name)
    return reachable


def _has_certificate(site: Site, ca: CertificateAuthority | None) -> bool:
    """The host holds a key, a server certificate for its address that is valid for 30 more
    days and that the CA's certificate there verifies, and that CA is the toolkit's (when the
    CA is here): nothing to issue (an operator without the CA can still protect)."""
    check = (f"test -s {TLS_DIR}/server.key && openssl verify -CAfile {TLS_DIR}/ca.crt {TLS_DIR}/server.crt "
             f">/dev/null && openssl x509 -in {TLS_DIR}/server.crt -noout -checkend 2592000 -ext subjectAltName "
             f"&& cat {TLS_DIR}/ca.crt")
    result = site.service().run(check, warn=True)
    if not (result.ok and f"IP Address:{site.outputs.db_host}" in result.stdout):
        return False
    return ca is None or ca.certificate.read_text().strip() in result.stdout


def _tls(site: Site, ca: CertificateAuthority | None) -> None:
    if _has_certificate(site, ca):
        return
    if ca is None:
        raise SiteError(f"site {site.name}: host {site.db_host} has no valid TLS certificate and the toolkit's CA "
                        "is not here: run `failover sites protect` where the CA is kept (or set FAILOVER_CA)")
    ensure_dir(site.service(), PATHS.pgbackrest_dir)
    ensure_dir(site.service(), TLS_DIR)
    key, certificate = ca.issue(site.outputs.db_host, (site.name,))
    site.write(f"{TLS_DIR}/server.key", key)
    site.write(f"{TLS_DIR}/server.crt", certificate, mode="644")
    site.write(f"{TLS_DIR}/ca.crt", ca.certificate.read_text(), mode="644")


def _configure(site: Site, values: dict[str, str], peers: list[Site], report: ProtectReport) -> None:
    """Settings and pg_hba; a running cluster reloads, or restarts when archive_mode must change."""
    site.write(SETTINGS_FILE, postgres.render_settings(values))
    site.write(f"{CONF_DIR}/pg_hba.conf", "\n".join(hba_lines(site, peers)) + "\n")
    if not site.db_running():
        return
    if site.psql("SHOW archive_mode", warn=True).stdout.strip() == "on":
        site.psql("SELECT pg_reload_conf()")
    else:
        site.cluster("restart")
        report.did(site.name, "restarted (archive_mode)")


def _primary(primary: Site, inventory: Inventory, spec: Spec, password: str | None, skip: set[str],
             report: ProtectReport) -> None:
    if not primary.db_running():
        primary.cluster("start")
    if password is not None:
        verifier = scram_verifier(password)
        role = f"{REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{verifier}'"
        primary.psql([LOCAL_COMMIT, f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                                    f"'{REPLICATION_USER}') THEN ALTER ROLE {role}; ELSE CREATE ROLE {role}; END IF; END $$"])
    elif primary.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{REPLICATION_USER}'").stdout.strip() != "1":
        raise SiteError(f"site {primary.name}: no replication role {REPLICATION_USER} and {PASSWORD_REF} is not "
                        "set here: set it and run again")
    primary.psql(standby.rewind_grants())
    db = spec.database.name
    if primary.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").stdout.strip() != "1":
        primary.psql([LOCAL_COMMIT, f"CREATE DATABASE {db}"])
    primary.write(f"{PATHS.pgbackrest_dir}/schema.sql", SCHEMA.read_text(), mode="644")
    primary.service().run(shlex.join(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(primary.outputs.db_port),
                                      "-d", db, "-c", LOCAL_COMMIT, "-f", f"{PATHS.pgbackrest_dir}/schema.sql"]))
    # The epoch row, at the Inventory's epoch (raised, never lowered): the app takes writes only
    # when its config's epoch matches the database's.
    primary.psql([LOCAL_COMMIT, "INSERT INTO failover.epoch (id, epoch, site, raised_at) VALUES (1, %d, '%s', now()) "
                  "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, site = excluded.site, raised_at = now() "
                  "WHERE failover.epoch.epoch < excluded.epoch" % (inventory.epoch, primary.name)], db=db)
    report.did(primary.name, "replication role, epoch schema")
    protection.install_pgbackrest(primary.service(), inventory, primary.name, PATHS, primary.outputs.db_port, skip)
    stanzas = protection.create_stanzas(primary.service(), inventory, PATHS, skip)
    broken = [f"{r.repo} ({r.site}): {r.error}" for r in stanzas if not r.ok]
    if broken:
        raise SiteError(f"site {primary.name}: pgBackRest stanza {STANZA} failed: " + "; ".join(broken))
    for index, name in _repos_without_backup(primary, inventory, skip):
        result = pgbackrest.backup(primary.service(), PATHS.config, index, "full")
        if not result.ok:
            raise SiteError(f"site {primary.name}: the first full backup into repo{index} ({name}) failed: "
                            f"{secrets.redact(result.stderr.strip()[-300:])}")
        report.did(primary.name, f"full backup into repo{index} ({name})")


def _repos_without_backup(primary: Site, inventory: Inventory, skip: set[str]) -> list[tuple[int, str]]:
    repos = pgbr_config.repositories(inventory, skip).items()
    return [(index, name) for index, name in repos
            if not (pgbackrest.info(primary.service(), PATHS.config, index)[0] or {}).get("backup")]


def streams_to(primary: Site, application: str, state: str | None = None) -> bool:
    """`application` connects to the primary for WAL over TLS (in `state`, when given: a walsender
    whose START_REPLICATION the primary refuses shows up for a moment as well)."""
    where = f" AND r.state = '{state}'" if state else ""
    return primary.psql(f"SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                        f"WHERE r.application_name = '{application}' AND s.ssl{where}", warn=True).stdout.strip() == "1"


def clone_replica(site: Site, primary: Site, synchronous: bool) -> str:
    """`site` streams from `primary` from a fresh clone (its own data is never reused: it may have
    diverged), whatever its role: a failback re-seeds the old primary this way. A host given back
    boots its rejoin agent, which may be cloning the same data directory: the engine takes over
    (seen: `rm -rf` of the data directory failed under the agent's clone)."""
    site.supervise(REJOIN_PROGRAM, "stop")
    values = {**protection.replica_settings(site.address, site.port, PATHS, synchronous),
              "primary_conninfo": conninfo(primary, site.name), **TLS_SETTINGS}
    site.write(SETTINGS_FILE, postgres.render_settings(values))
    return _replica(site, primary, fresh=True)


def _replica(site: Site, primary: Site, fresh: bool = False, laps: Laps | None = None) -> str:
    """A warm site streams from the primary: cloned over TLS unless it already streams."""
    laps = laps if laps is not None else Laps()
    if not fresh and streams_to(primary, site.name):
        return "replica: already streaming"
    if not fresh and site.role == "warm" and _reloaded(site, primary, laps):
        return "replica: follows after a reload of primary_conninfo (no restart), streaming"
    if site.role == "pilot-light":  # its WAL receiver would hold the slot's name and stream twice
        site.supervise(WALSTREAM_PROGRAM, "stop")
    if site.db_running():
        site.cluster("stop")
    laps.lap("stopped")
    c = site.service()
    if not fresh and _rewound(site, primary, laps):
        return "replica: rewound (pg_rewind), streaming"
    standby.clone(c, conninfo(primary, site.name))
    standby.mark_standby(c)
    laps.lap("cloned")
    _start_streaming(site, primary, 60)
    laps.lap("streaming")
    return "replica: cloned over TLS, streaming"


def _reloaded(site: Site, primary: Site, laps: Laps) -> bool:
    """A running standby that has not replayed past the point where the primary's history left
    its timeline follows the primary without a restart (PostgreSQL 13 and later reload
    primary_conninfo, which the site's settings file names already): its walreceiver connects
    and the timeline switch comes with the stream (recovery_target_timeline 'latest'). Meanwhile
    its restore_command finds nothing and it retries every 100 ms instead of 5 s. False when it
    is not such a standby, or it does not stream within RELOAD_WAIT (PostgreSQL refuses a
    timeline that forked before its replay position): then it is restarted, rewound first."""
    if not site.db_running():
        return False
    row = site.psql("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), timeline_id FROM pg_control_checkpoint()",
                    warn=True).stdout.strip().split("|")
    if len(row) != 3 or row[0] != "t" or not row[1]:
        return False
    timelines, _, _ = server_timelines(primary)
    tli, replayed = int(row[2]), walstream.lsn(row[1])
    if not timelines.known(tli) or replayed > timelines.end(tli):
        return False
    c = site.service()
    c.run(f"touch {PATHS.archive_off}")
    pgbackrest.interrupt_archiving(c, PATHS.config, "archive-get")  # one may be retrying a dead store
    try:
        site.psql(["ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'", "SELECT pg_reload_conf()"])
        laps.lap("reloaded")
        following = wait_quietly(lambda: streams_to(primary, site.name, "streaming"), RELOAD_WAIT)
    finally:
        site.psql(["ALTER SYSTEM RESET wal_retrieve_retry_interval", "SELECT pg_reload_conf()"], warn=True)
        c.run(f"rm -f {PATHS.archive_off}")
    laps.lap("streaming" if following else "not streaming after the reload")
    return following


def _rewound(site: Site, primary: Site, laps: Laps) -> bool:
    """The stopped cluster rewound onto the primary and streaming from it; False (stopped again)
    when pg_rewind cannot (no data directory, WAL it needs is gone) or it does not stream."""
    c = site.service()
    if not c.run(f"test -s {PATHS.pgdata}/global/pg_control", warn=True).ok:
        return False
    if not standby.rewind(c, conninfo(primary, site.name, "postgres")).ok:
        return False
    standby.mark_standby(c)
    laps.lap("rewound")
    try:
        _start_streaming(site, primary, 30)
        laps.lap("streaming")
        return True
    except (SiteError, TimeoutError, UnexpectedExit):
        if site.db_running():
            site.cluster("stop", "fast")
        return False


def _start_streaming(site: Site, primary: Site, timeout: float) -> None:
    """The stopped standby started, until it streams from the primary. For its first QUICK_START
    seconds its restore_command finds nothing at once (PATHS.archive_off): the startup process
    otherwise asks every repository, one pgBackRest process per file (the timelines' history
    files, the next segment), before it turns to streaming; in a traced drill it streamed 0.8 s
    after the start. A standby that needs WAL the primary no longer holds gets the archive after
    that, and streams once it has caught up from it."""
    c = site.service()
    c.run(f"touch {PATHS.archive_off}")
    try:
        site.cluster("start")
        streaming = lambda: streams_to(primary, site.name)  # noqa: E731
        if wait_quietly(streaming, QUICK_START):
            return
    finally:
        c.run(f"rm -f {PATHS.archive_off}")
    wait_for(streaming, timeout, f"{site.name} to stream from {primary.name}", POLL)


def wait_quietly(check, timeout: float) -> bool:
    """wait_for at POLL, False instead of an error when it times out."""
    try:
        return bool(wait_for(check, timeout, "", POLL))
    except TimeoutError:
        return False


def _prestage(site: Site, inventory: Inventory, skip: set[str]) -> str:
    """The pilot-light's (stopped) data directory restored from its own repository's newest
    backup, so a failover's restore is a delta over it instead of a full copy. The backup's
    label is kept beside it: a repeated protect restores again only after a newer backup."""
    index, c = inventory.repo_index(site.name), site.service()
    protection.install_pgbackrest(c, inventory, site.name, PATHS, site.port, skip)
    backups = (pgbackrest.info(c, PATHS.config, index)[0] or {}).get("backup") or []
    label = backups[-1]["label"] if backups else ""
    if label and c.run(f"cat {PRESTAGED}", warn=True).stdout.strip() == label:
        return f"prestaged: already at {label}"
    result = protection.prestage(c, inventory, site.name, PATHS, site.port, skip)
    if not result.ok:
        raise SiteError(f"site {site.name}: prestaging its data directory from repo{index} failed: {result.error}")
    c.run(f"echo {shlex.quote(label)} > {PRESTAGED}")
    return f"prestaged from repo{index} ({label}) in {result.seconds:.1f}s"


def _wal_stream(site: Site, primary: Site, held: bool = False, laps: Laps | None = None) -> str:
    """pg_receivewal on the pilot-light host, supervised; its cluster stays stopped (see protect).

    It is always `--synchronous` (standby.walstream_command): it flushes and reports every write
    at once, so the primary may count it among the standbys a commit waits for. Before it starts on a primary it does not
    stream from yet, its directory is set for that primary's timeline history (infra.data.walstream).
    `held`: stopped already (`hold_stream`). On the way to streaming: one psql on the primary
    (its slot and its timelines), a few commands and one call of supervisord's API on the
    pilot-light (services.launch_program), then pg_stat_replication every POLL seconds."""
    laps = laps if laps is not None else Laps()
    slot = protection.stream_slot(site.name)
    command = standby.walstream_command(slot, conninfo(primary, site.name))
    program_file = f"{services.PROGRAM_DIR}/{WALSTREAM_PROGRAM}.conf"
    if command in site.root().run(f"cat {program_file}", warn=True).stdout and streams_to(primary, site.name):
        return "WAL stream: already streaming"
    laps.lap("checked")
    if not held:
        services.hold_program(site, WALSTREAM_PROGRAM)  # it must not write while its directory is set
        laps.lap("stopped")
    start = _prepare_stream_dir(site, primary, slot)
    laps.lap("directory")
    # The toolkit's code may not be on the host yet (protect comes first): it runs from the stream's directory.
    services.launch_program(site, WALSTREAM_PROGRAM, command, directory=PATHS.wal_stream)
    laps.lap("launched")
    wait_for(lambda: streams_to(primary, site.name), 60,
             f"{site.name}'s pg_receivewal to stream from {primary.name} (from {start.start or 'the server'}: "
             f"{start.reason}; see {services.LOG_DIR}/{WALSTREAM_PROGRAM}.log there)", POLL)
    laps.lap("streaming")
    moved = f", {len(start.move_aside)} segment(s) past the fork moved to {walstream.DIVERGED_DIR}/" \
        if start.move_aside else ""
    return f"WAL stream: pg_receivewal streaming over TLS from {start.start or 'the server'}{moved}"


# One row: the current WAL file, the segment size, the oldest segment in pg_wal (NULL: none) and
# the current timeline's history file (NULL on timeline 1), which may span lines: it comes last.
TIMELINES_SQL = ("SELECT w.file, (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), "
                 "(SELECT min(substr(name, 9)) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'), "
                 "pg_read_file('pg_wal/' || substr(w.file, 1, 8) || '.history', 0, 1048576, true) "
                 "FROM (SELECT pg_walfile_name(pg_current_wal_lsn()) AS file) w")


def slot_sql(slot: str) -> str:
    return (f"SELECT pg_create_physical_replication_slot('{slot}') WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}')")


def parse_timelines(row: str) -> tuple[walstream.Timelines, int, int | None]:
    """TIMELINES_SQL's row (psql -At): the timeline history, the segment size, the oldest segment."""
    file, size_text, oldest_text, history = row.split("|", 3)
    current, size = int(file[:8], 16), int(size_text)
    oldest = walstream.Segment.parse(f"{current:08X}{oldest_text}", size).segno if oldest_text else None
    return walstream.Timelines(current, walstream.parse_history(history)), size, oldest


def server_timelines(primary: Site, slot: str | None = None) -> tuple[walstream.Timelines, int, int | None]:
    """The primary's timeline history, its WAL segment size and the oldest segment in its pg_wal;
    with `slot`, that physical slot created first where it is missing (the same round trip)."""
    statements = ([f"SELECT count(*) FROM ({slot_sql(slot)}) created"] if slot else []) + [TIMELINES_SQL]
    out = primary.psql(statements).stdout
    return parse_timelines(out.split("\n", 1)[1] if slot else out)


def _prepare_stream_dir(site: Site, primary: Site, slot: str) -> walstream.StreamStart:
    timelines, size, oldest = server_timelines(primary, slot)
    c = site.service()
    ensure_dir(c, PATHS.wal_stream)
    names = c.run(f"ls -1 {PATHS.wal_stream}").stdout.split()
    start = walstream.plan_start(names, timelines, size, oldest)
    if start.move_aside:
        aside = f"{PATHS.wal_stream}/{walstream.DIVERGED_DIR}"
        c.run(f"mkdir -p {aside} && cd {PATHS.wal_stream} && mv --backup=numbered "
              f"{shlex.join(start.move_aside)} {aside}/")
    if start.placeholder:
        c.run(f"truncate -s {size} {PATHS.wal_stream}/{start.placeholder} && chmod 600 {PATHS.wal_stream}/{start.placeholder}")
    return start
