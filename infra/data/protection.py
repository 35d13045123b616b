"""Continuous protection of the primary: WAL to every repository, backups, replicas and media.

These functions speak in sites and repositories; the storage type lives in infra.data.storage
and the host commands in playbooks/. Each takes the invoke/Fabric context of the host it acts on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from infra import secrets
from infra.data import encryption
from infra.data import media as media_config
from infra.data import pgbackrest as pgbr_config
from infra.data.pgbackrest import HostPaths
from infra.data.storage import storage_for
from infra.sites.contract import Inventory
from playbooks import media, pgbackrest, postgres
from playbooks.host import run as host_run, write_file


@dataclass(frozen=True)
class RepoResult:
    """The outcome of one operation on one repository, reported by name."""

    repo: str
    site: str
    location: str
    ok: bool
    seconds: float = 0.0
    error: str = ""


def archive_command(paths: HostPaths) -> str:
    return f"pgbackrest --config={paths.config} --stanza={pgbr_config.STANZA} archive-push %p"


def restore_command(paths: HostPaths, pg_path: str | None = None) -> str:
    """archive-get from the repositories, else the site's own WAL stream (pilot-light sites).

    While `paths.archive_off` exists it finds nothing at once: a synchronous standby being
    promoted holds every acknowledged commit, and each look-up (the next segment, the timeline
    history files) would otherwise start a pgBackRest process that asks every repository.
    A file, not a reloaded setting: the startup process may read its config only after the
    promotion's look-ups. `pg_path`: a cluster restored elsewhere than the config's pg1-path
    (archive-get checks it).
    """
    where = f" --pg1-path={pg_path}" if pg_path else ""
    archive = f"pgbackrest --config={paths.config}{where} --stanza={pgbr_config.STANZA} archive-get %f \"%p\""
    return f"test ! -e {paths.archive_off} && {{ {archive} || cp {paths.wal_stream}/%f \"%p\"; }}"


def standby_names(mode: str, warm: list[str], receivers: list[str]) -> str:
    """synchronous_standby_names for the spec's replication mode (docs/quorum.md).

    quorum: a commit waits for any one of the warm replicas and the pilot-lights' WAL receivers
    (each connects with its site's name as application_name); sync: for the first warm replica;
    async (or nobody to wait for): for none."""
    if mode == "quorum" and warm + receivers:
        return "ANY 1 (" + ", ".join(f'"{name}"' for name in warm + receivers) + ")"
    if mode == "sync" and warm:
        return f'"{warm[0]}"'
    return ""


def pg_settings(address: str, port: int, paths: HostPaths, standbys: str = "") -> dict[str, str]:
    """The settings every site's cluster runs with; only address, port and paths differ.
    `standbys`: the primary's synchronous_standby_names (`standby_names`)."""
    return {
        "listen_addresses": address,
        "port": str(port),
        "unix_socket_directories": paths.socket_dir,
        "wal_level": "replica",
        # pg_rewind needs it (the clusters have no data checksums): a secondary whose timeline
        # diverged rejoins by rewinding the blocks it changed instead of a whole new clone.
        "wal_log_hints": "on",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        # A WAL stream whose receiver is gone must not fill the primary's disk.
        "max_slot_wal_keep_size": "1GB",
        "wal_keep_size": "512MB",
        "hot_standby": "on",
        "archive_mode": "on",
        "archive_command": archive_command(paths),
        # A forced segment switch pads the segment to 16 MB, and the padding is written, streamed
        # to every replica and archived like WAL: at 2 s it was 8 MB/s of WAL under pgbench for
        # 1.5 MB/s of changes. The replica and the pilot-light's WAL stream bound what a failover
        # loses; the archive is the fallback behind them, at most this old.
        "archive_timeout": "30",
        "restore_command": restore_command(paths),
        "synchronous_standby_names": standbys,
        "max_connections": "60",
        "shared_buffers": "128MB",
        "wal_compression": "lz4",
    }


HBA = [
    "local all all trust",
    "local replication all trust",
    # The local cloud is loopback-only; cloud sites use TLS and passwords (cloud-init).
    "host all all 127.0.0.0/8 trust",
    "host replication all 127.0.0.0/8 trust",
]


def install_pgbackrest(c, inventory: Inventory, site: str, paths: HostPaths, db_port: int,
                       exclude: set[str] = frozenset()) -> None:
    text = pgbr_config.render(inventory, site, paths, db_port, exclude)
    pgbackrest.install_config(c, paths.config, text, paths.dirs)
    for path, content in pgbr_config.credential_files(inventory, paths, exclude).items():
        write_file(c, path, content, mode="600")


def host_secrets(inventory: Inventory) -> dict[str, str]:
    """NAME -> value of every env/NAME reference in the Inventory's stores and credentials (the
    witnesses' too, which the primary's lease writes to), and of the encryption keys: what a host
    needs to render pgBackRest's and rclone's configs itself."""
    names: dict[str, str] = {}
    for outputs in [*inventory.sites, *inventory.witnesses]:
        for value in (*outputs.repository.options.values(), *outputs.media_remote.options.values(),
                      *outputs.writer_credentials.values()):
            if secrets.is_ref(value):
                names[secrets.REF.match(value).group(1)] = secrets.resolve(value, f"site {outputs.site}'s store")
    return names | encryption.key_environment()


def install_host_secrets(c, inventory: Inventory, paths: HostPaths) -> None:
    write_file(c, paths.host_secrets, secrets.render_env(host_secrets(inventory)))


def rclone_config_path(paths: HostPaths) -> str:
    return f"{paths.pgbackrest_dir}/rclone.conf"


def install_rclone(c, inventory: Inventory, paths: HostPaths) -> str:
    """The host's rclone.conf (mode 600: it holds the crypt remotes' passwords); returns its path."""
    path = rclone_config_path(paths)
    write_file(c, path, media_config.render(inventory))
    return path


def location(inventory: Inventory, site: str) -> str:
    """Where a site's repository lives, for results and messages: its type and its store's
    description (a path, or bucket and endpoint)."""
    repo = inventory.site(site).repository
    return f"{repo.type}:{storage_for(repo.type).describe(repo)}"


def _each_repo(inventory: Inventory, exclude: set[str], action) -> list[RepoResult]:
    results = []
    for index, site in pgbr_config.repositories(inventory, exclude).items():
        started = time.monotonic()
        result = action(index)
        repo = inventory.site(site).repository
        error = "" if result.ok else storage_for(repo.type).explain(site, repo, result.stderr or result.stdout, index)
        results.append(RepoResult(f"repo{index}", site, location(inventory, site), result.ok,
                                  round(time.monotonic() - started, 3), error))
    return results


def create_stanzas(c, inventory: Inventory, paths: HostPaths, exclude: set[str] = frozenset()) -> list[RepoResult]:
    """pgBackRest creates the stanza in all configured repositories at once; reported per repository."""
    result = pgbackrest.stanza_create(c, paths.config)
    return _each_repo(inventory, exclude, lambda i: result)


def backup_all(c, inventory: Inventory, paths: HostPaths, exclude: set[str] = frozenset(),
               kind: str = "full") -> list[RepoResult]:
    """A backup into every repository in turn; one failing repository does not stop the others."""
    return _each_repo(inventory, exclude, lambda i: pgbackrest.backup(c, paths.config, i, kind))


def sync_media(c, rclone_conf: str, inventory: Inventory, source: str, targets: list[str]) -> list[RepoResult]:
    """Copies `source` (a site's media through its crypt remote, `media_config.bucket`, or a
    directory on the host) into each target site's bucket, through its crypt remote."""
    results = []
    for target in targets:
        started = time.monotonic()
        result = media.copy(c, rclone_conf, source, media_config.bucket(inventory, target))
        outputs = inventory.site(target)
        error = "" if result.ok else storage_for(outputs.repository.type).explain_media(
            target, outputs.media_remote, result.stderr)
        results.append(RepoResult("media", target, outputs.media_remote.path, result.ok,
                                  round(time.monotonic() - started, 3), error))
    return results


def fetch_media(c, rclone_conf: str, inventory: Inventory, sources: list[str], target: str) -> dict[str, str]:
    """Every source site's media into the target site's bucket, crypt remote to crypt remote (a
    union: copy never deletes); per source, "ok" or the reason it failed."""
    results = {}
    for name in sources:
        result = media.copy(c, rclone_conf, media_config.bucket(inventory, name), media_config.bucket(inventory, target))
        results[name] = "ok" if result.ok else (result.stderr or "failed").strip().splitlines()[-1][-200:]
    return results


def prestage(c, inventory: Inventory, site: str, paths: HostPaths, db_port: int,
             exclude: set[str] = frozenset()) -> RepoResult:
    """Keeps a pilot-light site's data directory restored (not running) from its own repository.

    A failover's restore is then a delta over it (pgBackRest copies only the files that
    changed) instead of a full copy of the database.
    """
    from invoke.exceptions import UnexpectedExit

    from playbooks.host import ensure_dir

    started = time.monotonic()
    ensure_dir(c, paths.pgdata)
    install_pgbackrest(c, inventory, site, paths, db_port, exclude)
    index = inventory.repo_index(site)
    try:
        pgbackrest.restore(c, paths.config, index)
        error = ""
    except UnexpectedExit as failure:
        repo = inventory.site(site).repository
        error = storage_for(repo.type).explain(site, repo, failure.result.stderr, index)
    return RepoResult(f"prestage repo{index}", site, location(inventory, site), not error,
                      round(time.monotonic() - started, 3), error)


def stream_slot(site: str) -> str:
    return "stream_" + "".join(ch if ch.isalnum() else "_" for ch in site)


def start_wal_stream(c, table, site: str, paths: HostPaths, primary_host: str, db_port: int, log,
                     nice: int = 0) -> None:
    """pg_receivewal from the primary into the site's own disk: a pilot-light site then loses at
    most what was in flight when the primary died, not the archive's last ~2 s segment switch.
    `nice` lowers its CPU priority (the bench's stand-in for another host)."""
    from playbooks.host import ensure_dir

    ensure_dir(c, paths.wal_stream)
    slot = stream_slot(site)
    postgres.psql(c, primary_host, db_port, f"SELECT pg_create_physical_replication_slot('{slot}') WHERE NOT EXISTS "
                  f"(SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}')")
    prefix = ["nice", "-n", str(nice)] if nice else []
    argv = [f"{postgres.BIN}/pg_receivewal", "-D", paths.wal_stream, "-h", primary_host, "-p", str(db_port),
            "-U", "postgres", "-S", slot, "-w"]
    table.start(f"receivewal-{site}", [*prefix, *argv], log, user="postgres")


def replica_settings(address: str, port: int, paths: HostPaths, synchronous: bool) -> dict[str, str]:
    """A replica's settings: the site's own, and no per-write replies when asynchronous.

    A walreceiver reports its positions to the primary after every write and every flush of
    what it receives, and each report wakes the primary's walsender again. Only a synchronous
    standby needs them, to release the commits that wait for it. With 0 an asynchronous one
    reports only when its replay has caught up and when the walsender asks (wal_sender_timeout / 2),
    so lag is read on the replica (infra.status), not from pg_stat_replication.
    """
    settings = pg_settings(address, port, paths)
    if not synchronous:
        settings["wal_receiver_status_interval"] = "0"
    return settings


def start_replica(c, primary_host: str, db_port: int, address: str, paths: HostPaths, name: str, log: str,
                  synchronous: bool = True) -> None:
    """A streaming replica of the primary (pg_basebackup -R), started with the site's own settings.

    `synchronous`: whether the primary may wait for it (see replica_settings)."""
    host_run(c, ["rm", "-f", paths.archive_off])  # left behind by a promotion that never finished
    postgres.clone_replica(c, paths.pgdata, primary_host, db_port, name)
    postgres.configure(c, paths.pgdata, replica_settings(address, db_port, paths, synchronous), HBA)
    postgres.start(c, paths.pgdata, log)
