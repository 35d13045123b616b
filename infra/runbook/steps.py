"""The failover runbook's steps, in order. Each checks before it acts, so running it twice is safe.

A step is `step(run: Run) -> dict`: it returns what it found or did (recorded in the journal).
Decisions that need no side effects (are these inputs valid? where does the data come from?
what will be lost?) are plain functions at the top of this module, tested with data.

Fencing, the guarantee that an old primary that comes back cannot take writes, has layers:
1. the epoch: every failover raises it in the inventory, in the new primary's `failover.epoch`
   table and in the new site's app.json; the app inserts only while its config's epoch equals
   its database's (one statement), so two sites never accept writes for the same epoch;
2. the old site's app.json is marked `fenced` (and its PostgreSQL stopped) wherever it can be
   reached: at failover time, and again by `fence_returning`, which every runbook command runs
   first, for any site that came back since (its app then answers 409 for every write);
3. the app watches its peers' /healthz and refuses writes as soon as any serves a higher
   epoch (infra/app/server.py PeerWatch, checked before it serves anything), so a site that
   was unreachable during the failover and is restarted behind the runbook's back, with its
   stale config and database, still refuses writes;
4. DNS no longer names it, so clients that respect the TTL stop reaching it within one TTL.
"""
from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

from infra import events, secrets
from infra.errors import FailoverError
from infra.data import protection
from infra.data import media as media_config
from infra.data.restore import restore_database
from infra.dns.site import apply_site, dns_config, failed, plan_site, verify_site
from infra.sites.database import dsn, record_postmaster
from infra.sites import reachability
from infra.sites.bringup import _dirs
from infra.sites.contract import Inventory
from infra.sites.local import LocalCloud, LocalSite
from infra.sites.processes import wait_for
from infra.spec import Spec
from infra.status import newest_repository, repository
from playbooks import media, postgres
from playbooks.host import run as host_run

PROMOTE, RESTORE = "promote", "restore"


# ---------------------------------------------------------------- pure decisions

@dataclass(frozen=True)
class DataSource:
    """Where the new primary's data comes from and what that costs."""

    kind: str  # promote | restore
    detail: str
    expected_loss: str
    repo_index: int | None = None
    repo_site: str | None = None
    # A synchronous replica flushed every acknowledged commit: promoting it needs no archive.
    has_every_commit: bool = False


def input_problems(names: list[str], active: str, dropped: set[str], target: str,
                   source: str | None) -> list[str]:
    """Everything wrong with `run --to target --from source`, before anything is touched."""
    problems = []
    if target not in names:
        problems.append(f"unknown site {target!r}: the inventory has {', '.join(names)}")
    elif target == active:
        problems.append(f"site {target} is already the active primary: choose another site to fail over to")
    elif target in dropped:
        problems.append(f"site {target} is dropped (its provider cut it off): choose a site that is up")
    if source is not None and source not in names:
        problems.append(f"unknown --from site {source!r}: the inventory has {', '.join(names)}")
    elif source is not None and source != active:
        problems.append(f"--from {source} is not the active primary ({active}); leave --from out or name {active}")
    return problems


def choose_source(target_role: str, replica_ok: bool, sync_replication: bool,
                  repos: list[dict]) -> DataSource:
    """Promote a streaming replica when there is one, else restore from the repository with the newest WAL.

    `repos` are `infra.status.repository` entries of reachable repositories.
    """
    if replica_ok:
        loss = ("none: the replica confirmed every commit (synchronous replication)" if sync_replication
                else "the replica's lag at cut-off (asynchronous replication)")
        return DataSource(PROMOTE, f"promote the {target_role} replica", loss, has_every_commit=sync_replication)
    best = newest_repository(repos)
    if best is None:
        details = "; ".join(f"{r['name']} at {r['site']}: {r.get('error') or 'no backup'}" for r in repos) or "none reachable"
        raise FailoverError(f"the target holds no replica and no reachable repository has a backup ({details}): "
                            "nothing to fail over to")
    return DataSource(RESTORE, f"restore from {best['name']} ({best['site']}), WAL up to {best.get('last_archived_wal')}",
                      "writes after the last archived WAL segment (archive lag, about archive_timeout)",
                      best["index"], best["site"])


