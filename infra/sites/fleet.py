"""The Fleet: an Inventory and a Site per entry, which is all the engine works on.

Every engine command (the runbook, failback, fence, status, snapshot, restore and the drill)
takes a Fleet: the Inventory in the work directory (pulled from the stacks, or written by
`failover local up`), the operator's SSH settings, and one `Site` per entry, reached only over
SSH and through its store. Nothing here knows whether a site is a cloud VM or a local one.

A site is reachable when its database host answers an SSH round-trip (`Site.reachable`); the
answer is kept for the Fleet's life unless `refresh=True`, so a runbook asks each site once.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra import secrets
from infra.data.storage import Store, StoreError, put_all
from infra.errors import FailoverError
from infra.sites.contract import Inventory
from infra.sites.layout import INVENTORY_COPY  # noqa: F401 - the Fleet's name for it
from infra.sites.site import Site, SshSettings

VM_SSH_DIR = "vms/ssh"  # where `failover local up` keeps the toolkit's key and known_hosts
# Secrets files in a workdir: `inventory pull`'s writer credentials and `local up`'s own secrets.
SECRET_FILES = ("secrets.env", "vms/secrets.env")


class Fleet:
    def __init__(self, workdir: Path, ssh: SshSettings | None = None, app_port: int = 8080,
                 reach_timeout: float = 3.0):
        self.workdir = Path(workdir)
        self.inventory_file = self.workdir / "inventory.json"
        self.ssh = ssh or SshSettings.from_env(self.workdir / VM_SSH_DIR, self.workdir)
        for name in SECRET_FILES:  # what the environment sets wins; a file this user cannot read is skipped
            secrets.load_env_file(self.workdir / name)
        self.app_port = app_port
        self.reach_timeout = reach_timeout
        self._sites: dict[str, Site] = {}
        self._reachable: dict[str, bool] = {}

    @property
    def exists(self) -> bool:
        return self.inventory_file.exists()

    def inventory(self) -> Inventory:
        if not self.inventory_file.exists():
            raise FailoverError(f"{self.inventory_file}: no Inventory here; run `failover local up` for the local "
                                "cloud or `failover inventory pull` for cloud stacks (or pass --workdir)")
        return Inventory.load(self.inventory_file)

    def site(self, name: str) -> Site:
        site = self._sites.get(name)
        if site is None:
            inventory = self.inventory()
            if name not in inventory.names:
                raise FailoverError(f"unknown site {name!r}; the inventory has: {', '.join(inventory.names)}")
            site = self._sites[name] = Site(inventory.site(name), self.ssh, self.app_port)
        return site

    def sites(self) -> list[Site]:
        return [self.site(name) for name in self.inventory().names]

    def reachable(self, name: str, refresh: bool = False) -> bool:
        if refresh or name not in self._reachable:
            self._reachable[name] = self.site(name).reachable(self.reach_timeout)
        return self._reachable[name]

    def unreachable(self, refresh: bool = False) -> set[str]:
        """The sites that do not answer SSH; those not asked yet are asked at once (a dead host
        costs up to the timeout, and a plan should not pay it once per site)."""
        names = [s.name for s in self.sites()]
        with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
            answers = dict(zip(names, pool.map(lambda n: self.reachable(n, refresh), names)))
        return {name for name, answered in answers.items() if not answered}

    def forget(self, name: str) -> None:
        """Asks again next time: a site was fenced, dropped or started since."""
        self._reachable.pop(name, None)

    def stores(self) -> list[Store]:
        return [site.store for site in self.sites()]

    def publish(self, inventory: Inventory) -> list[str]:
        """Saves the inventory and puts a copy into every store that answers; returns those sites.

        A failover must never depend on the dropped provider: each site's store carries the
        whole list. A store that does not answer is left out; none answering is an error."""
        inventory.save(self.inventory_file)
        copied, errors = put_all([Store(s) for s in inventory.sites], INVENTORY_COPY, inventory.to_json().encode())
        if not copied:
            raise StoreError("the inventory reached no site's store: " + "; ".join(errors))
        return copied

    def close(self) -> None:
        for site in self._sites.values():
            site.close()
