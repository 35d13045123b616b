"""The local cloud's object stores, one per site, of one of two types (`local up --storage`):

- posix: a host directory per site (stores/<site>/: pgbackrest/ and media/), bind-mounted into
  every VM at the same path (an NFS stand-in); a dropped site's is unmounted everywhere and moved
  to stores/.<site>.dropped, so nobody reaches it until it is given back;
- emulated: per site its cloud's object-store emulator (infra/sites/emulators.py: moto for s3,
  fake-gcs-server for gcs, Azurite for azure, the spec site's `storage`) on the site's own
  loopback address, over TLS, in emulators/<site>/; so a site and its store share an address,
  and what cuts one off (a drop, a partition) cuts off both. A dropped site's emulator stops
  serving, by PID, keeping its data (`Emulator.cut_off`); given back, it serves the same data.

Either way the Inventory names the stores as a cloud's does: posix by path; emulated by bucket,
endpoint and env/NAME credential references (`writer_credentials`), whose values (`secrets()`)
go into the workdir's generated secrets file, never into the Inventory. The emulators' CA
reaches every VM at the path the Inventory's `storage-ca-file` names (for pgBackRest, as on the
operator's machine) and in its system trust (for rclone, which takes no CA per remote), as
cloud-init's ca_certs puts a private CA on a cloud VM.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from infra.sites import emulators
from infra.sites.contract import MediaRemote, Repository
from infra.sites.processes import ProcessTable
from infra.sites.vm import Vm

STORAGE_TYPES = ("posix", "emulated")
StoreOutputs = tuple[Repository, MediaRemote, dict[str, str]]


class LocalStores:
    """The stores of the VM cloud in `directory` (its vms/), for the sites in `kinds` (site ->
    the spec's storage type, which only the emulated stores use). Implementors fill the hooks."""

    type: ClassVar[str]
    # Directories that every VM writes (posix) need one owner UID in every VM, as an NFS share needs
    # its clients to agree on UIDs: pgBackRest makes its files 0640 and its folders 0750, so a
    # repository that aws's postgres wrote would refuse gcp's after a failover. Network stores
    # check credentials, not UIDs, so each VM's service user gets a UID of its own
    # (`Vm.own_service_uid`), which a partition needs (nftables' `meta skuid`). A packet filter
    # does not see bind mounts anyway, so a partition has to use network stores.
    shared_directories: ClassVar[bool]

    def __init__(self, directory: Path, kinds: dict[str, str]):
        self.directory = Path(directory)
        self.kinds = dict(kinds)

    def outputs(self, site: str, address: str) -> StoreOutputs:
        """The site's Repository, MediaRemote and writer credentials (pure: nothing starts)."""
        raise NotImplementedError

    def endpoints(self, site: str, address: str) -> list[int]:
        """Ports the site's store will listen on at its address (nothing may answer there before)."""
        return []

    def create(self, vms: list[Vm], owner: tuple[int, int]) -> None:
        """Every site's store, reachable from every VM; idempotent. `owner`: the VMs' postgres ids."""
        raise NotImplementedError

    def drop(self, name: str, vms: list[Vm]) -> None:
        """The site's store unreachable to every VM and to the operator, its data kept."""
        raise NotImplementedError

    def restore(self, name: str, vms: list[Vm]) -> bool:
        """The site's store back, with its data; returns whether it was dropped."""
        raise NotImplementedError

    def down(self) -> None:
        """Stops and removes every store."""
        raise NotImplementedError

    def secrets(self) -> dict[str, str]:
        """NAME -> value behind the stores' credential references (none for directories)."""
        return {}


class PosixStores(LocalStores):
    type = "posix"
    shared_directories = True

    def store(self, name: str) -> Path:
        return self.directory / "stores" / name

    def dropped_store(self, name: str) -> Path:
        """Where a dropped site's store waits: not at the Inventory's path, so nobody reaches it."""
        return self.directory / "stores" / f".{name}.dropped"

    def outputs(self, site: str, address: str) -> StoreOutputs:
        store = self.store(site)
        return (Repository(type="posix", options={"path": str(store / "pgbackrest")}),
                MediaRemote(type="local", options={}, path=str(store / "media")), {})

    def create(self, vms: list[Vm], owner: tuple[int, int]) -> None:
        for site in vms:
            store = self.store(site.site)
            for part in (store, store / "pgbackrest", store / "media"):
                part.mkdir(parents=True, exist_ok=True)
                shutil.chown(part, *owner)
            for vm in vms:
                vm.mount_store(store)

    def drop(self, name: str, vms: list[Vm]) -> None:
        for vm in vms:
            vm.unmount_store(self.store(name))
        if self.store(name).exists():
            self.store(name).rename(self.dropped_store(name))

    def restore(self, name: str, vms: list[Vm]) -> bool:
        was_dropped = self.dropped_store(name).exists()
        if was_dropped:
            self.dropped_store(name).rename(self.store(name))
        for vm in vms:
            vm.mount_store(self.store(name))
        return was_dropped

    def down(self) -> None:
        shutil.rmtree(self.directory / "stores", ignore_errors=True)


class EmulatedStores(LocalStores):
    type = "emulated"
    shared_directories = False

    def emulator(self, site: str, address: str) -> emulators.Emulator:
        return emulators.for_storage(self.directory, self.kinds[site], site, address)

    def outputs(self, site: str, address: str) -> StoreOutputs:
        emulator = self.emulator(site, address)
        return emulator.repository(), emulator.media_remote(), emulator.writer_credentials()

    def endpoints(self, site: str, address: str) -> list[int]:
        emulator = self.emulator(site, address)
        return [emulator.port, emulator.backend_port] if emulator.kind == "s3" else [emulator.port]

    def create(self, vms: list[Vm], owner: tuple[int, int]) -> None:
        for vm in vms:
            self.emulator(vm.site, vm.address).start()
        ca = self.emulator(vms[0].site, vms[0].address).tls().ca
        for vm in vms:
            vm.trust_ca(ca)

    def drop(self, name: str, vms: list[Vm]) -> None:
        self.emulator(name, self._address(name, vms)).cut_off()

    def restore(self, name: str, vms: list[Vm]) -> bool:
        emulator = self.emulator(name, self._address(name, vms))
        table = ProcessTable(self.directory)
        was_dropped = not table.running(f"{emulator.process}-tls" if emulator.kind == "s3" else emulator.process)
        emulator.start()
        return was_dropped

    def down(self) -> None:
        table = ProcessTable(self.directory)
        for name in table.names():
            if name.startswith("emulator-"):
                table.resume(name)  # a paused process takes no SIGTERM until it runs again
                table.stop(name)
        shutil.rmtree(self.directory / "emulators", ignore_errors=True)

    def secrets(self) -> dict[str, str]:
        return emulators.secret_env(self.directory)

    @staticmethod
    def _address(name: str, vms: list[Vm]) -> str:
        return next(vm.address for vm in vms if vm.site == name)


TYPES: dict[str, type[LocalStores]] = {cls.type: cls for cls in (PosixStores, EmulatedStores)}


def stores_for(storage: str, directory: Path, kinds: dict[str, str]) -> LocalStores:
    try:
        return TYPES[storage](directory, kinds)
    except KeyError:
        raise ValueError(f"--storage {storage!r} must be one of: {', '.join(STORAGE_TYPES)}") from None