def missing_dns_secrets(providers) -> list[str]:
    """`provider.arg (env/NAME)` for every secret reference that does not resolve."""
    missing = []
    for provider in providers:
        for key, value in provider.args.items():
            if secrets.is_ref(value):
                try:
                    secrets.resolve(value, f"{provider.name}.{key}")
                except secrets.MissingSecret:
                    missing.append(f"{provider.name}.{key} ({value})")
    return missing


def require_dns_secrets(config) -> None:
    """Stops a runbook before anything changes when a DNS provider's secret does not resolve."""
    missing = missing_dns_secrets(config.providers)
    if missing:
        raise FailoverError(f"DNS secrets missing: {', '.join(missing)} (providers from {config.source}); "
                            "set them in the environment before failing over")


def next_epoch(inventory_epoch: int, journal_epoch: int | None) -> int:
    """A resumed run keeps its epoch; a new run raises it above everything seen."""
    return journal_epoch if journal_epoch is not None else inventory_epoch + 1


# ---------------------------------------------------------------- the run's context

@dataclass
class Run:
    cloud: LocalCloud
    spec: Spec
    project: Path
    source: str
    target: str
    epoch: int
    data: DataSource
    c: object
    progress: Callable[[str], None] = lambda m: None
    notes: dict = field(default_factory=dict)

    @property
    def inventory(self) -> Inventory:
        return self.cloud.inventory()

    @property
    def site(self) -> LocalSite:
        return self.cloud.site(self.target)

    @property
    def dropped(self) -> set[str]:
        return self.cloud.dropped()

    def reachable(self, name: str) -> bool:
        return reachability.reachable(self.c, self.cloud, name)

    def unreachable(self) -> set[str]:
        return reachability.unreachable(self.c, self.cloud)

    @property
    def port(self) -> int:
        return self.spec.database.port

    def dns(self):
        return dns_config(self.cloud.workdir, self.project)


# ---------------------------------------------------------------- the steps

def preflight(run: Run) -> dict:
    """The target, its data and the DNS providers are reachable; the old primary is never required."""
    if not run.reachable(run.target):
        raise FailoverError(f"target site {run.target} ({run.site.address}) is unreachable")
    config = run.dns()
    require_dns_secrets(config)
    if run.data.kind == PROMOTE and _recovery_state(run) is None:
        raise FailoverError(f"the replica on {run.target} ({run.site.address}:{run.port}) does not answer")
    return {"dns_providers": [p.name for p in config.providers], "data": run.data.detail}


def fence(run: Run) -> dict:
    """Raise the epoch in the inventory (always) and fence the old primary where it can be reached."""
    raise_epoch(run)
    fenced = fence_site(run, run.source)
    return {"epoch": run.epoch, "old_primary": run.source, "fenced": fenced}


def raise_epoch(run: Run) -> None:
    """The run's epoch into the inventory, published to every reachable store (failover and
    failback alike): a site that comes back reads it there, and fences itself."""
    inventory = run.inventory
    if inventory.epoch < run.epoch:
        inventory.epoch = run.epoch
        run.cloud.publish(inventory)


def fence_site(run: Run, name: str) -> str:
    """Marks a site's app fenced and stops its PostgreSQL if it is a primary; says what it did."""
    if not run.reachable(name):
        return "unreachable: left to the epoch and DNS"
    site = run.cloud.site(name)
    config = json.loads(site.app_config.read_text()) if site.app_config.exists() else {}
    if config and not config.get("fenced"):
        run.cloud.write_app_config(site, run.spec, int(config.get("epoch", 0)), fenced=True)
    stopped = False
    # A running cluster that is not a standby is stopped, whether it answers or not.
    if postgres.is_running(run.c, site.paths.pgdata) and _recovery_state(run, site) is not True:
        postgres.stop(run.c, site.paths.pgdata)
        run.cloud.processes.stop(f"pg-{name}")
        stopped = True
    return "app fenced" + (", PostgreSQL stopped" if stopped else "")


def capacity(run: Run) -> dict:
    """The target has its directories and room for the data."""
    import shutil

    _dirs(run.c, run.site)
    free = shutil.disk_usage(run.site.root).free
    if free < 1 << 30:
        raise FailoverError(f"only {free >> 20} MB free under {run.site.root}: make room before failing over")
    return {"free_mb": free >> 20}


