"""`failover snapshot` and `failover restore`: backups on demand, and restores that prove themselves.

A snapshot backs up into every reachable repository, records the checksum manifest of the
data it covers in every reachable site's store (`.failover/checksums.json`, through
Storage.put), and syncs media. A restore checks everything first (target site, repository,
reachability), then restores the database and media, and verifies row counts and per-table
checksums against the live source or, when the source is gone, against that manifest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg

from invoke import Context

from infra.errors import FailoverError
from infra.data import integrity, protection
from infra.data import media as media_config
from infra.data.storage import Store
from infra.sites.database import dsn, record_postmaster
from infra.sites.local import LocalCloud, LocalSite
from infra.sites.processes import wait_for
from infra.spec import Spec
from infra.sites.reachability import unreachable
from infra.status import db_reachable, newest_repository, repository
from playbooks import media, pgbackrest, postgres
from playbooks.host import run as host_run



def snapshot(cloud: LocalCloud, spec: Spec, kind: str, progress) -> dict:
    c = Context()
    inventory = cloud.inventory()
    active = cloud.site(inventory.active)
    if not db_reachable(c, active, spec.database.port):
        raise FailoverError(f"the active site {active.name} ({active.address}:{spec.database.port}) is unreachable: "
                            "run `failover run --to <site>` to fail over before taking snapshots")
    skip = unreachable(c, cloud)
    progress(f"backing up {active.name} ({kind}) into every reachable repository")
    results = protection.backup_all(c, inventory, active.paths, skip, kind)
    integrity.write_manifest(dsn(active, spec), [Store(s) for s in inventory.sites if s.site not in skip], active.name)
    results += [protection.prestage(c, inventory, s.name, s.paths, spec.database.port, skip) for s in cloud.sites()
                if s.role == "pilot-light" and s.name not in skip | {active.name}]
    targets = [n for n in inventory.names if n != active.name and n not in skip]
    results += protection.sync_media(c, f"{active.paths.pgbackrest_dir}/rclone.conf", inventory, active.name, targets)
    skipped = [{"repo": f"repo{inventory.repo_index(n)}", "site": n, "location": inventory.site(n).repository.options.get("path", ""),
                "ok": False, "seconds": 0, "error": "site unreachable (dropped or storage not readable)"} for n in sorted(skip)]
    entries = [r.__dict__ for r in results] + skipped
    return {"ok": all(e["ok"] for e in entries), "results": entries}


def choose_repo(c, config: str, inventory, target: str, wanted: str | None, skip: set[str]) -> tuple[int, str]:
    """The repository to restore from: the one asked for, or the reachable one with the newest backup.

    `config` is a pgBackRest config naming every repository, on the host `c` runs on.
    """
    reachable = [n for n in inventory.names if n not in skip]
    if wanted:
        name = next((n for n in inventory.names if wanted in (n, f"repo{inventory.repo_index(n)}")), None)
        if name is None:
            raise FailoverError(f"--repo {wanted!r} is neither a site nor a repoN of: "
                                + ", ".join(f"repo{inventory.repo_index(n)} ({n})" for n in inventory.names))
        if name in skip:
            raise FailoverError(f"repository of site {name} ({inventory.site(name).repository.options.get('path')}) "
                                "is unreachable; choose another with --repo or leave it out to use the newest reachable")
        return inventory.repo_index(name), name
    entries = [repository(c, config, inventory.repo_index(n), inventory, n) for n in reachable]
    best = newest_repository(entries)
    if best is None:
        details = "; ".join(f"{e['name']} at {e['site']}: {e['error'] or 'no backup'}" for e in entries) or "none reachable"
        raise FailoverError(f"no reachable repository holds a backup ({details}); nothing to restore {target} from")
    return best["index"], best["site"]


def _check_target(cloud: LocalCloud, inventory, name: str) -> LocalSite:
    target = cloud.site(name)
    if name == inventory.active:
        raise FailoverError(f"site {name} is the active primary; restore into another site (a restore replaces its data)")
    if name in cloud.dropped():
        raise FailoverError(f"site {name} is dropped (its storage is unreachable); choose a site that is up")
    return target


@dataclass(frozen=True)
class RestorePlan:
    """What `failover restore --yes` does, decided before anything changes: the site whose data
    is replaced, the repository it comes from, the point in time, and the sites left out."""

    site: str
    repo_index: int
    repo_site: str
    target_time: str | None
    skip: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"site": self.site, "repo": f"repo{self.repo_index}", "source_site": self.repo_site,
                "target_time": self.target_time, "unreachable": list(self.skip),
                "replaces": f"the database and media of {self.site}"}


def plan(cloud: LocalCloud, spec: Spec, site: str, repo: str | None, target_time: str | None) -> RestorePlan:
    """Checks the target and chooses the repository; changes nothing."""
    c = Context()
    inventory = cloud.inventory()
    target = _check_target(cloud, inventory, site)
    if target_time:
        pgbackrest_time(target_time)  # a bad time is refused before anything changes
    skip = unreachable(c, cloud, inventory)
    reachable = [n for n in inventory.names if n not in skip]
    config = cloud.site(reachable[0]).paths.config if reachable else target.paths.config
    index, source_site = choose_repo(c, config, inventory, target.name, repo, skip)
    return RestorePlan(target.name, index, source_site, target_time, tuple(sorted(skip)))


def restore(cloud: LocalCloud, spec: Spec, the_plan: RestorePlan, progress) -> dict:
    """Applies a plan from `plan()`: restores the database and media, then verifies them."""
    c = Context()
    inventory = cloud.inventory()
    target, index, source_site, target_time = (cloud.site(the_plan.site), the_plan.repo_index, the_plan.repo_site,
                                               the_plan.target_time)
    started = time.monotonic()
    progress(f"restoring {target.name} from repo{index} ({source_site})" + (f" to {target_time}" if target_time else ""))
    restore_database(c, cloud, spec, inventory, target, index, set(the_plan.skip), target_time)
    progress("copying media from the repository's site")
    conf = f"{target.paths.pgbackrest_dir}/rclone.conf"
    protection.install_rclone(c, inventory, target.paths)
    media.copy(c, conf, media_config.bucket(inventory, source_site), media_config.bucket(inventory, target.name))
    seconds = round(time.monotonic() - started, 2)
    progress("verifying row counts and per-table checksums")
    result = verify(c, cloud, spec, inventory, target, source_site, conf)
    return {"site": target.name, "repo": f"repo{index}", "source_site": source_site, "target_time": target_time,
            "seconds": seconds, **result}


def restore_database(c, cloud: LocalCloud, spec: Spec, inventory, target: LocalSite, index: int, skip: set[str],
                     target_time: str | None, wait: bool = True) -> None:
    """Replaces the target's cluster with one restored from repo `index`, started and promoted.

    The restored cluster gets the target's own address and port, and archiving off: it must
    not push into the archive it came from until the runbook protects it again. It answers
    read-only queries once consistent; `wait=False` returns then, while it still replays WAL
    (it promotes itself at the end).
    """
    postgres.stop(c, target.paths.pgdata, "immediate")
    cloud.processes.stop(f"pg-{target.name}")
    cloud.processes.stop(f"receivewal-{target.name}")
    protection.install_pgbackrest(c, inventory, target.name, target.paths, spec.database.port, skip)
    pgbackrest.restore(c, target.paths.config, index, pgbackrest_time(target_time) if target_time else None,
                       restore_command=protection.restore_command(target.paths))
    complete_partial_segments(c, target.paths.wal_stream)
    settings = protection.pg_settings(target.address, spec.database.port, target.paths)
    settings["archive_mode"] = "off"
    postgres.configure(c, target.paths.pgdata, settings, protection.HBA)
    postgres.start(c, target.paths.pgdata, str(target.logs / "postgresql.log"), timeout=600)
    record_postmaster(cloud, target)
    if wait:
        wait_for(lambda: not postgres.in_recovery(c, target.address, spec.database.port), 600,
                 f"{target.name} to finish recovery and promote")


def complete_partial_segments(c, stream: str) -> None:
    """pg_receivewal names the segment it was writing `*.partial`; recovery asks for the plain
    name, and replays its records up to the last complete one."""
    host_run(c, ["sh", "-c", f'for f in {stream}/*.partial; do [ -e "$f" ] && [ ! -e "${{f%.partial}}" ] '
                             f'&& cp "$f" "${{f%.partial}}"; done; true'], warn=True)


def pgbackrest_time(value: str) -> str:
    """pgBackRest wants 'YYYY-MM-DD HH:MM:SS.mmm+00'; accept any ISO 8601 time with a zone."""
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T", 1) if "T" not in value else value)
    except ValueError:
        raise FailoverError(f"--target-time {value!r} is not an ISO 8601 time such as 2026-11-28 18:00:00+00:00") from None
    if moment.tzinfo is None:
        raise FailoverError(f"--target-time {value!r} needs a time zone, e.g. {value}+00:00")
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}+00"


def verify(c, cloud: LocalCloud, spec: Spec, inventory, target: LocalSite, source_site: str, conf: str) -> dict:
    restored = integrity.checksums(dsn(target, spec))
    active = cloud.site(inventory.active)
    if inventory.active not in cloud.dropped() and db_reachable(c, active, spec.database.port):
        source, against = integrity.checksums(dsn(active, spec), integrity.max_ids(restored)), f"live {active.name}"
        restored_range = restored
    else:
        manifest = integrity.read_manifest([Store(inventory.site(source_site))])
        if manifest is None:
            raise FailoverError(f"the source {inventory.active} is unreachable and no checksum manifest is in "
                                f"{source_site}'s bucket: cannot verify; run `failover snapshot` while the primary is up")
        source, against = manifest["tables"], f"manifest in {source_site}'s store"
        restored_range = integrity.checksums(dsn(target, spec), integrity.max_ids(source))
    checks = integrity.compare(restored_range, source)
    keys = media.list_keys(c, conf, media_config.bucket(inventory, target.name)) or set()
    with psycopg.connect(dsn(target, spec)) as conn:
        wanted = {row[0] for row in conn.execute("SELECT key FROM media")}
        wanted |= {row[0] for row in conn.execute("SELECT media_key FROM posts WHERE media_key IS NOT NULL")}
    missing = sorted(wanted - keys)
    verified = all(x["match"] for x in checks.values()) and not missing
    return {"verified": verified, "against": against, "checks": checks, "media_missing": len(missing),
            "media_missing_keys": missing[:20], "rows": {t: restored[t]["rows"] for t in restored}}
