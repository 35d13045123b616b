"""A local cloud of Debian VMs (infra/sites/vm.py): one per site of the spec, on PREFIX.i.

The layout under its directory (by default <workdir>/vms):

    cloud.json          the sites, their roles and addresses, the stores' type (and each site's
                        storage), and the sha256 of the sites' outputs in the Inventory that
                        `local up` wrote (a dropped VM is one without processes)
    inventory.json      the sites' SiteOutputs, exactly what Pulumi stacks export
    ssh/                the toolkit's key and the known_hosts it owns (host keys known ahead)
    stores/<site>/      posix: each site's object store, pgbackrest/ (repository) and media/ (bucket)
    emulators/, pids/   emulated: each site's object-store emulator, its data and its PID
    <site>/             the VM: upper/, work/, root/ (the overlay) and its sshd host key

The stores are infra/sites/localstores.py's: directories mounted in every VM, or emulators on
the sites' own addresses.

Only what this module created is ever removed: a pulled Inventory elsewhere is never touched,
and `down` refuses a directory whose cloud.json it did not write.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.sites import contract
from infra.sites.contract import Inventory, SiteOutputs
from infra.sites.localstores import LocalStores, PosixStores, StoreOutputs, stores_for
from infra.sites.processes import port_answers
from infra.sites.vm import USER, SshIdentity, Vm, VmError, ensure_identity, ensure_image
from infra.spec import Spec

KIND = "local-vms"
DEFAULT_PREFIX = "127.0.10"


@dataclass(frozen=True)
class VmSite:
    site: str
    role: str
    address: str


class LocalVms:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.state_file = self.directory / "cloud.json"
        self.inventory_file = self.directory / "inventory.json"

    # -------------------------------------------------------- state

    @property
    def exists(self) -> bool:
        return self.state_file.exists()

    def state(self) -> dict:
        if not self.exists:
            raise VmError(f"{self.directory}: no local VM cloud here; run `failover vms up` first")
        data = json.loads(self.state_file.read_text())
        if data.get("kind") != KIND:
            raise VmError(f"{self.state_file} was not written by `failover vms up`; refusing to touch it")
        return data

    def sites(self) -> list[VmSite]:
        return [VmSite(**s) for s in self.state()["sites"]]

    def vm(self, site: VmSite) -> Vm:
        return Vm(site.site, site.role, site.address, self.directory / site.site)

    def vms(self) -> list[Vm]:
        return [self.vm(s) for s in self.sites()]

    @property
    def storage(self) -> str:
        """posix or emulated: the stores' type (a cloud.json from before emulated stores is posix)."""
        return self.state().get("storage", "posix")

    @property
    def stores(self) -> LocalStores:
        state = self.state()
        return stores_for(state.get("storage", "posix"), self.directory, state.get("kinds", {}))

    def store(self, name: str) -> Path:
        """A posix store's directory."""
        return PosixStores(self.directory, {}).store(name)

    # -------------------------------------------------------- the Inventory written beside the VMs

    def record_inventory(self, text: str) -> None:
        """Remembers the Inventory that `local up` wrote, so that only that one is ever removed."""
        data = self.state()
        data["sites_sha256"] = sites_digest(text)
        self.state_file.write_text(json.dumps(data, indent=2))

    def wrote_inventory(self, path: Path) -> bool:
        """Is `path` the Inventory this cloud's `local up` wrote? The runbook rewrites its active
        site and epoch on a failover, so the sites' outputs decide; a pulled Inventory never has
        this cloud's addresses and store paths."""
        if not (self.exists and path.exists()):
            return False
        try:
            return self.state().get("sites_sha256") == sites_digest(path.read_text())
        except (ValueError, KeyError, TypeError):  # not an Inventory at all: not ours
            return False

    @property
    def identity(self) -> SshIdentity:
        return SshIdentity.in_dir(self.directory / "ssh")

    # -------------------------------------------------------- up

    def up(self, spec: Spec, count: int, prefix: str = DEFAULT_PREFIX, progress=lambda m: None,
           storage: str = "posix", witnesses: int | None = None) -> Inventory:
        """Creates and boots one VM per site, makes every site's store reachable from every VM
        (`storage`: posix or emulated, infra/sites/localstores.py) and mounts `witnesses` witness
        stores (directories, stores/<name>: the spec's witnesses' names, then witness-N) in every
        VM, writes the Inventory. `witnesses` None: as many as the spec declares."""
        planned = plan(spec, count, prefix)
        witnessing = witness_names(spec, witnesses)
        if self.exists:
            raise VmError(f"{self.directory} already holds a VM cloud; run `failover vms down` first")
        kinds = storage_kinds(spec, planned)
        stores = stores_for(storage, self.directory, kinds)
        _refuse_busy(planned, spec.database.port, stores)
        image = ensure_image(progress)
        identity = ensure_identity(self.directory / "ssh")
        self.state_file.write_text(json.dumps({"kind": KIND, "sites": [asdict(s) for s in planned],
                                               "storage": storage, "kinds": kinds}, indent=2))
        try:
            vms = [self.vm(s) for s in planned]
            for vm in vms:
                progress(f"{vm.site}: creating its VM on {vm.address} (overlay over {image.name})")
                vm.create(image, identity, own_uid=not stores.shared_directories)
            if storage != "posix":
                progress("stores: " + ", ".join(f"{vm.site}'s {kinds[vm.site]} emulator on {vm.address}" for vm in vms))
            stores.create(vms, _postgres_ids(vms[0]))
            self._mount_witnesses(vms, witnessing)
            identity.known_hosts.write_text("".join(vm.host_key_line() + "\n" for vm in vms))
            for vm in vms:
                progress(f"{vm.site}: booting ({vm.role}) with infra/clouds/bootstrap.sh")
                vm.boot(spec.database)
        except BaseException:
            self.down()
            raise
        inventory = Inventory([outputs(s, spec, stores.outputs(s.site, s.address)) for s in planned],
                              active=spec.primary.name,
                              witnesses=[witness(name, PosixStores(self.directory, {}).outputs(name, ""))
                                         for name in witnessing])
        inventory.save(self.inventory_file)
        return inventory

    def _mount_witnesses(self, vms: list[Vm], names: list[str]) -> None:
        """Each witness store, owned by the VMs' postgres user and group, mounted in every VM (posix
        directories whatever the sites' stores are: a bucket at a further provider). Only the
        toolkit writes there (the lease and claims: group-writable objects in setgid folders,
        infra/data/storage.Posix), so the postgres group, whose GID every VM shares, may write it
        when each VM's postgres has a UID of its own (emulated stores)."""
        uid, gid = _postgres_ids(vms[0])
        for name in names:
            store = self.store(name)
            for part in (store, store / "pgbackrest", store / "media"):
                part.mkdir(parents=True, exist_ok=True)
                shutil.chown(part, uid, gid)
                part.chmod(0o2775)
            for vm in vms:
                vm.mount_store(store)

    def start_stores(self) -> None:
        """Every store that is not dropped serves (a cloud completed after a stop half-way)."""
        vms = self.vms()
        live = [vm for vm in vms if vm.sshd_pid() is not None]
        if live:
            self.stores.create(live, _postgres_ids(vms[0]))

    # -------------------------------------------------------- drop and down

    def drop(self, name: str) -> list[int]:
        """The provider pulls the plug: the VM's processes are killed and its store is cut off for
        everyone, the operator included (unmounted and moved away, or its emulator stopped by PID)."""
        site = self._site(name)
        killed = self.vm(site).kill()
        self.stores.drop(name, self.vms())
        return killed

    def restore(self, name: str, boot: bool = True) -> bool:
        """The provider gives the site back: its store with its data (mounted in every VM again, or
        its emulator serving again), and the VM booted as a cloud VM boots (`Vm.reboot`: sshd and
        the boot-time services; the rejoin agent among them decides about its database), or with
        `boot=False` its sshd only. Returns whether the site was dropped."""
        site = self._site(name)
        was_dropped = self.stores.restore(name, self.vms())
        if boot:
            self.vm(site).reboot()
        else:
            self.vm(site).start_sshd()
        return was_dropped

    def down(self) -> list[str]:
        """Stops every VM and emulator (by PID), unmounts everything, removes the VMs and stores
        (only what `up` made)."""
        if not self.exists:
            return []
        stopped = []
        for vm in self.vms():
            if vm.pids():
                vm.stop()
                stopped.append(vm.site)
            vm.unmount()
        self.stores.down()
        for vm in self.vms():
            shutil.rmtree(vm.directory, ignore_errors=True)
        shutil.rmtree(self.directory / "ssh", ignore_errors=True)
        if (self.directory / "pids").is_dir() and not any((self.directory / "pids").iterdir()):
            (self.directory / "pids").rmdir()
        self.inventory_file.unlink(missing_ok=True)
        self.state_file.unlink()
        return stopped

    def _site(self, name: str) -> VmSite:
        for site in self.sites():
            if site.site == name:
                return site
        raise VmError(f"unknown site {name!r}; the VM cloud has: {', '.join(s.site for s in self.sites())}")


