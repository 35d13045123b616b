"""The protector's config round: when it ends running archive-push processes, and when it must not."""
from __future__ import annotations

from types import SimpleNamespace

from infra.data import replicator


class Fakes:
    def __init__(self, monkeypatch):
        self.installed, self.interrupted, self.backed_up = [], [], []
        monkeypatch.setattr(replicator.protection, "install_pgbackrest",
                            lambda c, inventory, site, paths, port, down: self.installed.append((site, set(down))))
        monkeypatch.setattr(replicator.pgbackrest, "interrupt_archiving",
                            lambda c, config: self.interrupted.append(config) or [])
        monkeypatch.setattr(replicator, "back_up_rejoined",
                            lambda c, inventory, source, names: self.backed_up.append(set(names)))


def _cloud_and_inventory(active: str):
    sites = {n: SimpleNamespace(name=n, paths=SimpleNamespace(config=f"/{n}/pgbackrest.conf")) for n in ("aws", "gcp", "azure")}
    inventory = SimpleNamespace(active=active, names=list(sites), site=lambda n: SimpleNamespace(db_port=5432),
                                repo_index=lambda n: list(sites).index(n) + 1)
    return SimpleNamespace(site=sites.__getitem__), inventory


def test_a_repository_that_goes_away_ends_the_archive_push_that_may_be_stuck_on_it(monkeypatch):
    fakes, state = Fakes(monkeypatch), {}
    cloud, inventory = _cloud_and_inventory("aws")
    replicator.archive_only_to_reachable(None, cloud, inventory, set(), state)
    replicator.archive_only_to_reachable(None, cloud, inventory, {"azure"}, state)
    assert fakes.installed == [("aws", set()), ("aws", {"azure"})] and fakes.interrupted == ["/aws/pgbackrest.conf"]
    replicator.archive_only_to_reachable(None, cloud, inventory, {"azure"}, state)  # nothing changed: nothing done
    replicator.archive_only_to_reachable(None, cloud, inventory, set(), state)  # it is back: a backup, no interrupt
    assert len(fakes.interrupted) == 1 and fakes.backed_up == [{"azure"}]


def test_a_new_primary_keeps_its_archive_push_running(monkeypatch):
    """After a failover the runbook wrote the new primary's config before promoting it; ending
    its archive-push would stall PostgreSQL's archiver for up to archive-timeout."""
    fakes, state = Fakes(monkeypatch), {}
    cloud, inventory = _cloud_and_inventory("aws")
    replicator.archive_only_to_reachable(None, cloud, inventory, set(), state)
    cloud, inventory = _cloud_and_inventory("gcp")
    replicator.archive_only_to_reachable(None, cloud, inventory, {"aws"}, state)
    assert fakes.installed[-1] == ("gcp", {"aws"}) and fakes.interrupted == [] and fakes.backed_up == []