def promote_or_restore(run: Run) -> dict:
    """Promote the replica, or restore from the best repository and start it: readable, maybe still replaying.

    A restored cluster starts in archive recovery and answers read-only queries as soon as it is
    consistent, so the app serves reads and DNS can move while it replays the rest of the WAL;
    `take_writes` waits for the end of recovery. Only the pgBackRest config (its repositories)
    is rewritten first; the PostgreSQL config waits for `protect` (after DNS). A promoted replica
    runs with its replica settings, which name no synchronous standby, so commits never wait for
    the dropped site.
    """
    site = run.site
    clock = time.monotonic()
    if _writable(run):
        how = "already a primary"
    elif run.data.kind == PROMOTE:
        # Archiving starts at the promotion: only into repositories that answer, or pgBackRest
        # retries the dead one and holds WAL back from the others.
        protection.install_pgbackrest(run.c, run.inventory, site.name, site.paths, run.port, run.unreachable())
        if run.data.has_every_commit:  # nothing to fetch from the archive; `take_writes` removes the file
            host_run(run.c, ["touch", site.paths.archive_off])
        how = f"promoted in {postgres.promote(run.c, site.paths.pgdata, site.address, run.port):.2f}s"
    else:
        restore_database(run.c, run.cloud, run.spec, run.inventory, site, run.data.repo_index, run.unreachable(), None,
                         wait=False)
        how = f"restored from repo{run.data.repo_index} ({run.data.repo_site}), replaying WAL"
    if not run.cloud.processes.running(f"pg-{site.name}"):
        record_postmaster(run.cloud, site)
    return {"how": how, "data_seconds": round(time.monotonic() - clock, 3)}


def take_writes(run: Run) -> dict:
    """Once recovery has ended, store the new epoch with the data: from here the app takes writes.

    Storing the epoch is the last thing, so no write is acknowledged before the database is the
    new primary (fencing layer 1); the inventory then names the target active. One connection
    does the SQL (each psql would cost a process start on the critical path).
    """
    clock = time.monotonic()
    wait_for(lambda: _writable(run), 600, f"{run.target} to finish WAL replay and promote", 0.05)
    waited = round(time.monotonic() - clock, 3)
    with psycopg.connect(dsn(run.site, run.spec), autocommit=True, connect_timeout=5) as conn:
        # PostgreSQL keeps pg_last_xact_replay_timestamp() after recovery: how far the archive (or
        # the stream) reached, from which the drill measures the archive lag.
        recovered_to = conn.execute("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())").fetchone()[0]
        # Belt and braces for a target that was configured synchronous: commits must not wait for a dead standby.
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("INSERT INTO failover.epoch (id, epoch, site, raised_at) VALUES (1, %s, %s, now()) "
                     "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, site = excluded.site, raised_at = now() "
                     "WHERE failover.epoch.epoch < excluded.epoch", (run.epoch, run.target))
    host_run(run.c, ["rm", "-f", run.site.paths.archive_off])  # the archive is back for its next time as a standby
    inventory = run.inventory
    inventory.active = run.target
    run.cloud.publish(inventory)
    return {"epoch": run.epoch, "replay_wait_seconds": waited,
            "recovered_to": None if recovered_to is None else float(recovered_to)}


def _recovery_state(run: Run, site: LocalSite | None = None) -> bool | None:
    """pg_is_in_recovery() of `site` (the target by default), or None when it does not answer
    (restarting at the end of recovery, or not up). One in-process connection: a psql is a
    process start."""
    try:
        with psycopg.connect(dsn(site or run.site, run.spec), connect_timeout=2) as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return None


def _writable(run: Run) -> bool:
    return _recovery_state(run) is False


def catch_up_media(run: Run) -> dict:
    """Copy every reachable bucket into the target's (copy never deletes, so this is a union)."""
    inventory = run.inventory
    protection.install_rclone(run.c, inventory, run.site.paths)
    conf = f"{run.site.paths.pgbackrest_dir}/rclone.conf"
    sources = [n for n in inventory.names if n != run.target and run.reachable(n)]
    results = {}
    for name in sources:
        result = media.copy(run.c, conf, media_config.bucket(inventory, name), media_config.bucket(inventory, run.target))
        results[name] = "ok" if result.ok else (result.stderr or "failed").strip().splitlines()[-1]
    return {"from": results}