def plan(spec: Spec, count: int, prefix: str) -> list[VmSite]:
    if not prefix.startswith("127."):
        raise VmError(f"prefix {prefix!r} must be inside 127.0.0.0/8: the local cloud stays on loopback")
    if not 2 <= count <= len(spec.sites):
        raise VmError(f"--sites must be between 2 and {len(spec.sites)} (the stacks in the spec), got {count}")
    return [VmSite(s.name, s.role, f"{prefix}.{i + 1}") for i, s in enumerate(spec.sites[:count])]


def storage_kinds(spec: Spec, sites: list[VmSite]) -> dict[str, str]:
    """site -> its storage type in the spec (s3, gcs, azure): the emulator its store runs."""
    by_name = {s.name: s.storage for s in spec.sites}
    return {s.site: by_name[s.site] for s in sites}


def outputs(site: VmSite, spec: Spec, store: StoreOutputs) -> SiteOutputs:
    """The VM site's SiteOutputs: the contract a Pulumi stack exports, with its store's
    repository, media remote and writer credentials (references) from infra/sites/localstores.py."""
    repository, media_remote, credentials = store
    return SiteOutputs(
        site=site.site, cloud="local", region="loopback", role=site.role,
        public_addresses=(site.address,), ssh_hosts=(site.address,), ssh_user=USER,
        db_host=site.address, db_port=spec.database.port,
        repository=repository, media_remote=media_remote, writer_credentials=credentials,
    )


