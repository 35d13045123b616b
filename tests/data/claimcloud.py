"""Three real emulated stores for the claim tests (S3: moto behind stunnel, GCS: fake-gcs-server,
Azure: Azurite), each on its own 127.0.96.x address, started for a module and stopped by PID."""
from __future__ import annotations

import dataclasses
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from infra.data.storage import Store
from infra.sites import emulators
from infra.sites.contract import MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable
from tests.conftest import service_dir
from tests.data.emulated import free_block, secret_values

SITES = ("aws", "gcp", "azure")  # index 0 is S3, 1 GCS, 2 Azure (emulators.KINDS)


def site_outputs(name: str, repo: Repository, remote: MediaRemote, credentials: dict[str, str]) -> SiteOutputs:
    return SiteOutputs(name, "local", "loopback", "primary", ("127.0.0.1",), ("127.0.0.1",), "postgres",
                       "127.0.0.1", 5432, repo, remote, credentials)


@dataclasses.dataclass
class Cloud:
    workdir: Path
    base: int
    hosts: tuple[str, ...]

    def emulator(self, index: int) -> emulators.Emulator:
        return emulators.emulator(self.workdir, index, SITES[index], self.base, self.hosts[index])

    def store(self, index: int, credentials: dict[str, str] | None = None, **remote_changes) -> Store:
        emu = self.emulator(index)
        remote = dataclasses.replace(emu.media_remote(), **remote_changes)
        return Store(site_outputs(emu.site, emu.repository(), remote,
                                  {**emu.writer_credentials(), **(credentials or {})}))

    def stores(self) -> list[Store]:
        return [self.store(i) for i in range(len(SITES))]

    def start(self, index: int) -> None:
        emulators.start_emulated(self.workdir, index, SITES[index], self.base, self.hosts[index])

    def secret_values(self) -> list[str]:
        return secret_values(self.workdir)


@contextmanager
def three_emulators(hosts: tuple[str, str, str], prefix: str) -> Iterator[Cloud]:
    workdir, base = service_dir(prefix), free_block(list(hosts), 24000, 24900)
    cloud = Cloud(workdir, base, hosts)
    try:
        for index in range(len(SITES)):
            cloud.start(index)
        yield cloud
    finally:
        table = ProcessTable(workdir)
        for name in table.names():
            table.stop(name)
        shutil.rmtree(workdir, ignore_errors=True)
