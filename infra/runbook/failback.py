"""Failback: a planned switchover to a repaired site, with zero acknowledged writes lost.

`failover back --to P` runs these steps, journaled and resumable like `failover run`:
1. claim: the failback's epoch, claimed in a majority of the stores before anything else (as
   the first step of a failover: infra/runbook/claim.py), so a failback and a failover, or two
   failbacks, started together never both raise the epoch; the loser changes nothing;
2. preflight: P is reachable again, the current primary answers, the DNS secrets resolve,
   every reachable host's clock is within the protocol's bound;
3. reseed: P's old data is never trusted: a fresh data directory cloned from the current
   primary (pg_basebackup), started as a streaming replica, plus a media copy;
4. sync: P becomes the primary's synchronous standby and catches up, so from here every
   acknowledged commit is on P's disk;
5. stop_writes: the epoch is raised (inventory, and the primary's failover.epoch row, which
   streams to P); the old primary's app is fenced. The app inserts only while its epoch equals
   the database's, in one statement, so nothing commits for the old epoch after this; the
   step waits for in-flight statements, reads the primary's final LSN and waits until P has
   replayed it;
6. switch: the old primary's PostgreSQL stops (fast shutdown: it sends P everything first), P
   is promoted and becomes the active site;
7-11. media, start_app, verify_app, shift_dns, verify_dns: the same steps as a failover;
12. protect: P archives to every repository with a fresh backup in each; the warm site and
    the old primary (unless it is a pilot-light site) are re-cloned from P, and P's commits wait
    for the spec's standbys again (quorum: any one follower or pilot-light receiver).

Failback runs over SSH only: unlike a failover's `capacity` step it changes no Pulumi stack. A
cloud P whose stack a failover demoted must be given role primary and `pulumi up` by hand
first; what an automated reverse would need is in docs/pulumi.md, "Failover scales the
pilot-light up".
"""
from __future__ import annotations

import time

from infra.errors import FailoverError
from infra.data import media as media_config
from infra.data import protection
from infra.runbook import claim as claim_step
from infra.runbook import steps
from infra.runbook.steps import Run
from infra.sites.processes import wait_for
from infra.sites import services
from infra.sites.protect import clone_replica
from infra.sites.site import PATHS, Site
from playbooks import media

SWITCHOVER = "switchover"


def input_problems(names: list[str], active: str, dropped: set[str], target: str) -> list[str]:
    """Everything wrong with `back --to target`, before anything is touched."""
    if target not in names:
        return [f"unknown site {target!r}: the inventory has {', '.join(names)}"]
    if target == active:
        return [f"site {target} is already the active primary: nothing to fail back"]
    if target in dropped:
        return [f"site {target} is still unreachable (its host does not answer SSH): repair it first "
                f"(on the local cloud: `failover local restore-site --site {target}`)"]
    return []


def data_source(source: str, target: str) -> steps.DataSource:
    return steps.DataSource(SWITCHOVER, f"re-seed {target} from {source} (fresh data directory), then switch over",
                            f"none: writes stop until {target} has replayed {source}'s final LSN")


# ---------------------------------------------------------------- SQL on a given site

def _sql(run: Run, site: Site, sql: str, warn: bool = True) -> str | None:
    result = site.psql(sql, db=run.spec.database.name, warn=warn)
    return result.stdout.strip() if result.ok else None


def _primary_site(run: Run) -> Site:
    return run.fleet.site(run.source)


def _replication(run: Run) -> tuple[str, str, int] | None:
    """(state, sync_state, bytes not yet replayed) of the target as seen by the current primary."""
    row = _sql(run, _primary_site(run),
               "SELECT state, sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint "
               f"FROM pg_stat_replication WHERE application_name = '{run.target}'")
    if not row:
        return None
    state, sync_state, lag = row.split("|")
    return state, sync_state, int(lag or 0)


def _streaming(run: Run) -> bool:
    found = _replication(run)
    return bool(found and found[0] == "streaming")


# ---------------------------------------------------------------- the steps

def preflight(run: Run) -> dict:
    """The repaired site is reachable, the current primary answers as a primary, DNS secrets resolve."""
    if not run.reachable(run.target):
        raise FailoverError(f"site {run.target} ({run.site.address}) is unreachable: repair it before failing back")
    primary = _primary_site(run)
    if _sql(run, primary, "SELECT pg_is_in_recovery()") != "f":
        if run.inventory.active == run.target:
            return {"primary": f"{run.target} is already active (resumed after the switch)"}
        raise FailoverError(f"the active site {run.source} ({primary.address}:{run.port}) does not answer as a primary: "
                            f"a failback is a planned switchover; use `failover run --to {run.target}` instead")
    config = run.dns()
    steps.require_dns_secrets(config)
    return {"primary": run.source, "dns_providers": [p.name for p in config.providers],
            "clocks": steps.check_clocks(run)}


def reseed(run: Run) -> dict:
    """P as a streaming replica of the current primary, from a fresh data directory (over TLS)."""
    site, primary, inventory = run.site, _primary_site(run), run.inventory
    if run.inventory.active == run.target or _streaming(run):
        return {"replica": "already streaming"}
    started = time.monotonic()
    skip = run.unreachable()
    protection.install_pgbackrest(site.service(), inventory, site.name, PATHS, run.port, skip)
    protection.install_rclone(site.service(), inventory, PATHS)
    # Its old data diverged at the cut-off (and may hold writes nobody acknowledged): never reuse it.
    # Synchronous whatever the spec says: the switchover makes it the primary's synchronous standby.
    clone_replica(site, primary, synchronous=True)
    wait_for(lambda: _streaming(run), 120, f"{site.name} to stream from {run.source}")
    clone_seconds = round(time.monotonic() - started, 3)
    conf = protection.rclone_config_path(PATHS)
    copied = media.copy(site.service(), conf, media_config.bucket(inventory, run.source),
                        media_config.bucket(inventory, run.target))
    return {"replica": f"cloned from {run.source}, streaming", "clone_seconds": clone_seconds,
            "media": "copied" if copied.ok else (copied.stderr or "failed").strip()[-200:]}


