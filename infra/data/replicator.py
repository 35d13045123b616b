"""The protector: on the primary's database host, keeps WAL and media flowing to every other site.

Run as `python3 -m infra.data.replicator INVENTORY SITE --pgdata D --socket-dir S --pgbackrest-dir P`
by supervisor, as the service user (infra/sites/services.start_protector), so its commands run
directly on the host. Each round re-reads the Inventory file, which the runbook rewrites; once
it names another site active, this host is no longer the primary and the protector does
nothing until it is named again. Two loops run side by side, each every second:
- WAL: repositories that this host cannot reach are left out of its pgBackRest config, and put
  back (with a backup into them) when they answer again: while one repository is down,
  archive-push still copies each segment into the others but exits non-zero, so PostgreSQL keeps
  the segment `.ready`, its archiver stalls and pg_wal grows on the primary;
- media: the active site's bucket is copied to every other bucket this host can reach, through
  their crypt remotes (infra/data/encryption.py).
A pilot-light's WAL stream is not the protector's: `sites protect` runs pg_receivewal there.
Every problem is logged with the site's name; the other sites keep being protected.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from invoke import Context

from infra import secrets
from infra.data import media as media_config
from infra.data import protection
from infra.data.pgbackrest import HostPaths
from infra.data.storage import storage_for
from infra.sites.contract import Inventory
from playbooks import pgbackrest

INTERVAL = 1.0


def log(message: str) -> None:
    print(message, flush=True)  # supervisor keeps it in the program's log


# ---------------------------------------------------------------- decisions

def protecting(inventory: Inventory, site: str) -> bool:
    """This host protects only while the Inventory names its site active."""
    return inventory.active == site


def unreachable(c, inventory: Inventory) -> set[str]:
    """The sites whose store this host cannot reach (each storage type's own `reachable`)."""
    return {s.site for s in inventory.sites if not storage_for(s.repository.type).reachable(c, s.repository)}


def media_targets(inventory: Inventory, down: set[str]) -> list[str]:
    """Every other site's bucket that answers: the active bucket is copied there (crypt remote to
    crypt remote: only ciphertext reaches any bucket)."""
    return [n for n in inventory.names if n != inventory.active and n not in down]


# ---------------------------------------------------------------- the WAL round

def archive_only_to_reachable(c, inventory: Inventory, paths: HostPaths, down: set[str], state: dict) -> None:
    """Rewrites this host's pgBackRest config when the set of unreachable repositories changes."""
    key = (inventory.active, frozenset(down))
    previous = state.get("excluded")
    if previous == key:
        return
    protection.install_pgbackrest(c, inventory, inventory.active, paths, inventory.site(inventory.active).db_port, down)
    same_primary = previous is not None and previous[0] == inventory.active
    if same_primary and down - previous[1]:
        # A running archive-push may be stuck retrying the repository that went away: only
        # archive-push is ended, a backup keeps running. Not when the primary changed: the
        # runbook wrote the new primary's config before promoting it, and ending a healthy
        # archive-push costs PostgreSQL's archiver up to archive-timeout (30 s) of waiting.
        ended = pgbackrest.interrupt_archiving(c, paths.config)
        if ended:
            log(f"ended {len(ended)} archive-push processes on {inventory.active} (a repository went away)")
    if previous is not None or down:
        left_out = ", ".join(f"repo{inventory.repo_index(n)} ({n})" for n in sorted(down)) or "none"
        log(f"archiving from {inventory.active}; repositories left out: {left_out}")
    state["excluded"] = key
    rejoined = previous[1] - down if same_primary else set()
    if rejoined:
        back_up_rejoined(c, inventory, paths, rejoined)


def back_up_rejoined(c, inventory: Inventory, paths: HostPaths, names: set[str]) -> None:
    """A repository that comes back missed the WAL archived while it was away: a backup into it
    (incremental where it has a full one) makes it usable for restores again."""
    for name in sorted(names):
        index = inventory.repo_index(name)
        result = pgbackrest.backup(c, paths.config, index, "incr")
        log(f"repo{index} ({name}) is back: backup "
            + ("done" if result.ok else f"failed: {result.stderr.strip().splitlines()[-1:]}"))


# ---------------------------------------------------------------- the media round

def copy_media(c, inventory: Inventory, paths: HostPaths, down: set[str], state: dict) -> list:
    """The active bucket to every reachable bucket (rclone copy: never deletes at the target)."""
    rclone_conf = protection.rclone_config_path(paths)
    if state.get("rclone") != inventory.to_json():  # the remotes follow the Inventory
        protection.install_rclone(c, inventory, paths)
        state["rclone"] = inventory.to_json()
    return protection.sync_media(c, rclone_conf, inventory, media_config.bucket(inventory, inventory.active),
                                 media_targets(inventory, down))


def load_host_secrets(paths: HostPaths) -> None:
    """The secrets the engine left for this host (services.start_protector) into the environment,
    where env/NAME references find them; rewritten by the engine, so read every round."""
    secrets.load_env_file(paths.host_secrets, override=True)


# ---------------------------------------------------------------- the loops

class Protector:
    """One host's protector: where its Inventory is, which site it protects from, its layout."""

    def __init__(self, inventory_file: Path, site: str, paths: HostPaths):
        self.inventory_file, self.site, self.paths = inventory_file, site, paths
        self._active = True
        self._lock = threading.Lock()

    def inventory(self) -> Inventory | None:
        """The Inventory as last written, or None while it names another site active."""
        inventory = Inventory.load(self.inventory_file)
        load_host_secrets(self.paths)
        active = protecting(inventory, self.site)
        with self._lock:  # both loops read it: say once that this host stands down (or resumes)
            if active != self._active:
                self._active = active
                log(f"the inventory names {inventory.active} active (epoch {inventory.epoch}): "
                    + (f"protecting from {self.site} again" if active else f"{self.site} stands down"))
        return inventory if active else None

    def wal_round(self, c, state: dict) -> list:
        inventory = self.inventory()
        if inventory is not None:
            archive_only_to_reachable(c, inventory, self.paths, unreachable(c, inventory), state)
        return []

    def media_round(self, c, state: dict) -> list:
        inventory = self.inventory()
        if inventory is None:
            return []
        return copy_media(c, inventory, self.paths, unreachable(c, inventory), state)


def forever(round_, what: str) -> None:
    """Runs a round every INTERVAL seconds with its own local context (one per thread)."""
    c, state = Context(), {}
    while True:
        try:
            for result in round_(c, state):
                if not result.ok:
                    log(f"media copy to {result.site} ({result.location}) failed: {result.error}")
        except Exception as error:  # keep protecting: a bad round is logged, the next one retries
            log(f"{what} round failed: {error}")
        time.sleep(INTERVAL)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m infra.data.replicator", description=__doc__.split("\n")[0])
    parser.add_argument("inventory", type=Path, help="the Inventory file the engine writes on this host")
    parser.add_argument("site", help="the site this host belongs to")
    for option in ("--pgdata", "--socket-dir", "--pgbackrest-dir"):
        parser.add_argument(option, required=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    paths = HostPaths(pgdata=args.pgdata, socket_dir=args.socket_dir, pgbackrest_dir=args.pgbackrest_dir)
    protector = Protector(args.inventory, args.site, paths)
    log(f"protector of {args.site}: inventory {args.inventory}, pgBackRest config {paths.config}")
    # Two loops, so that a media copy hanging on a store that just died (rclone can take a
    # minute to give up on a cloud bucket) never delays taking that store out of WAL archiving.
    threading.Thread(target=forever, args=(protector.wal_round, "WAL protection"), daemon=True).start()
    forever(protector.media_round, "media")


if __name__ == "__main__":
    main(sys.argv[1:])
