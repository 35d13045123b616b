"""`failover snapshot` and `failover restore`: backups on demand, and restores that prove themselves.

Everything runs on the sites' hosts over SSH (a Fleet's Sites): pgBackRest, rclone and psql
run there as the service user; the operator only reads and writes the stores (Store). A
snapshot backs up into every reachable repository, records the checksum manifest of the data
it covers in every reachable site's store (`.failover/checksums.json`), keeps pilot-light
sites prestaged and syncs media. A restore checks everything first (`plan`: target site,
repository, reachability), then restores the database and media, and verifies row counts and
per-table checksums against the live primary or, when it is gone, against that manifest.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from infra.data import integrity, protection
from infra.data import media as media_config
from infra.data.storage import Store
from infra.errors import FailoverError
from infra.sites.contract import Inventory
from infra.sites.fleet import Fleet
from infra.sites.processes import wait_for
from infra.sites.protect import WALSTREAM_PROGRAM, site_settings
from infra.sites.site import PATHS, SETTINGS_FILE, Site
from infra.spec import Spec
from infra.status import newest_repository, probe_host, repository
from playbooks import media, pgbackrest, postgres
from playbooks.host import run as host_run


def snapshot(fleet: Fleet, spec: Spec, kind: str, progress) -> dict:
    inventory = fleet.inventory()
    active = fleet.site(inventory.active)
    if not fleet.reachable(active.name) or active.recovery_state() is not False:
        raise FailoverError(f"the active site {active.name} (host {active.db_host}) does not answer SSH or its "
                            "database takes no writes: run `failover run --to <site>` to fail over before "
                            "taking snapshots")
    skip = fleet.unreachable()
    c = active.service()
    # Checksums first: every row they count was committed before the backups start, so any
    # restore of these backups (or later) holds it.
    sums = integrity.checksums_of(active, spec.database.name)
    progress(f"backing up {active.name} ({kind}) into every reachable repository")
    results = protection.backup_all(c, inventory, PATHS, skip, kind)
    if any(r.ok for r in results):
        integrity.put_manifest(sums, [Store(inventory.site(n)) for n in inventory.names if n not in skip], active.name)
    results += [protection.prestage(s.service(), inventory, s.name, PATHS, s.port, skip) for s in fleet.sites()
                if s.role == "pilot-light" and s.name not in skip | {active.name} and not s.db_running()]
    targets = [n for n in inventory.names if n != active.name and n not in skip]
    results += protection.sync_media(c, protection.install_rclone(c, inventory, PATHS), inventory,
                                     media_config.bucket(inventory, active.name), targets)
    skipped = [{"repo": f"repo{inventory.repo_index(n)}", "site": n,
                "location": protection.location(inventory, n), "ok": False, "seconds": 0,
                "error": f"site unreachable: host {fleet.site(n).db_host} does not answer SSH"} for n in sorted(skip)]
    entries = [r.__dict__ for r in results] + skipped
    return {"ok": all(e["ok"] for e in entries), "results": entries}


def choose_repo(c, config: str, inventory, target: str, wanted: str | None, skip: set[str]) -> tuple[int, str]:
    """The repository to restore from: the one asked for, or the reachable one with the newest backup.

    `config` is a pgBackRest config naming every repository, on the host `c` runs on.
    """
    if wanted:
        name = next((n for n in inventory.names if wanted in (n, f"repo{inventory.repo_index(n)}")), None)
        if name is None:
            raise FailoverError(f"--repo {wanted!r} is neither a site nor a repoN of: "
                                + ", ".join(f"repo{inventory.repo_index(n)} ({n})" for n in inventory.names))
        if name in skip:
            raise FailoverError(f"--repo {wanted!r}: repo{inventory.repo_index(name)} of site {name} "
                                f"({protection.location(inventory, name)}) is unreachable (the site "
                                "does not answer); choose another with --repo, or leave it out to use the newest reachable")
        entry = repository(c, config, inventory.repo_index(name), inventory, name)
        if not entry["last_backup"]:
            raise FailoverError(f"--repo {wanted!r}: {entry['name']} of site {name} holds no backup "
                                f"({entry['error'] or 'none taken'}); run `failover snapshot` or choose another --repo")
        return entry["index"], name
    entries = [repository(c, config, inventory.repo_index(n), inventory, n) for n in inventory.names if n not in skip]
    best = newest_repository(entries)
    if best is None:
        details = "; ".join(f"{e['name']} at {e['site']}: {e['error'] or 'no backup'}" for e in entries) or "none reachable"
        raise FailoverError(f"no reachable repository holds a backup ({details}); nothing to restore {target} from")
    return best["index"], best["site"]


def _check_target(fleet: Fleet, inventory: Inventory, name: str) -> Site:
    target = fleet.site(name)  # an unknown name is refused there, with the inventory's names
    if name == inventory.active:
        raise FailoverError(f"site {name} is the active primary; restore into another site (a restore replaces "
                            "its data), or fail over first with `failover run --to <site>`")
    if not fleet.reachable(name):
        raise FailoverError(f"site {name}: host {target.db_host} does not answer SSH as {target.outputs.ssh_user}; "
                            "a restore runs on the site's own host: bring it back, or restore into another site")
    target.check_sudo()
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


def plan(fleet: Fleet, spec: Spec, site: str, repo: str | None, target_time: str | None) -> RestorePlan:
    """Checks the target, the point in time and the repository; changes nothing."""
    inventory = fleet.inventory()
    target = _check_target(fleet, inventory, site)
    if target_time:
        pgbackrest_time(target_time)  # a bad time is refused before anything changes
    skip = fleet.unreachable()
    host = probe_host(fleet, inventory, prefer=target.name)
    if host is None:
        raise FailoverError(f"no reachable site has a pgBackRest config ({PATHS.config}) to read the repositories "
                            "with: run `failover sites protect` first")
    index, source_site = choose_repo(host.service(), PATHS.config, inventory, target.name, repo, skip)
    return RestorePlan(target.name, index, source_site, target_time, tuple(sorted(skip)))


def restore(fleet: Fleet, spec: Spec, the_plan: RestorePlan, progress) -> dict:
    """Applies a plan from `plan()`: restores the database and media, then verifies them."""
    inventory = fleet.inventory()
    target, index, source_site = fleet.site(the_plan.site), the_plan.repo_index, the_plan.repo_site
    started = time.monotonic()
    progress(f"restoring {target.name} (host {target.db_host}) from repo{index} ({source_site})"
             + (f" to {the_plan.target_time}" if the_plan.target_time else ""))
    restore_database(target, inventory, index, set(the_plan.skip), the_plan.target_time)
    progress(f"copying media from {source_site}'s bucket")
    conf = protection.install_rclone(target.service(), inventory, PATHS)
    copied = media.copy(target.service(), conf, media_config.bucket(inventory, source_site),
                        media_config.bucket(inventory, target.name))
    seconds = round(time.monotonic() - started, 2)
    progress("verifying row counts and per-table checksums")
    result = verify(fleet, spec, inventory, target, source_site, conf)
    return {"site": target.name, "repo": f"repo{index}", "source_site": source_site,
            "target_time": the_plan.target_time, "seconds": seconds,
            "media_error": None if copied.ok else copied.stderr.strip()[-300:], **result}


def restore_database(site: Site, inventory: Inventory, index: int, skip: set[str], target_time: str | None,
                     wait: bool = True) -> None:
    """Replaces the site's cluster with one restored from repo `index`, started and promoted.

    The restored cluster gets the site's own address and port, TLS, and archiving off: it must
    not push into the archive it came from until the runbook protects it again (protect's
    settings turn it back on: pgBackRest is told not to pin archive_mode in postgresql.auto.conf).
    It answers read-only queries once consistent; `wait=False` returns then, while it still
    replays WAL (it promotes itself at the end).
    """
    c = site.service()
    if site.db_running():
        site.cluster("stop", mode="immediate")
    # A pilot-light's WAL receiver stops while the restore runs (supervisorctl costs 0.3-0.6 s;
    # the restore does not touch the stream's directory), and before its last segment is read.
    with ThreadPoolExecutor(1) as pool:
        receiver = pool.submit(site.supervise, WALSTREAM_PROGRAM, "stop")
        protection.install_pgbackrest(c, inventory, site.name, PATHS, site.port, skip)
        c.run(f"rm -f {PATHS.archive_off}")  # left by a promotion that never finished: recovery needs the archive
        pgbackrest.restore(c, PATHS.config, index, pgbackrest_time(target_time) if target_time else None,
                           archive_off=False, restore_command=protection.restore_command(PATHS))
        receiver.result()
    complete_partial_segments(c, PATHS.wal_stream)
    settings = {**site_settings(site, site, "", False), "archive_mode": "off"}  # a primary's, TLS included
    site.write(SETTINGS_FILE, postgres.render_settings(settings))
    site.start_cluster()
    if wait:
        wait_for(lambda: site.recovery_state() is False, 600, f"{site.name} to finish recovery and promote", 0.3)


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


def verify(fleet: Fleet, spec: Spec, inventory: Inventory, target: Site, source_site: str, conf: str) -> dict:
    """Row counts and checksums of the restored site against the live primary (read on its host),
    or against the manifest in the stores when the primary does not answer; and the media the
    restored rows name, present in the target's bucket (read through its crypt remote)."""
    db = spec.database.name
    restored = integrity.checksums_of(target, db)
    active = fleet.site(inventory.active)
    if fleet.reachable(active.name) and active.recovery_state() is False:
        source, against = integrity.checksums_of(active, db, integrity.max_ids(restored)), f"live {active.name}"
        restored_range = restored
    else:
        names = [source_site] + [n for n in inventory.names if n != source_site and fleet.reachable(n)]
        manifest = integrity.read_manifest([Store(inventory.site(n)) for n in names])
        if manifest is None:
            raise FailoverError(f"the active site {active.name} does not answer and no checksum manifest "
                                f"({integrity.MANIFEST}) is in the stores of {', '.join(names)}: cannot verify; "
                                "run `failover snapshot` while the primary is up")
        source, against = manifest["tables"], f"manifest of {manifest.get('taken')} in the stores"
        restored_range = integrity.checksums_of(target, db, integrity.max_ids(source))
    checks = integrity.compare(restored_range, source)
    keys = media.list_keys(target.service(), conf, media_config.bucket(inventory, target.name)) or set()
    named = target.psql("SELECT key FROM media UNION SELECT media_key FROM posts WHERE media_key IS NOT NULL", db)
    missing = sorted(set(named.stdout.split()) - keys)
    verified = all(x["match"] for x in checks.values()) and not missing
    return {"verified": verified, "against": against, "checks": checks, "media_missing": len(missing),
            "media_missing_keys": missing[:20], "rows": {t: restored[t]["rows"] for t in restored}}
