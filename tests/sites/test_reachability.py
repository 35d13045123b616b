"""One definition of "reachable" (infra/sites/reachability.py), and the runbook's uses of it, with data."""
from __future__ import annotations

from dataclasses import dataclass, field

from invoke import Context

from infra.runbook import steps
from infra.sites import reachability
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs


def outputs(name: str, path: str) -> SiteOutputs:
    return SiteOutputs(site=name, cloud="local", region="loopback", role="warm", public_addresses=("127.0.0.9",),
                       ssh_hosts=(), ssh_user="postgres", db_host="127.0.0.9", db_port=5432,
                       repository=Repository("posix", {"path": path}),
                       media_remote=MediaRemote("local", {}, "/tmp"))


@dataclass
class FakeCloud:
    """What the reachability question reads of a cloud: its dropped sites and its inventory."""

    inventory_: Inventory
    dropped_: set = field(default_factory=set)
    published: list = field(default_factory=list)

    def dropped(self) -> set:
        return self.dropped_

    def inventory(self) -> Inventory:
        return self.inventory_

    def publish(self, inventory: Inventory) -> list[str]:
        self.published.append(inventory.epoch)
        return inventory.names


INVENTORY = Inventory([outputs("aws", "/"), outputs("gcp", "/"), outputs("azure", "/no/such/store")], active="aws")


def test_a_site_is_reachable_when_not_dropped_and_its_store_answers():
    cloud = FakeCloud(INVENTORY, {"gcp"})
    c = Context()
    assert reachability.reachable(c, cloud, "aws")
    assert not reachability.reachable(c, cloud, "gcp"), "dropped: never probed, never reachable"
    assert not reachability.reachable(c, cloud, "azure"), "its store does not answer"
    assert reachability.unreachable(c, cloud) == {"gcp", "azure"}


def test_the_runbook_asks_the_same_question():
    cloud = FakeCloud(INVENTORY, {"gcp"})
    run = steps.Run(cloud, None, None, "aws", "gcp", 2, steps.DataSource(steps.PROMOTE, "", ""), Context())
    assert run.unreachable() == reachability.unreachable(Context(), cloud)
    assert [run.reachable(n) for n in INVENTORY.names] == [True, False, False]


def test_failover_and_failback_publish_a_raised_epoch_the_same_way():
    inventory = Inventory(list(INVENTORY.sites), active="aws", epoch=3)
    cloud = FakeCloud(inventory)
    run = steps.Run(cloud, None, None, "aws", "gcp", 4, steps.DataSource(steps.PROMOTE, "", ""), Context())
    steps.raise_epoch(run)
    steps.raise_epoch(run)  # a resumed run: already raised, not published again
    assert cloud.published == [4]
