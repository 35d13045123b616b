"""The embedded local cloud: each site is real processes on its own loopback address.

A site has a PostgreSQL 15 cluster (run as the `postgres` user), an object-store directory
holding its pgBackRest repository and media bucket, and the reference app. The layout under
the work directory is:

    cloud.json               which sites exist, their roles and addresses
    inventory.json           every site's SiteOutputs (the same document a cloud site exports)
    pids/                    one PID file per server started (stopped by PID, nothing else)
    sites/<name>/pg          PGDATA            sites/<name>/run   the socket directory
    sites/<name>/pgbackrest  pgbackrest.conf, log, lock, spool
    sites/<name>/store       the object store: pgbackrest/ (repository) and media/ (bucket)
    sites/<name>/app.json    the app's config (site, DSN, epoch)

Dropping a site kills its processes and makes its directory unreadable to the service user,
so any recovery that tries to use it fails loudly instead of silently reading it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from infra import secrets
from infra.data.pgbackrest import HostPaths
from infra.data.storage import Store, put_all
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable
from infra.spec import Spec

SERVICE_USER = "postgres"
INVENTORY_COPY = ".failover/inventory.json"  # in every site's store (beside its media)
DEFAULT_PREFIX = "127.0.10"


@dataclass(frozen=True)
class LocalSite:
    name: str
    role: str
    address: str
    root: str

    @property
    def paths(self) -> HostPaths:
        return HostPaths(pgdata=f"{self.root}/pg", socket_dir=f"{self.root}/run",
                         pgbackrest_dir=f"{self.root}/pgbackrest")

    @property
    def store(self) -> Path:
        return Path(self.root) / "store"

    @property
    def media_dir(self) -> Path:
        return self.store / "media"

    @property
    def app_config(self) -> Path:
        return Path(self.root) / "app.json"

    @property
    def logs(self) -> Path:
        return Path(self.root) / "logs"


def plan_sites(spec: Spec, count: int, workdir: Path, prefix: str = DEFAULT_PREFIX) -> list[LocalSite]:
    """The first `count` sites of the spec (primary, warm, pilot-light...), one address each."""
    if not 2 <= count <= len(spec.sites):
        raise ValueError(f"--sites must be between 2 and {len(spec.sites)} (the stacks in the spec), got {count}")
    return [LocalSite(s.name, s.role, f"{prefix}.{i + 1}", str(workdir / "sites" / s.name))
            for i, s in enumerate(spec.sites[:count])]


def outputs(site: LocalSite, spec: Spec, store: tuple[Repository, MediaRemote] | None = None) -> SiteOutputs:
    """The local site's SiteOutputs: the same contract a Pulumi stack exports.

    `store` replaces the site's directory store with an emulated object store's repository and
    bucket; the app then stages uploads in its media directory and the replicator moves them.
    """
    repository, media_remote = store or (
        Repository(type="posix", options={"path": str(site.store / "pgbackrest")}),
        MediaRemote(type="local", options={}, path=str(site.media_dir)),
    )
    return SiteOutputs(
        site=site.name, cloud="local", region="loopback", role=site.role,
        public_addresses=(site.address,), ssh_hosts=(site.address,), ssh_user=SERVICE_USER,
        db_host=site.address, db_port=spec.database.port, repository=repository, media_remote=media_remote,
    )


class LocalCloud:
    """State of the local cloud in a work directory: its sites, inventory and processes."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.state_file = self.workdir / "cloud.json"
        self.processes = ProcessTable(self.workdir)
        self.last_publish_errors: list[str] = []
        if self.exists and self.settings().get("storage") == "emulated":
            self.load_emulator_secrets()

    def load_emulator_secrets(self) -> None:
        """The emulated stores' credentials, for pgBackRest and rclone run from this process.

        This work directory's values win over any already set: a cloud brought up earlier in the
        same process (a test suite) left its own CA path and keys, which rclone then used."""
        from infra.sites.emulators import emulator_env

        for name, value in emulator_env(self.workdir).items():
            os.environ[name] = value
            secrets.remember(value)

    @property
    def exists(self) -> bool:
        return self.state_file.exists()

    def sites(self) -> list[LocalSite]:
        if not self.exists:
            raise FileNotFoundError(f"{self.workdir}: no local cloud here; run `failover local up` first")
        return [LocalSite(**s) for s in json.loads(self.state_file.read_text())["sites"]]

    def site(self, name: str) -> LocalSite:
        for site in self.sites():
            if site.name == name:
                return site
        raise KeyError(f"unknown site {name!r}; the local cloud has: {', '.join(s.name for s in self.sites())}")

    def settings(self) -> dict:
        return json.loads(self.state_file.read_text())

    def save(self, sites: list[LocalSite], **settings) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # the service user must reach its directories below
        data = {"sites": [asdict(s) for s in sites], **settings}
        self.state_file.write_text(json.dumps(data, indent=2))

    @property
    def inventory_file(self) -> Path:
        return self.workdir / "inventory.json"

    def inventory(self) -> Inventory:
        return Inventory.load(self.inventory_file)

    def publish(self, inventory: Inventory) -> list[str]:
        """Saves the inventory and puts a copy into every reachable site's store; returns those sites.

        A failover must never depend on the dropped provider: each site carries the whole list.
        A store that does not answer is left out (its StoreError is in `last_publish_errors`).
        """
        inventory.save(self.inventory_file)
        stores = [Store(s) for s in inventory.sites if s.site not in self.dropped()]
        copied, self.last_publish_errors = put_all(stores, INVENTORY_COPY, inventory.to_json().encode())
        return copied

    def dropped(self) -> set[str]:
        return set(self.settings().get("dropped", []))

    def mark_dropped(self, name: str, dropped: bool = True) -> None:
        settings = self.settings()
        names = set(settings.get("dropped", []))
        names = names | {name} if dropped else names - {name}
        settings["dropped"] = sorted(names)
        self.state_file.write_text(json.dumps(settings, indent=2))

    def write_app_config(self, site: LocalSite, spec: Spec, epoch: int, fenced: bool = False) -> None:
        config = {
            "site": site.name, "address": site.address, "port": spec.app.port, "epoch": epoch, "fenced": fenced,
            "dsn": f"host={site.address} port={spec.database.port} user=postgres dbname={spec.database.name}",
            "media_dir": str(site.media_dir),
            "media_mirrors": [str(m.media_dir) for m in self.media_mirrors(site, spec)],
            # The app refuses writes once any peer reports a higher epoch (see infra/app/server.py).
            "peers": [f"http://{s.address}:{spec.app.port}/healthz" for s in self.sites() if s.name != site.name],
        }
        tmp = site.app_config.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(site.app_config)

    def media_mirrors(self, site: LocalSite, spec: Spec) -> list[LocalSite]:
        """Warm sites whose bucket the active site's app writes media into before acknowledging.

        With synchronous replication the database is never acknowledged before the warm site
        has it; media gets the same promise, or a drill loses the objects of acked posts.
        """
        if spec.database.replication != "sync" or not self.inventory_file.exists():
            return []
        if self.inventory().active != site.name:
            return []
        return [s for s in self.sites() if s.role == "warm" and s.name != site.name and s.name not in self.dropped()]

    def start_app(self, site: LocalSite) -> None:
        argv = [sys.executable, "-m", "infra.app.server", str(site.app_config)]
        self.processes.start(f"app-{site.name}", argv, site.logs / "app.log", cwd=Path(__file__).parents[2])

    def stop_all(self) -> list[str]:
        """Stops every process recorded in the PID table.

        PostgreSQL gets a fast shutdown first; whatever does not stop that way is signalled by
        its recorded PID (SIGTERM, then SIGKILL), so `down` always ends what `up` started.
        """
        from invoke import Context

        from playbooks import postgres

        stopped = []
        for site in self.sites() if self.exists else []:
            if self.processes.running(f"pg-{site.name}") and site.name not in self.dropped():
                postgres.stop(Context(), site.paths.pgdata, warn=True)
        for name in self.processes.names():
            if self.processes.stop(name):
                stopped.append(name)
        return stopped

    def remove(self) -> None:
        """Deletes the work directory's sites (after stop_all); restores permissions of dropped sites first."""
        for site in self.sites() if self.exists else []:
            if Path(site.root).exists():
                os.chmod(site.root, 0o755)
        shutil.rmtree(self.workdir / "sites", ignore_errors=True)
        shutil.rmtree(self.workdir / "dns", ignore_errors=True)
        for name in ("cloud.json", "inventory.json"):
            (self.workdir / name).unlink(missing_ok=True)