def start_app(run: Run) -> dict:
    """The target's app with the new epoch (it re-reads its config; started if not running)."""
    run.cloud.write_app_config(run.site, run.spec, run.epoch)
    already = run.cloud.processes.running(f"app-{run.target}")
    run.cloud.start_app(run.site)
    return {"app": "running, config updated" if already else "started", "epoch": run.epoch}


def verify_app(run: Run) -> dict:
    """The target's app answers /healthz as writable with the new epoch."""
    url = f"http://{run.site.address}:{run.spec.app.port}/healthz"
    health = wait_for(lambda: _healthy(url, run.epoch), 30, f"{url} to report writable at epoch {run.epoch}", 0.1)
    return {"healthz": health}


def _healthy(url: str, epoch: int) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            health = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    return health if health.get("writable") and health.get("epoch") == epoch else None


def prepare_dns(run: Run) -> dict:
    """Plan the shift at every provider while the data is being made ready: octoDNS and the
    provider modules are loaded, each zone read, and a provider that is down is known before
    the shift. Nothing is applied; a provider that fails here is tried again by `shift_dns`."""
    config = run.dns()
    results = plan_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl)
    for name in failed(results):
        error = next(r.error for r in results if r.name == name)
        events.warn(f"DNS provider {name} cannot be planned ({error}); `shift_dns` tries it again")
    return {"providers": {r.name: r.status for r in results},
            "changes": {r.name: r.changes for r in results if r.changes}}


def shift_dns(run: Run) -> dict:
    """Point every name at the target at every provider (each independently).

    A provider that fails (it may belong to the cloud that dropped us) is reported, not fatal:
    the step fails only when no provider at all serves the target.
    """
    config = run.dns()
    results = apply_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl,
                         verify_timeout=None)
    _at_least_one(results, failed(results), f"DNS shift to {run.target}",
                  {r.name: r.error for r in results if r.name in failed(results)})
    return {"providers": {r.name: r.status for r in results}, "ttl": config.ttl,
            "failed": {r.name: r.error for r in results if r.name in failed(results)}}


def verify_dns(run: Run) -> dict:
    """The providers' authoritative servers answer the target's address (at least one must)."""
    config = run.dns()
    checks = verify_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl)
    bad = {v.name: v.error for v in checks if not v.ok}
    _at_least_one(checks, list(bad), f"DNS serving {run.target}", bad)
    return {"providers": {v.name: v.seconds for v in checks if v.ok}, "not_serving": bad}


