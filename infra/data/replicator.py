"""The local cloud's protector: keeps WAL and media flowing from the active site to every other site.

Run as `python -m infra.data.replicator WORKDIR`; on a cloud VM the same round runs from a
systemd timer. Two loops run side by side, each every second:
- repositories that do not answer are left out of the active site's pgBackRest config, and put
  back when they answer again: pgBackRest's archive-push fails for all repositories while one
  is down, so one dead store would otherwise hold WAL back from all the others;
- media the app staged locally goes into the active site's bucket (object stores only);
- the active bucket is copied to every other reachable site's bucket;
- each pilot-light site streams the active primary's WAL (pg_receivewal) to its own disk.
Every problem is logged with the site's name; the other sites keep being protected.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from invoke import Context

from infra.data import protection
from infra.sites.local import LocalCloud
from infra.sites.reachability import unreachable
from playbooks import pgbackrest

INTERVAL = 1.0


def archive_only_to_reachable(c, cloud: LocalCloud, inventory, down: set[str], state: dict) -> None:
    """Rewrites the active site's pgBackRest config when the set of unreachable repositories changes."""
    key = (inventory.active, frozenset(down))
    previous = state.get("excluded")
    if previous == key:
        return
    source = cloud.site(inventory.active)
    protection.install_pgbackrest(c, inventory, source.name, source.paths, inventory.site(source.name).db_port, down)
    same_primary = previous is not None and previous[0] == inventory.active
    if same_primary and down - previous[1]:
        # A running archive-push may be stuck retrying the repository that went away: only
        # archive-push is ended, a backup keeps running. Not when the primary changed: the
        # runbook wrote the new primary's config before promoting it, and ending a healthy
        # archive-push costs PostgreSQL's archiver up to archive-timeout (30 s) of waiting.
        ended = pgbackrest.interrupt_archiving(c, source.paths.config)
        if ended:
            print(f"ended {len(ended)} archive-push processes on {source.name} (a repository went away)", flush=True)
    if previous is not None or down:
        left_out = ", ".join(f"repo{inventory.repo_index(n)} ({n})" for n in sorted(down)) or "none"
        print(f"archiving from {source.name}; repositories left out: {left_out}", flush=True)
    state["excluded"] = key
    rejoined = previous[1] - down if same_primary else set()
    if rejoined:
        back_up_rejoined(c, inventory, source, rejoined)


def back_up_rejoined(c, inventory, source, names: set[str]) -> None:
    """A repository that comes back missed the WAL archived while it was away: a backup into it
    (incremental where it has a full one) makes it usable for restores again."""
    for name in sorted(names):
        result = pgbackrest.backup(c, source.paths.config, inventory.repo_index(name), "incr")
        print(f"repo{inventory.repo_index(name)} ({name}) is back: backup "
              + ("done" if result.ok else f"failed: {result.stderr.strip().splitlines()[-1:]}"), flush=True)


def stream_to_pilot_lights(c, cloud: LocalCloud, inventory, state: dict) -> None:
    """Keeps one pg_receivewal per pilot-light site following the active primary."""
    active = inventory.site(inventory.active)
    for site in cloud.sites():
        name = f"receivewal-{site.name}"
        if site.role != "pilot-light" or site.name in cloud.dropped() or site.name == inventory.active:
            if cloud.processes.running(name):
                cloud.processes.stop(name)
            continue
        if state.get(name) == inventory.active and cloud.processes.running(name):
            continue
        cloud.processes.stop(name)
        protection.start_wal_stream(c, cloud.processes, site.name, site.paths, active.db_host, active.db_port,
                                    site.logs / "receivewal.log")
        state[name] = inventory.active
        print(f"streaming WAL from {inventory.active} to {site.name}", flush=True)


def protect_wal(cloud: LocalCloud, state: dict) -> list:
    """The fast round: which repositories get WAL, and the pilot-light streams."""
    inventory = cloud.inventory()
    c = Context()
    archive_only_to_reachable(c, cloud, inventory, unreachable(c, cloud, inventory), state)
    stream_to_pilot_lights(c, cloud, inventory, state)
    return []


def copy_media(cloud: LocalCloud, state: dict) -> list:
    """The media round: staged uploads, then the active bucket to every reachable site."""
    inventory = cloud.inventory()
    c = Context()
    down = unreachable(c, cloud, inventory)
    source = cloud.site(inventory.active)
    targets = [n for n in inventory.names if n != inventory.active and n not in down]
    rclone_conf = f"{source.paths.pgbackrest_dir}/rclone.conf"
    staged = protection.upload_staged_media(c, rclone_conf, inventory, inventory.active, str(source.media_dir))
    return staged + protection.sync_media(c, rclone_conf, inventory, inventory.active, targets)


def forever(round_, cloud: LocalCloud, what: str) -> None:
    state: dict = {}
    while True:
        try:
            for result in round_(cloud, state):
                if not result.ok:
                    print(f"media copy to {result.site} ({result.location}) failed: {result.error}", flush=True)
        except Exception as error:  # keep protecting: a bad round is logged, the next one retries
            print(f"{what} round failed: {error}", flush=True)
        time.sleep(INTERVAL)


def main(workdir: str) -> None:
    # Two loops, so that a media copy hanging on a store that just died (rclone can take a
    # minute to give up on Azure) never delays taking that store out of WAL archiving.
    cloud = LocalCloud(Path(workdir))
    threading.Thread(target=forever, args=(protect_wal, cloud, "WAL protection"), daemon=True).start()
    forever(copy_media, cloud, "media")


if __name__ == "__main__":
    main(sys.argv[1])
