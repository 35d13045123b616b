"""A local cloud of Debian VMs (infra/sites/vm.py): one per site of the spec, on PREFIX.i.

The layout under its directory (by default <workdir>/vms):

    cloud.json          the sites, their roles and addresses, and the sha256 of the sites' outputs in
                        the Inventory that `local up` wrote (a dropped VM is one without processes)
    inventory.json      the sites' SiteOutputs, exactly what Pulumi stacks export
    ssh/                the toolkit's key and the known_hosts it owns (host keys known ahead)
    stores/<site>/      each site's object store: pgbackrest/ (repository) and media/ (bucket);
                        a dropped site's is renamed to stores/.<site>.dropped until it is given back
    <site>/             the VM: upper/, work/, root/ (the overlay) and its sshd host key

Only what this module created is ever removed: a pulled Inventory elsewhere is never touched,
and `down` refuses a directory whose cloud.json it did not write.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
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

    def store(self, name: str) -> Path:
        return self.directory / "stores" / name

    def dropped_store(self, name: str) -> Path:
        """Where a dropped site's store waits: not at the Inventory's path, so nobody reaches it."""
        return self.directory / "stores" / f".{name}.dropped"

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
           witnesses: int = 0) -> Inventory:
        """Creates and boots one VM per site, mounts every store (and `witnesses` witness stores,
        stores/witness-N) in every VM, writes the Inventory."""
        planned = plan(spec, count, prefix)
        if self.exists:
            raise VmError(f"{self.directory} already holds a VM cloud; run `failover vms down` first")
        _refuse_busy(planned, spec.database.port)
        image = ensure_image(progress)
        identity = ensure_identity(self.directory / "ssh")
        self.state_file.write_text(json.dumps({"kind": KIND, "sites": [asdict(s) for s in planned]}, indent=2))
        try:
            vms = [self.vm(s) for s in planned]
            for vm in vms:
                progress(f"{vm.site}: creating its VM on {vm.address} (overlay over {image.name})")
                vm.create(image, identity)
            self._mount_stores(vms, [f"witness-{i}" for i in range(1, witnesses + 1)])
            identity.known_hosts.write_text("".join(vm.host_key_line() + "\n" for vm in vms))
            for vm in vms:
                progress(f"{vm.site}: booting ({vm.role}) with infra/clouds/bootstrap.sh")
                vm.boot(spec.database)
        except BaseException:
            self.down()
            raise
        inventory = Inventory([outputs(s, spec, self.store(s.site)) for s in planned], active=spec.primary.name,
                              witnesses=[witness(f"witness-{i}", self.store(f"witness-{i}"))
                                         for i in range(1, witnesses + 1)])
        inventory.save(self.inventory_file)
        return inventory

    def _mount_stores(self, vms: list[Vm], witnesses: list[str] = ()) -> None:
        """Every site's store (and each witness store), owned by the VMs' postgres user, mounted in every VM."""
        uid, gid = _postgres_ids(vms[0])
        for name in [vm.site for vm in vms] + list(witnesses):
            store = self.store(name)
            for part in (store, store / "pgbackrest", store / "media"):
                part.mkdir(parents=True, exist_ok=True)
                shutil.chown(part, uid, gid)
            for vm in vms:
                vm.mount_store(store)

    # -------------------------------------------------------- drop and down

    def drop(self, name: str) -> list[int]:
        """The provider pulls the plug: the VM's processes are killed, its store is unmounted
        everywhere and moved away from its path, so the operator cannot reach it either."""
        site = self._site(name)
        killed = self.vm(site).kill()
        for vm in self.vms():
            vm.unmount_store(self.store(name))
        if self.store(name).exists():
            self.store(name).rename(self.dropped_store(name))
        return killed

    def restore(self, name: str, boot: bool = True) -> bool:
        """The provider gives the site back: its store at its path again and mounted in every VM,
        and the VM booted as a cloud VM boots (`Vm.reboot`: sshd and the boot-time services; the
        rejoin agent among them decides about its database), or with `boot=False` its sshd only.
        Returns whether the site was dropped."""
        site = self._site(name)
        was_dropped = self.dropped_store(name).exists()
        if was_dropped:
            self.dropped_store(name).rename(self.store(name))
        for vm in self.vms():
            vm.mount_store(self.store(name))
        if boot:
            self.vm(site).reboot()
        else:
            self.vm(site).start_sshd()
        return was_dropped

    def down(self) -> list[str]:
        """Stops every VM, unmounts everything, removes the VMs and stores (only what `up` made)."""
        if not self.exists:
            return []
        stopped = []
        for vm in self.vms():
            if vm.pids():
                vm.stop()
                stopped.append(vm.site)
            vm.unmount()
        for vm in self.vms():
            shutil.rmtree(vm.directory, ignore_errors=True)
        shutil.rmtree(self.directory / "stores", ignore_errors=True)
        shutil.rmtree(self.directory / "ssh", ignore_errors=True)
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


def outputs(site: VmSite, spec: Spec, store: Path) -> SiteOutputs:
    """The VM site's SiteOutputs: the contract a Pulumi stack exports, with a posix (NFS-like) store."""
    return SiteOutputs(
        site=site.site, cloud="local", region="loopback", role=site.role,
        public_addresses=(site.address,), ssh_hosts=(site.address,), ssh_user=USER,
        db_host=site.address, db_port=spec.database.port,
        repository=Repository(type="posix", options={"path": str(store / "pgbackrest")}),
        media_remote=MediaRemote(type="local", options={}, path=str(store / "media")),
    )


def witness(name: str, store: Path) -> SiteOutputs:
    """A witness store of the local cloud: a directory like a site's store, with no site."""
    return SiteOutputs(site=name, cloud="local", region="loopback", role="witness", public_addresses=(), ssh_hosts=(),
                       ssh_user="", db_host="", db_port=0,
                       repository=Repository(type="posix", options={"path": str(store / "pgbackrest")}),
                       media_remote=MediaRemote(type="local", options={}, path=str(store / "media")))


def sites_digest(inventory_text: str) -> str:
    """sha256 of an Inventory's sites (their outputs, in order), whatever its active site and epoch."""
    sites = json.loads(inventory_text)["sites"]
    return hashlib.sha256(json.dumps(sites, sort_keys=True).encode()).hexdigest()


def _refuse_busy(sites: list[VmSite], db_port: int) -> None:
    """Nothing may answer on a VM's SSH or database address yet (another cloud, a kept drill)."""
    for site in sites:
        for port, what in ((22, "SSH"), (db_port, "PostgreSQL")):
            if port_answers(site.address, port, 0.3):
                raise VmError(f"{site.address}:{port} already answers ({what}): site {site.site}'s address is "
                              "taken; choose another --prefix or stop what runs there")


def _postgres_ids(vm: Vm) -> tuple[int, int]:
    """The VMs' postgres uid and gid (one image, so the same in every VM): owners of the stores."""
    for line in (vm.root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    raise VmError(f"site {vm.site}: the image has no postgres user; rebuild it (remove {vm.root.parent})")