def _at_least_one(results, failed_names: list[str], what: str, errors: dict[str, str]) -> None:
    if results and len(failed_names) == len(results):
        raise FailoverError(f"{what} failed at every provider: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
    for name, error in errors.items():
        events.warn(f"{what}: provider {name} failed ({error}); the others serve it, rerun `failover dns apply` "
                    "when it is back")


def protect_again(run: Run) -> dict:
    """The new primary archives to every remaining site's repository, with a fresh full backup in each."""
    inventory, site = run.inventory, run.site
    skip = run.unreachable()
    for name in inventory.names:
        if name not in skip:
            other = run.cloud.site(name)
            protection.install_pgbackrest(run.c, inventory, name, other.paths, run.port, skip)
            protection.install_rclone(run.c, inventory, other.paths)
    settings = protection.pg_settings(site.address, run.port, site.paths, None)
    postgres.configure(run.c, site.paths.pgdata, settings, protection.HBA)
    postgres.psql(run.c, site.address, run.port, "ALTER SYSTEM RESET synchronous_standby_names")
    postgres.reload(run.c, site.paths.pgdata)
    restarted = _archive_mode_on(run, site)
    # After a promotion pg_control keeps the old timeline until a checkpoint; pgBackRest refuses that.
    postgres.psql(run.c, site.address, run.port, "CHECKPOINT")
    stanzas = []
    if _stanza_missing(run, inventory, site, skip):
        stanzas = protection.create_stanzas(run.c, inventory, site.paths, skip)
    backups = protection.backup_all(run.c, inventory, site.paths, skip)
    failed = [f"{r.repo} ({r.site}): {r.error}" for r in [*stanzas, *backups] if not r.ok]
    if failed:
        raise FailoverError("protecting the new primary failed: " + "; ".join(failed))
    followers = follow(run, skip)
    return {"repositories": [f"{r.repo} ({r.site})" for r in backups], "skipped": sorted(skip),
            "backup_seconds": {r.repo: r.seconds for r in backups}, "followers": followers,
            "restarted_for_archive_mode": restarted}


def _archive_mode_on(run: Run, site: LocalSite) -> bool:
    """A restored cluster runs with archive_mode off (it must not push into the archive it came
    from before protect); archive_mode only changes on restart, so restart it once. Writes
    pause for about a second: the app answers 503 meanwhile, nothing acknowledged is lost."""
    if postgres.psql(run.c, site.address, run.port, "SHOW archive_mode").stdout.strip() != "off":
        return False
    # pgBackRest's --archive-mode=off lands in postgresql.auto.conf, which overrides failover.conf.
    postgres.psql(run.c, site.address, run.port, "ALTER SYSTEM RESET archive_mode")
    postgres.stop(run.c, site.paths.pgdata, "fast")
    postgres.start(run.c, site.paths.pgdata, str(site.logs / "postgresql.log"), timeout=120)
    record_postmaster(run.cloud, site)
    return True


def _stanza_missing(run: Run, inventory, site: LocalSite, skip: set[str]) -> bool:
    return any(repository(run.c, site.paths.config, inventory.repo_index(n), inventory, n)["error"]
               for n in inventory.names if n not in skip)


def follow(run: Run, skip: set[str]) -> list[str]:
    """Other warm sites re-clone from the new primary and stream from it."""
    warm = [s for s in run.cloud.sites() if s.role == "warm" and s.name != run.target and s.name not in skip]
    return [reclone(run, other) for other in warm]


def reclone(run: Run, other: LocalSite) -> str:
    """`other` streams from the new primary, from a fresh clone unless it already does."""
    if _streams_from(run, other.name):
        return f"{other.name}: already streaming"
    postgres.stop(run.c, other.paths.pgdata, "immediate")
    run.cloud.processes.stop(f"pg-{other.name}")
    host_run(run.c, ["rm", "-rf", other.paths.pgdata])
    protection.start_replica(run.c, run.site.address, run.port, other.address, other.paths, other.name,
                             str(other.logs / "postgresql.log"), run.spec.database.replication == "sync")
    record_postmaster(run.cloud, other)
    wait_for(lambda: _streams_from(run, other.name), 60, f"{other.name} to stream from {run.target}")
    return f"{other.name}: re-cloned, streaming"


def _streams_from(run: Run, name: str) -> bool:
    return postgres.streaming(run.c, run.site.address, run.port, name)


Step = tuple[str, Callable[[Run], dict]]

# Steps in one stage run at once, each journaled on its own. Media, the app and the DNS plan
# need nothing from the promotion. Starting the app early and moving DNS to a site that is
# still replaying WAL is safe: the app takes writes only once the new epoch is in a writable
# database, which `take_writes` stores (fencing layer 1), so until then it serves reads and
# answers 409/503 to writes; nothing is acknowledged. Clients that re-resolve during the replay
# read from the new site instead of timing out on the dropped one.
FAILOVER_STAGES: list[list[Step]] = [
    [("preflight", preflight)],
    [("fence", fence)],
    [("capacity", capacity)],
    [("promote", promote_or_restore), ("media", catch_up_media), ("start_app", start_app),
     ("prepare_dns", prepare_dns)],
    [("shift_dns", shift_dns)],
    [("take_writes", take_writes), ("verify_dns", verify_dns)],
    [("verify_app", verify_app)],
    [("protect", protect_again)],
]
STEP_NAMES = [name for stage in FAILOVER_STAGES for name, _ in stage]


def one_at_a_time(steps: list[Step]) -> list[list[Step]]:
    """Stages of one step each, for runbooks whose steps all depend on the one before."""
    return [[step] for step in steps]
