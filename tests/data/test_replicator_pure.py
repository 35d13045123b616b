"""The protector's decisions: when it rewrites the config, ends archive-push, backs up, copies, stands down."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.data import replicator
from infra.data.pgbackrest import HostPaths
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs

PATHS = HostPaths(pgdata="/var/lib/postgresql/15/main", socket_dir="/var/run/postgresql",
                  pgbackrest_dir="/var/lib/postgresql/failover")


def inventory(active: str, epoch: int = 1) -> Inventory:
    sites = [SiteOutputs(site=n, cloud="local", region="loopback", role=role, public_addresses=(f"127.0.0.{i}",),
                         ssh_hosts=(f"127.0.0.{i}",), ssh_user="failover", db_host=f"127.0.0.{i}", db_port=5432,
                         repository=Repository("posix", {"path": f"/stores/{n}/pgbackrest"}),
                         media_remote=MediaRemote("local", {}, f"/stores/{n}/media"))
             for i, (n, role) in enumerate((("aws", "primary"), ("gcp", "warm"), ("azure", "pilot-light")), 1)]
    return Inventory(sites, active=active, epoch=epoch)


class Fakes:
    def __init__(self, monkeypatch):
        self.installed, self.interrupted, self.backed_up, self.copied = [], [], [], []
        monkeypatch.setattr(replicator.protection, "install_pgbackrest",
                            lambda c, inv, site, paths, port, down: self.installed.append((site, set(down))))
        monkeypatch.setattr(replicator.protection, "install_rclone", lambda c, inv, paths: None)
        monkeypatch.setattr(replicator.protection, "sync_media",
                            lambda c, conf, inv, source, targets: self.copied.append((source, targets)) or [])
        monkeypatch.setattr(replicator.pgbackrest, "interrupt_archiving",
                            lambda c, config: self.interrupted.append(config) or [])
        monkeypatch.setattr(replicator, "back_up_rejoined",
                            lambda c, inv, paths, names: self.backed_up.append(set(names)))


def test_a_repository_that_goes_away_ends_the_archive_push_that_may_be_stuck_on_it(monkeypatch):
    fakes, state, inv = Fakes(monkeypatch), {}, inventory("aws")
    replicator.archive_only_to_reachable(None, inv, PATHS, set(), state)
    replicator.archive_only_to_reachable(None, inv, PATHS, {"azure"}, state)
    assert fakes.installed == [("aws", set()), ("aws", {"azure"})] and fakes.interrupted == [PATHS.config]
    replicator.archive_only_to_reachable(None, inv, PATHS, {"azure"}, state)  # nothing changed: nothing done
    replicator.archive_only_to_reachable(None, inv, PATHS, set(), state)  # it is back: a backup, no interrupt
    assert len(fakes.interrupted) == 1 and fakes.backed_up == [{"azure"}]


def test_a_new_primary_keeps_its_archive_push_running(monkeypatch):
    """After a failover the runbook wrote the new primary's config before promoting it; ending
    its archive-push would stall PostgreSQL's archiver for up to archive-timeout."""
    fakes, state = Fakes(monkeypatch), {}
    replicator.archive_only_to_reachable(None, inventory("aws"), PATHS, set(), state)
    replicator.archive_only_to_reachable(None, inventory("gcp", 2), PATHS, {"aws"}, state)
    assert fakes.installed[-1] == ("gcp", {"aws"}) and fakes.interrupted == [] and fakes.backed_up == []


def test_media_goes_from_the_active_crypt_remote_to_every_other_reachable_one(monkeypatch):
    fakes = Fakes(monkeypatch)
    replicator.copy_media(None, inventory("aws"), PATHS, {"azure"}, {})
    replicator.copy_media(None, inventory("gcp", 2), PATHS, set(), {})
    assert fakes.copied == [("aws-crypt:", ["gcp"]), ("gcp-crypt:", ["aws", "azure"])]


