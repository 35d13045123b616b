"""`failover status`: per site, role, reachability, replica lag, repositories and media.

Every probe runs as the service user from a host that is up, so a dropped site (processes
stopped, storage unreadable) shows as unreachable instead of being read behind its back.
"""
from __future__ import annotations

from datetime import datetime, timezone

from invoke import Context

from infra.data import media as media_config
from infra.data.storage import storage_for
from infra.sites.local import LocalCloud, LocalSite
from infra.sites.reachability import database_answers, reachable
from playbooks import media, pgbackrest, postgres
from playbooks.host import run

LAG_SECONDS = ("CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
               "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END")


db_reachable = database_answers  # the name the status code and its callers use


def store_reachable(c, site: LocalSite) -> bool:
    """The site's local store directory is readable: where journal copies are written as files
    (runner.journal_copies). Whether a site is reachable is `reachability.reachable`."""
    return run(c, ["test", "-r", str(site.store), "-a", "-x", str(site.store)], warn=True).ok


def replica_lag(c, primary: LocalSite, site: LocalSite, port: int) -> tuple[float | None, int | None]:
    """Seconds and bytes the replica's replay is behind the primary, both read on the replica.

    pg_stat_replication lags for an asynchronous replica, which does not report every write
    (protection.replica_settings). The primary's position is read first, so a replica that
    catches up meanwhile shows 0, not a negative lag; with the primary unreachable, bytes are None.
    """
    current = postgres.psql(c, primary.address, port, "SELECT pg_current_wal_lsn()", warn=True)
    lsn = current.stdout.strip() if current.ok else ""
    behind = f"greatest(0, pg_wal_lsn_diff('{lsn}', pg_last_wal_replay_lsn()))::bigint" if lsn else "NULL"
    result = postgres.psql(c, site.address, port, f"SELECT {LAG_SECONDS}, {behind}", warn=True)
    if not result.ok or "|" not in result.stdout:
        return None, None
    seconds, lag_bytes = result.stdout.strip().split("|")
    return (float(seconds) if seconds else None), (int(lag_bytes) if lag_bytes else None)


def repository(c, config: str, index: int, inventory, name: str) -> dict:
    repo = inventory.site(name).repository
    entry = {"name": f"repo{index}", "index": index, "site": name, "type": repo.type,
             "location": storage_for(repo.type).describe(repo),
             "last_backup": None, "last_archived_wal": None, "backups": 0, "error": None}
    if not storage_for(repo.type).reachable(c, repo):
        entry["error"] = f"unreachable: {entry['location']} does not answer from here"
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


def collect(cloud: LocalCloud, db_port: int, check_media: bool = True) -> dict:
    c = Context()
    inventory = cloud.inventory()
    sites = {s.name: s for s in cloud.sites()}
    active = sites[inventory.active]
    config_host = next((s for s in sites.values() if reachable(c, cloud, s.name, inventory)), active)
    report = [_site(c, cloud, inventory, site, active, config_host, db_port, check_media) for site in sites.values()]
    return {"active": inventory.active, "epoch": inventory.epoch, "sites": report}


def _site(c, cloud, inventory, site, active, config_host, db_port, check_media) -> dict:
    dropped = site.name in cloud.dropped()
    store_ok = reachable(c, cloud, site.name, inventory)
    runs_db = cloud.processes.running(f"pg-{site.name}")
    db_ok = runs_db and db_reachable(c, site, db_port)
    role = site.role if site.name != inventory.active else "primary"
    lag_s, lag_b = (None, None)
    if db_ok and site.name != active.name and postgres.in_recovery(c, site.address, db_port):
        lag_s, lag_b = replica_lag(c, active, site, db_port)
    index = inventory.repo_index(site.name)
    repos = [repository(c, config_host.paths.config, index, inventory, site.name)]
    entry = {
        "name": site.name, "role": role, "address": site.address, "dropped": dropped,
        "reachable": store_ok and (db_ok or not runs_db), "database": "up" if db_ok else ("down" if runs_db else "none"),
        "replica_lag_seconds": lag_s, "replica_lag_bytes": lag_b, "repositories": repos,
    }
    if check_media:
        entry["media"] = _media(c, inventory, active, site, store_ok)
    return entry


def _media(c, inventory, active: LocalSite, site: LocalSite, reachable: bool) -> dict:
    conf = f"{active.paths.pgbackrest_dir}/rclone.conf"
    if not reachable:
        return {"in_sync": False, "missing": None, "error": "store unreachable"}
    if site.name == active.name:
        return {"in_sync": True, "missing": 0, "objects": media.count(c, conf, media_config.bucket(inventory, site.name))}
    result = media.check(c, conf, media_config.bucket(inventory, active.name), media_config.bucket(inventory, site.name))
    return {"in_sync": result["ok"] and not result["missing"], "missing": len(result["missing"]),
            "error": result["error"] or None}
