"""pgBackRest configuration for a site, generated from the Inventory (pure: no side effects).

Every site's repository gets the same number on every site (its place in the inventory), so
`--repo=N` means the same store everywhere. Sites that are dropped are left out, which leaves
a gap in the numbering that pgBackRest accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.data import encryption
from infra.data.storage import storage_for
from infra.sites.contract import Inventory

STANZA = "social"


@dataclass(frozen=True)
class HostPaths:
    """Where the database host keeps things (the same layout on a VM or a local site)."""

    pgdata: str
    socket_dir: str
    pgbackrest_dir: str

    @property
    def config(self) -> str:
        return f"{self.pgbackrest_dir}/pgbackrest.conf"

    @property
    def wal_stream(self) -> str:
        """Where pg_receivewal keeps the primary's WAL on a pilot-light host (beside PGDATA)."""
        return f"{Path(self.pgdata).parent}/walstream"

    @property
    def archive_off(self) -> str:
        """While this file exists the cluster's restore_command finds nothing (see protection.restore_command)."""
        return f"{self.pgbackrest_dir}/archive-off"

    @property
    def media_staging(self) -> str:
        """Where the seed writes its media objects on the host before they go, encrypted, into
        every bucket (the app writes straight through its crypt remote, infra/data/encryption.py)."""
        return f"{self.pgbackrest_dir}/media-staging"

    @property
    def host_secrets(self) -> str:
        """NAME=value lines the protector loads: the secrets behind the Inventory's references and
        the encryption keys (mode 600, the service user's)."""
        return f"{self.pgbackrest_dir}/secrets.env"

    @property
    def dirs(self) -> list[str]:
        return [self.pgbackrest_dir, *(f"{self.pgbackrest_dir}/{d}" for d in ("log", "lock", "spool", "media-staging"))]


GLOBAL = {
    "archive-async": "y",
    # A queue limit keeps one dead repository from filling the primary's disk with WAL.
    "archive-push-queue-max": "4GiB",
    "archive-timeout": "30",
    # pgBackRest retries a dead object store about four times io-timeout: keep that short.
    "io-timeout": "10",
    "process-max": "2",
    "compress-type": "lz4",
    "start-fast": "y",
    "delta": "y",
    "log-level-console": "warn",
    "log-level-file": "info",
}


def repositories(inventory: Inventory, exclude: set[str] = frozenset()) -> dict[int, str]:
    """repo number -> site name, for every site not excluded."""
    return {inventory.repo_index(s.site): s.site for s in inventory.sites if s.site not in exclude}


def credential_files(inventory: Inventory, paths: HostPaths, exclude: set[str] = frozenset()) -> dict[str, str]:
    """path -> content of the credentials pgBackRest reads from files (a GCS service key), resolved."""
    files: dict[str, str] = {}
    for index, name in repositories(inventory, exclude).items():
        outputs = inventory.site(name)
        files |= storage_for(outputs.repository.type).credential_files(index, outputs.writer_credentials,
                                                                     paths.pgbackrest_dir, name)
    return files


def render(inventory: Inventory, site: str, paths: HostPaths, db_port: int,
           exclude: set[str] = frozenset(), retention_full: int = 2) -> str:
    """The pgbackrest.conf text for `site`'s database host."""
    lines = ["[global]"]
    lines += [f"{key}={value}" for key, value in GLOBAL.items()]
    lines += [f"{d}-path={paths.pgbackrest_dir}/{d}" for d in ("log", "lock", "spool")]
    for index, name in repositories(inventory, exclude).items():
        outputs = inventory.site(name)
        repo = outputs.repository
        lines.append("")
        lines.append(f"# {name}'s object store")
        options = storage_for(repo.type).repo_options(index, repo, name, outputs.writer_credentials, paths.pgbackrest_dir)
        options |= encryption.repo_options(index)  # client-side: the store's provider sees ciphertext
        lines += [f"{key}={value}" for key, value in options.items()]
        lines.append(f"repo{index}-retention-full={retention_full}")
    lines += ["", f"[{STANZA}]", f"pg1-path={paths.pgdata}", f"pg1-port={db_port}",
              f"pg1-socket-path={paths.socket_dir}", "pg1-user=postgres", ""]
    return "\n".join(lines)