def test_the_protector_loads_the_secrets_the_engine_left_on_its_host(monkeypatch, tmp_path):
    paths = HostPaths(pgdata=PATHS.pgdata, socket_dir=PATHS.socket_dir, pgbackrest_dir=str(tmp_path))
    monkeypatch.delenv("T_PROTECTOR_SECRET", raising=False)
    replicator.load_host_secrets(paths)  # no file yet: nothing to load, no error
    Path(paths.host_secrets).write_text("T_PROTECTOR_SECRET=s3cr3t=with=equals\n")
    replicator.load_host_secrets(paths)
    assert os.environ["T_PROTECTOR_SECRET"] == "s3cr3t=with=equals"
    assert replicator.secrets.redact("saw s3cr3t=with=equals") == "saw ***"
    monkeypatch.delenv("T_PROTECTOR_SECRET")


def _protector(tmp_path: Path, monkeypatch, reachable: set[str]) -> replicator.Protector:
    monkeypatch.setattr(replicator, "unreachable", lambda c, inv: set(inv.names) - reachable)
    return replicator.Protector(tmp_path / "inventory.json", "aws", PATHS)


def test_the_protector_reads_the_inventory_each_round_and_stands_down_when_another_site_is_active(
        monkeypatch, tmp_path, capsys):
    fakes = Fakes(monkeypatch)
    protector = _protector(tmp_path, monkeypatch, {"aws", "gcp", "azure"})
    inventory("aws").save(protector.inventory_file)
    protector.wal_round(None, {})
    protector.media_round(None, {})
    assert fakes.installed == [("aws", set())] and fakes.copied == [("aws-crypt:", ["gcp", "azure"])]
    inventory("gcp", 2).save(protector.inventory_file)  # the runbook failed over to gcp
    state = {}
    protector.wal_round(None, state)
    protector.media_round(None, state)
    assert len(fakes.installed) == 1 and len(fakes.copied) == 1 and state == {}
    assert "names gcp active (epoch 2): aws stands down" in capsys.readouterr().out
    inventory("aws", 3).save(protector.inventory_file)  # failed back
    protector.media_round(None, {})
    assert fakes.copied[-1] == ("aws-crypt:", ["gcp", "azure"])
    assert "protecting from aws again" in capsys.readouterr().out


def test_a_fenced_protector_named_active_at_a_later_epoch_holds_a_new_lease(monkeypatch, tmp_path, capsys):
    """A failover back to a site whose protector fenced itself (and still runs) must not leave the
    new primary without a lease: the runbook waits for one at its epoch before it takes writes."""
    started = []

    class Holder:
        def __init__(self, epoch, state):
            self.state = replicator.lease_mod.HolderState("aws", epoch, 0.0, state=state)

        def start(self):
            started.append(self.state.epoch)

    protector = _protector(tmp_path, monkeypatch, {"aws", "gcp", "azure"})
    monkeypatch.setattr(protector, "new_holder", lambda c, inv: Holder(inv.epoch, replicator.lease_mod.STARTING))
    protector.holder = Holder(1, replicator.lease_mod.FENCED)
    inventory("aws", 1).save(protector.inventory_file)
    protector.lease_round(None, {})
    assert protector.fenced and started == []  # fenced is final at its own epoch
    inventory("aws", 3).save(protector.inventory_file)
    protector.lease_round(None, {})
    assert not protector.fenced and started == [3]
    assert "aws is named active at epoch 3: a new lease (it fenced itself at epoch 1)" in capsys.readouterr().out


def test_the_command_line_names_the_inventory_the_site_and_the_hosts_layout():
    args = replicator.parse(["/etc/failover/inventory.json", "aws", "--pgdata", PATHS.pgdata,
                             "--socket-dir", PATHS.socket_dir, "--pgbackrest-dir", PATHS.pgbackrest_dir])
    assert (args.inventory, args.site, args.pgbackrest_dir) == (Path("/etc/failover/inventory.json"), "aws",
                                                                PATHS.pgbackrest_dir)
    with pytest.raises(SystemExit):
        replicator.parse(["/etc/failover/inventory.json", "aws"])  # no second, guessed layout