def sync(run: Run) -> dict:
    """P becomes the primary's synchronous standby and catches up (each commit then waits for P)."""
    if run.inventory.active == run.target:
        return {"sync": "skipped: already switched"}
    primary = _primary_site(run)
    _sql(run, primary, f"ALTER SYSTEM SET synchronous_standby_names = '\"{run.target}\"'", warn=False)
    _sql(run, primary, "SELECT pg_reload_conf()", warn=False)

    def in_sync():
        found = _replication(run)
        return found if found and found[0] == "streaming" and found[1] == "sync" and found[2] < 1 << 20 else None

    state = wait_for(in_sync, 60, f"{run.target} to be {run.source}'s synchronous standby and caught up", 0.1)
    return {"sync_state": state[1], "replay_lag_bytes": state[2]}


def stop_writes(run: Run) -> dict:
    """Raise the epoch, fence the old primary's app, and wait until P replayed the final LSN."""
    steps.raise_epoch(run)
    inventory, primary = run.inventory, _primary_site(run)
    if inventory.active == run.target:
        return {"epoch": run.epoch, "writes": "already switched"}
    clock = time.monotonic()
    # A planned switchover: the old primary's protector stops renewing its lease (it would fence
    # its database on the next claim, before the final LSN is read) and stops copying media.
    services.stop_protector(primary)
    config = primary.app_config()
    if config and not config.get("fenced"):
        primary.write_app_config({**config, "fenced": True})
    # The app's insert is conditional on this row: raising it ends writes for the old epoch at once.
    _sql(run, primary, "UPDATE failover.epoch SET epoch = %d, site = '%s', raised_at = now() WHERE epoch < %d"
         % (run.epoch, run.target, run.epoch), warn=False)
    in_flight = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                 "AND state <> 'idle' AND pid <> pg_backend_pid()")
    wait_for(lambda: _sql(run, primary, in_flight) == "0", 10, f"in-flight statements on {run.source}", 0.05)
    final = _sql(run, primary, "SELECT pg_current_wal_lsn()", warn=False)
    wait_for(lambda: _sql(run, run.site, f"SELECT pg_last_wal_replay_lsn() >= '{final}'::pg_lsn") == "t",
             60, f"{run.target} to replay {run.source}'s final LSN {final}", 0.05)
    return {"epoch": run.epoch, "final_lsn": final, "writes_stopped_seconds": round(time.monotonic() - clock, 3)}


def switch(run: Run) -> dict:
    """Stop the old primary (it sends P everything on a fast shutdown), promote P, make it active."""
    primary = _primary_site(run)
    stopped = False
    if primary.db_running():
        primary.cluster("stop", "fast")
        stopped = True
    clock = time.monotonic()
    if run.site.recovery_state() is not False:
        steps.start_holding(run)  # its lease holds by the time take_writes waits for it
        run.site.cluster("promote")
    promoted = time.monotonic() - clock
    detail = steps.take_writes(run)
    return {**detail, "old_primary_stopped": stopped, "promoted_seconds": round(promoted, 3)}


def protect(run: Run) -> dict:
    """Protect P as after a failover (`sites protect` with P as the primary: the warm site follows
    it, the pilot-light's receiver streams from it); the old primary, unless it is the warm or
    pilot-light site, is re-cloned from P as well, and P's commits wait for the spec's standbys:
    under quorum any one of the followers and the pilot-light receivers, under sync the first
    follower (a warm one first)."""
    detail = steps.protect_again(run)
    old = run.fleet.site(run.source)
    # protect made every reachable warm site a replica of P; they come first as standbys.
    followers = [s.name for s in run.fleet.sites()
                 if s.role == "warm" and s.name != run.target and s.name not in detail["skipped"]]
    if old.role not in ("pilot-light", "warm") and run.reachable(old.name):
        clone_replica(old, run.site, run.spec.database.standbys_reply)
        followers.append(old.name)
    receivers = [s.name for s in run.fleet.sites() if s.role == "pilot-light" and s.name != run.target
                 and s.name not in detail["skipped"]]
    standbys = protection.standby_names(run.spec.database.replication, followers, receivers)
    if standbys:
        _sql(run, run.site, "ALTER SYSTEM SET synchronous_standby_names = '%s'" % standbys.replace("'", "''"),
             warn=False)
        _sql(run, run.site, "SELECT pg_reload_conf()", warn=False)
        detail["synchronous_standbys"] = standbys
    detail["followers"] = followers
    return detail


FAILBACK = [
    (claim_step.CLAIM, claim_step.claim),  # first: the journal is written once it is won (runner.execute)
    ("preflight", preflight),
    ("reseed", reseed),
    ("sync", sync),
    ("stop_writes", stop_writes),
    ("switch", switch),
    ("media", steps.catch_up_media),
    ("start_app", steps.start_app),
    ("verify_app", steps.verify_app),
    ("shift_dns", steps.shift_dns),
    ("verify_dns", steps.verify_dns),
    ("protect", protect),
]
STEP_NAMES = [name for name, _ in FAILBACK]
