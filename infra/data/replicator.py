"""The protector: on the primary's database host, keeps WAL and media flowing to every other site.

Run as `python3 -m infra.data.replicator INVENTORY SITE --pgdata D --socket-dir S --pgbackrest-dir P`
by supervisor, as the service user (infra/sites/services.start_protector), so its commands run
directly on the host. Each round re-reads the Inventory file, which the runbook rewrites; once
it names another site active, this host is no longer the primary and the protector does
nothing until it is named again. Three loops run side by side, each every second:
- the lease (infra/data/lease.py): renewed in every store; when it cannot be renewed at a
  majority for the lease time, or a store lists a higher claimed epoch, the protector fences
  its own database (`fence_database`: PostgreSQL stopped, fast, then immediate, then SIGKILL)
  and stands down for good: only an operator's `sites protect` or a failback brings it back;
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
import json
import sys
import threading
import time
from pathlib import Path

from invoke import Context

from infra import secrets
from infra.data import fallback as fallback_mod
from infra.data import lease as lease_mod
from infra.data import media as media_config
from infra.data import protection
from infra.data.pgbackrest import HostPaths
from infra.data.storage import Store, storage_for
from infra.sites.contract import Inventory
from playbooks import host, pgbackrest

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


# ---------------------------------------------------------------- the fence

FENCE_SCRIPT = (
    # PostgreSQL stopped: `fast` ends every session at once (a commit still waiting for a
    # standby is never acknowledged: its connection is closed) and refuses new ones. In a
    # partition the fast stop always hangs on walsenders whose standby is cut off (measured:
    # 3 s timeout, the database gone 8.2-8.5 s after the cut, past the 8 s lease), so after 1 s
    # `immediate`, then SIGKILL: the stop must end inside the lease's guard (lease.GUARD).
    'd={pgdata}; [ -e "$d/postmaster.pid" ] || {{ echo "not running"; exit 0; }}; '
    'b=/usr/lib/postgresql/$(cat "$d/PG_VERSION")/bin; '
    '"$b/pg_ctl" -D "$d" stop -m fast -t 1 >/dev/null 2>&1 && {{ echo "stopped (fast)"; exit 0; }}; '
    '"$b/pg_ctl" -D "$d" stop -m immediate -t 3 >/dev/null 2>&1 && {{ echo "stopped (immediate)"; exit 0; }}; '
    'p=$(head -n 1 "$d/postmaster.pid" 2>/dev/null); [ -n "$p" ] && kill -9 "$p" 2>/dev/null; sleep 0.5; '
    'if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo "still running (pid $p)"; exit 1; fi; '
    'echo "killed (SIGKILL to pid $p)"')


def local_sql(c, paths: HostPaths, port: int, sql: str) -> str:
    """One statement on this host's PostgreSQL (unix socket, peer authentication), within 5 s:
    a database that hangs must not hold the commit-mode loop for long."""
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", paths.socket_dir, "-p", str(port), "-d", "postgres",
            "-c", sql]
    return host.run(c, argv, timeout=5).stdout.strip()


def fence_database(c, paths: HostPaths) -> str:
    """Stops this host's PostgreSQL so that nothing commits any more, and says how.

    Stopping is the fence, not `default_transaction_read_only`: the app connects as the
    `postgres` superuser (peer authentication on the unix socket, like the protector), and any
    session, superuser or not, may SET that setting back or BEGIN READ WRITE; pg_hba cannot
    tell the app from the protector. A stopped postmaster takes no commit from anyone."""
    result = c.run(FENCE_SCRIPT.format(pgdata=paths.pgdata), hide=True, warn=True, timeout=15, in_stream=False)
    detail = (result.stdout or "").strip() or (result.stderr or "").strip()[-200:]
    return detail if result.ok else f"could not confirm: {detail}"


def state_file(paths: HostPaths) -> Path:
    return Path(paths.pgbackrest_dir) / "lease-state.json"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def save_state(paths: HostPaths, state: "lease_mod.HolderState", commit: dict | None = None) -> None:
    """The holder's state beside pgBackRest's config, for `status` over SSH and for a restarted
    protector (the last held round on this boot's monotonic clock, and whether it fenced), with
    the commit mode (the asynchronous fallback); the same as metrics in Prometheus' text format."""
    doc = {**state.to_dict(), "last_held_monotonic": state.last_held, "boot_id": boot_id(), "at": time.time(),
           "commit": commit or {}}
    _write(state_file(paths), json.dumps(doc, indent=1))
    _write(metrics_file(paths), metrics(doc))


def metrics_file(paths: HostPaths) -> Path:
    return Path(paths.pgbackrest_dir) / "metrics.prom"  # node_exporter's textfile collector can read it


def metrics(doc: dict) -> str:
    """Gauges for the lease and the commit mode (one site's host: labelled by the holder)."""
    label = f'{{site="{doc["holder"]}",epoch="{doc["epoch"]}"}}'
    rounds = doc.get("round_seconds") or [0.0]
    commit = doc.get("commit") or {}
    lines = [("failover_lease_held", int(doc["state"] == lease_mod.HELD)),
             ("failover_lease_fenced", int(doc["state"] == lease_mod.FENCED)),
             ("failover_lease_stores_renewed", len(doc.get("renewed") or [])),
             ("failover_lease_round_seconds", rounds[-1]),
             ("failover_commit_asynchronous", int(commit.get("mode") == fallback_mod.ASYNC)),
             ("failover_commit_mode_changes_total", commit.get("changes", 0))]
    return "".join(f"{name}{label} {value}\n" for name, value in lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as error:
        log(f"could not write {path}: {error}")


def load_state(paths: HostPaths) -> dict:
    try:
        doc = json.loads(state_file(paths).read_text())
    except (OSError, ValueError):
        return {}
    return doc if doc.get("boot_id") == boot_id() else {}


# ---------------------------------------------------------------- the loops

class Protector:
    """One host's protector: where its Inventory is, which site it protects from, its layout."""

    def __init__(self, inventory_file: Path, site: str, paths: HostPaths, lease: bool = True,
                 async_after: float = fallback_mod.AFTER):
        self.inventory_file, self.site, self.paths = inventory_file, site, paths
        self._active = True
        self._lock = threading.Lock()
        self.lease_enabled = lease
        self.holder: lease_mod.Holder | None = None
        self.fallback: fallback_mod.Fallback | None = None
        self.async_after = async_after

    @property
    def fenced(self) -> bool:
        return self.holder is not None and self.holder.state.state == lease_mod.FENCED

    def inventory(self) -> Inventory | None:
        """The Inventory as last written, or None while it names another site active (or this
        primary fenced itself)."""
        inventory = Inventory.load(self.inventory_file)
        load_host_secrets(self.paths)
        if self.fenced and protecting(inventory, self.site) and inventory.epoch > self.holder.state.epoch:
            # Fenced is final at its epoch only: the engine named this site active at a later one
            # (a failover back to it), so it holds a new lease from a fresh start.
            log(f"{self.site} is named active at epoch {inventory.epoch}: a new lease (it fenced itself at epoch "
                f"{self.holder.state.epoch})")
            self.holder, self.fallback = None, None
        active = protecting(inventory, self.site) and not self.fenced
        if not protecting(inventory, self.site) and self.holder is not None and not self.fenced:
            self.holder.stop()  # another site is active: this host holds no lease and fences nothing
            self.holder = None
        with self._lock:  # both loops read it: say once that this host stands down (or resumes)
            if active != self._active:
                self._active = active
                log(f"the inventory names {inventory.active} active (epoch {inventory.epoch}): "
                    + (f"protecting from {self.site} again" if active else f"{self.site} stands down"))
        return inventory if active else None

    def lease_round(self, c, state: dict) -> list:
        """Starts the lease holder once this host protects (its threads then run by themselves)."""
        inventory = self.inventory()
        if inventory is not None and self.lease_enabled and self.holder is None:
            self.holder = self.new_holder(c, inventory)
            self.holder.start()
        return []

    def new_holder(self, c, inventory: Inventory) -> lease_mod.Holder:
        stores = lease_mod.stores(inventory)
        holder = lease_mod.Holder(self.site, inventory.epoch, stores, lambda v: fence_database(Context(), self.paths),
                                  log, on_change=self.save)
        saved = load_state(self.paths)
        if saved.get("epoch") == inventory.epoch and saved.get("holder") == self.site:
            if saved.get("state") == lease_mod.FENCED:  # fenced before a restart: stays fenced
                holder.state.state, holder.state.reason = lease_mod.FENCED, saved.get("reason", "")
                holder.state.why, holder.state.fence_detail = saved.get("why", ""), saved.get("fence", "")
                log(f"{self.site} stays fenced (epoch {inventory.epoch}): {holder.state.reason}")
            elif saved.get("last_held_monotonic") is not None:  # the lease it held runs out as before
                holder.state.last_held = float(saved["last_held_monotonic"])
        log(f"lease of {self.site} at epoch {inventory.epoch} in {len(stores)} stores: {lease_mod.LENGTH:.0f} s, "
            f"renewed every {lease_mod.RENEW_EVERY:.0f} s, fenced {lease_mod.GUARD:.0f} s before it runs out")
        return holder

    def save(self, state: "lease_mod.HolderState") -> None:
        save_state(self.paths, state, self.fallback.status() if self.fallback else None)

    def commit_round(self, c, state: dict) -> list:
        """The asynchronous fallback (infra/data/fallback.py), only while this host holds the lease."""
        inventory = self.inventory()
        holder = self.holder
        if inventory is None or holder is None or self.fenced:
            return []
        if self.fallback is None:
            port = inventory.site(self.site).db_port
            self.fallback = fallback_mod.Fallback(lambda sql: local_sql(c, self.paths, port, sql), log,
                                                  self.async_after)
        if self.fallback.round(time.monotonic(), holder.holding(), holder.state.last_held):
            self.save(holder.state)
        return []

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
    parser.add_argument("--no-lease", action="store_true", help="renew no lease and never fence (tests only)")
    parser.add_argument("--async-after", type=float, default=fallback_mod.AFTER,
                        help="seconds without a synchronous standby before committing alone (while the lease holds)")
    for option in ("--pgdata", "--socket-dir", "--pgbackrest-dir"):
        parser.add_argument(option, required=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    paths = HostPaths(pgdata=args.pgdata, socket_dir=args.socket_dir, pgbackrest_dir=args.pgbackrest_dir)
    protector = Protector(args.inventory, args.site, paths, lease=not args.no_lease, async_after=args.async_after)
    log(f"protector of {args.site}: inventory {args.inventory}, pgBackRest config {paths.config}")
    # The lease's own threads (infra/data/lease.py Holder) renew and decide; this loop only
    # starts them once the Inventory names this site active.
    threading.Thread(target=forever, args=(protector.lease_round, "lease"), daemon=True).start()
    threading.Thread(target=forever, args=(protector.commit_round, "commit mode"), daemon=True).start()
    # Two loops, so that a media copy hanging on a store that just died (rclone can take a
    # minute to give up on a cloud bucket) never delays taking that store out of WAL archiving.
    threading.Thread(target=forever, args=(protector.wal_round, "WAL protection"), daemon=True).start()
    forever(protector.media_round, "media")


if __name__ == "__main__":
    main(sys.argv[1:])