def witness_names(spec: Spec, count: int | None = None) -> list[str]:
    """The local cloud's witness stores: `count` of them, or as many as the spec declares (None).

    The spec's witnesses are buckets at further providers, which the local cloud does not reach:
    directories stand in for them under their names, so its majorities are the ones the real
    sites would count. Any beyond those are witness-1, witness-2..."""
    declared = [w.name for w in spec.witnesses]
    count = len(declared) if count is None else count
    spare = (f"witness-{i}" for i in range(1, 2 * count + 1) if f"witness-{i}" not in declared)
    return [*declared[:count], *(next(spare) for _ in range(count - len(declared[:count])))]


def witness(name: str, store: StoreOutputs) -> SiteOutputs:
    """A witness store of the local cloud: a directory like a posix site's store, with no site."""
    repository, media_remote, _ = store
    return contract.witness(name, "local", "loopback", repository, media_remote)


def sites_digest(inventory_text: str) -> str:
    """sha256 of an Inventory's sites (their outputs, in order), whatever its active site and epoch."""
    sites = json.loads(inventory_text)["sites"]
    return hashlib.sha256(json.dumps(sites, sort_keys=True).encode()).hexdigest()


def _refuse_busy(sites: list[VmSite], db_port: int, stores: LocalStores) -> None:
    """Nothing may answer on a VM's SSH, database or store address yet (another cloud, a kept drill)."""
    for site in sites:
        ports = [(22, "SSH"), (db_port, "PostgreSQL")] + [(p, "its store") for p in stores.endpoints(site.site,
                                                                                                      site.address)]
        for port, what in ports:
            if port_answers(site.address, port, 0.3):
                raise VmError(f"{site.address}:{port} already answers ({what}): site {site.site}'s address is "
                              "taken; choose another --prefix or stop what runs there")


def _postgres_ids(vm: Vm) -> tuple[int, int]:
    """The first VM's postgres uid and gid: owners of the stores. The GID is the same in every VM
    (one image); the UID too, unless the VMs have their own (`LocalStores.shared_directories`)."""
    for line in (vm.root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    raise VmError(f"site {vm.site}: the image has no postgres user; rebuild it (remove {vm.root.parent})")
