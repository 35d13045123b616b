"""`failover status`: per site, role, reachability, database, replica lag, repositories and media.

Every probe runs on a site's host over SSH (`Site.service()`, psql through the unix socket):
the operator is in no cloud's database firewall. A site is reachable when its database host
answers an SSH round trip (`Fleet.reachable`, the one definition). Repositories are read with
pgBackRest, and media compared with rclone, on a reachable host, so a dropped site's store
shows as unreachable from the sites that remain instead of being read behind their back.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from infra.data import lease
from infra.data import media as media_config
from infra.data import protection
from infra.data.storage import storage_for
from infra.sites.contract import Inventory
from infra.sites.fleet import Fleet
from infra.sites import services
from infra.sites.site import PATHS, Site, SiteError
from playbooks import media, pgbackrest

LAG_SECONDS = ("CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
               "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END")

def replica_lag(primary: Site | None, replica: Site) -> tuple[float | None, int | None]:
    """Seconds and bytes the replica's replay is behind the primary, both read on the replica.

    pg_stat_replication lags for an asynchronous replica, which does not report every write
    (protection.replica_settings). The primary's position is read first, so a replica that
    catches up meanwhile shows 0, not a negative lag; with no primary (None: unreachable),
    bytes are None.
    """
    lsn = ""
    if primary is not None:
        current = primary.psql("SELECT pg_current_wal_lsn()", warn=True)
        lsn = current.stdout.strip() if current.ok else ""
    behind = f"greatest(0, pg_wal_lsn_diff('{lsn}', pg_last_wal_replay_lsn()))::bigint" if lsn else "NULL"
    result = replica.psql(f"SELECT {LAG_SECONDS}, {behind}", warn=True)
    if not result.ok or "|" not in result.stdout:
        return None, None
    seconds, lag_bytes = result.stdout.strip().split("|")
    return (float(seconds) if seconds else None), (int(lag_bytes) if lag_bytes else None)


def commit_waits(mode: str, standby_names: str, rows: list[tuple[str, str, str]]) -> dict:
    """Whom the primary's commits wait for, from its synchronous_standby_names and its
    pg_stat_replication rows (application_name, state, sync_state).

    `candidates` are the connected standbys that may acknowledge a commit (sync_state sync or
    quorum, while streaming): none while standbys are named means commits block."""
    candidates = sorted(name for name, state, sync_state in rows
                        if state == "streaming" and sync_state in ("sync", "quorum"))
    if not standby_names:
        waits = "nobody: commits are acknowledged on the primary's disk alone (asynchronous)"
    elif candidates:
        quorum = standby_names.upper().startswith("ANY ")
        waits = (f"any one of {', '.join(candidates)}" if quorum and len(candidates) > 1
                 else ", ".join(candidates))
    else:
        waits = f"nobody connected: commits wait until one of {standby_names} streams again"
    return {"mode": mode, "synchronous_standby_names": standby_names, "candidates": candidates,
            "connected": {name: sync_state for name, state, sync_state in rows}, "waits_for": waits,
            "blocked": bool(standby_names) and not candidates}


def replication(primary: Site, mode: str) -> dict:
    """`commit_waits` read on the primary's host (one psql)."""
    result = primary.psql(["SHOW synchronous_standby_names",
                           "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1"], warn=True)
    lines = result.stdout.splitlines() if result.ok else []
    if not lines:
        return {"mode": mode, "error": f"the primary {primary.name} did not answer"}
    rows = [tuple(line.split("|")) for line in lines[1:] if line.count("|") == 2]
    return commit_waits(mode, lines[0].strip(), rows)


def _entry(inventory, index: int, name: str, error: str | None = None) -> dict:
    repo = inventory.site(name).repository
    return {"name": f"repo{index}", "index": index, "site": name, "type": repo.type,
            "location": storage_for(repo.type).describe(repo),
            "last_backup": None, "last_archived_wal": None, "backups": 0, "error": error}


def repository(c, config: str, index: int, inventory, name: str) -> dict:
    """Site `name`'s repository as seen from the host `c` runs on (its pgBackRest config `config`)."""
    entry, repo = _entry(inventory, index, name), inventory.site(name).repository
    if not storage_for(repo.type).reachable(c, repo):
        entry["error"] = f"unreachable: {entry['location']} does not answer from {getattr(c, 'host', 'here')}"
        return entry
    info, error = pgbackrest.info(c, config, index)
    if info is None or info.get("status", {}).get("code") not in (0, None):
        entry["error"] = error or (info or {}).get("status", {}).get("message", "no stanza")
        return entry
    backups = info.get("backup", [])
    if backups:
        stop = backups[-1]["timestamp"]["stop"]
        entry["last_backup"] = datetime.fromtimestamp(stop, timezone.utc).isoformat()
        entry["backups"] = len(backups)
    archives = [a for a in info.get("archive", []) if a.get("max")]
    entry["last_archived_wal"] = max((a["max"] for a in archives), default=None)
    return entry


def newest_repository(entries: list[dict]) -> dict | None:
    """The `repository` entry to restore from: the newest archived WAL, then the newest backup.
    None when no entry holds a backup."""
    usable = [e for e in entries if e.get("last_backup")]
    return max(usable, key=lambda e: (e.get("last_archived_wal") or "", e["last_backup"]), default=None)


def probe_host(fleet: Fleet, inventory: Inventory, prefer: str | None = None) -> Site | None:
    """The reachable site to read repositories and media from: `prefer`, then the active site,
    then the others in inventory order, whichever first answers SSH and holds a pgBackRest
    config (a protected site). None when none does."""
    for name in dict.fromkeys([n for n in (prefer, inventory.active) if n] + inventory.names):
        site = fleet.site(name)
        if fleet.reachable(name) and site.service().run(f"test -r {PATHS.config}", warn=True).ok:
            return site
    return None


def collect(fleet: Fleet, check_media: bool = True, mode: str = "quorum") -> dict:
    """The status report; `mode` is the spec's database.replication."""
    inventory = fleet.inventory()
    active = fleet.site(inventory.active)
    primary = active if fleet.reachable(active.name) and active.recovery_state() is False else None
    host = probe_host(fleet, inventory)
    conf = protection.install_rclone(host.service(), inventory, PATHS) if host and check_media else None
    report = [_site(fleet, inventory, site, primary, host, conf) for site in fleet.sites()]
    commits = replication(primary, mode) if primary else {"mode": mode, "error": "no primary answers"}
    return {"active": inventory.active, "epoch": inventory.epoch, "replication": commits, "sites": report,
            "lease": lease_status(fleet, inventory)}


def lease_status(fleet: Fleet, inventory: Inventory) -> dict:
    """The primary's lease as the stores hold it (read from here: a partitioned primary's own
    word, fenced and why, is in whichever store it could still write), and as its protector
    last saw it on its host (over SSH, when the host answers)."""
    seen = lease.summary(lease.read(lease.stores(inventory)))
    host = services.lease_state(fleet.site(inventory.active)) if fleet.reachable(inventory.active) else None
    if host and host.get("holder") == inventory.active:
        seen["host"] = {k: host.get(k) for k in ("state", "reason", "why", "renewed", "stores", "fence",
                                                  "held_for", "round_seconds", "commit")}
        seen["commit"] = host.get("commit") or {}
    fenced = (host or {}).get("state") == lease.FENCED or seen["state"] == lease.FENCED
    seen["fenced"] = fenced
    seen["why"] = ((host or {}).get("reason") if (host or {}).get("state") == lease.FENCED else seen["reason"]) or ""
    if seen["renewed_at"] is not None:
        seen["age_seconds"] = round(time.time() - seen["renewed_at"], 1)  # this host's clock against the holder's
    return seen


def _site(fleet: Fleet, inventory: Inventory, site: Site, primary: Site | None, host: Site | None,
          conf: str | None) -> dict:
    reachable = fleet.reachable(site.name)
    state = site.recovery_state() if reachable else None
    database = "unknown" if not reachable else ("up" if state is not None else
                                                ("down" if site.db_running() else "none"))
    lag = replica_lag(primary, site) if state is True and site is not primary else (None, None)
    entry = {
        "name": site.name, "role": "primary" if site.name == inventory.active else site.role,
        "address": site.address, "host": site.db_host, "reachable": reachable, "database": database,
        "in_recovery": state, "replica_lag_seconds": lag[0], "replica_lag_bytes": lag[1],
        "repositories": [_repository(host, inventory, site.name)],
    }
    if conf is not None:
        entry["media"] = _media(host, conf, inventory, site.name)
    return entry


def _repository(host: Site | None, inventory: Inventory, name: str) -> dict:
    index = inventory.repo_index(name)
    if host is None:
        return _entry(inventory, index, name,
                      "no reachable site with a pgBackRest config to read it from: run `failover sites protect`")
    return repository(host.service(), PATHS.config, index, inventory, name)


def _media(host: Site, conf: str, inventory: Inventory, name: str) -> dict:
    """The site's bucket against the active site's, compared on `host` (rclone check --one-way,
    through their crypt remotes: names and sizes, as two crypt remotes share no hash)."""
    c, active = host.service(), inventory.active
    outputs = inventory.site(name)
    storage = storage_for(outputs.repository.type)
    if not storage.reachable(c, outputs.repository):  # rclone check counts a dead store as a difference
        return {"in_sync": False, "missing": None,
                "error": f"unreachable: {storage.media_where(outputs.media_remote)} does not answer from {host.name}"}
    try:
        if name == active:
            objects = media.count(c, conf, media_config.bucket(inventory, name))
            return {"in_sync": objects is not None, "missing": 0 if objects is not None else None, "objects": objects,
                    "error": None if objects is not None else f"bucket of {name} unreadable from {host.name}"}
        result = media.check(c, conf, media_config.bucket(inventory, active), media_config.bucket(inventory, name))
    except SiteError as error:
        return {"in_sync": False, "missing": None, "error": str(error)}
    return {"in_sync": result["ok"] and not result["missing"], "missing": len(result["missing"]),
            "error": result["error"] or None}
