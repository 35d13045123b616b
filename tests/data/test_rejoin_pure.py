"""The rejoin agent's decisions (infra/data/rejoin.py), from data: which Inventory wins, and what
a given-back host does with its database."""
from __future__ import annotations

from infra.data import rejoin
from infra.data.rejoin import Local
from infra.data.standby import walstream_command
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.layout import program


def inventory(active: str, epoch: int, updated: str = "2026-12-04T20:00:00+00:00") -> Inventory:
    sites = [SiteOutputs(site=name, cloud="local", region="loopback", role=role, public_addresses=(f"127.0.108.{i}",),
                         ssh_hosts=(f"127.0.108.{i}",), ssh_user="failover", db_host=f"127.0.108.{i}", db_port=5432,
                         repository=Repository("posix", {"path": f"/s/{name}/pgbackrest"}),
                         media_remote=MediaRemote("local", {}, f"/s/{name}/media"))
             for i, (name, role) in enumerate((("aws", "primary"), ("gcp", "warm"), ("azure", "pilot-light")), 1)]
    return Inventory(sites, active=active, epoch=epoch, updated=updated)


DOWN = Local(db_running=False, in_recovery=None, upstream=None, stream_source=None)


def test_the_highest_epoch_wins_over_the_copy_a_dropped_site_kept():
    own, failed_over = inventory("aws", 1), inventory("gcp", 2)
    assert rejoin.newest([own, failed_over, own]) is failed_over
    later = inventory("gcp", 2, "2026-12-04T21:00:00+00:00")
    assert rejoin.newest([failed_over, later]) is later
    assert rejoin.newest([]) is None


def test_without_any_inventory_the_database_stays_down():
    assert rejoin.decide(None, "gcp", DOWN) == rejoin.WAIT


def test_the_active_site_starts_its_database_as_it_is():
    assert rejoin.decide(inventory("aws", 1), "aws", DOWN) == rejoin.START
    assert rejoin.decide(inventory("aws", 1), "aws", Local(True, False, None, None)) == rejoin.DONE


def test_a_warm_site_or_an_old_primary_follows_as_a_replica_of_the_active_one():
    newer = inventory("gcp", 2)
    assert rejoin.decide(newer, "aws", DOWN) == rejoin.REPLICA  # the old primary never starts as one
    assert rejoin.decide(newer, "aws", Local(True, False, None, None)) == rejoin.REPLICA  # a stale primary
    assert rejoin.decide(newer, "aws", Local(True, True, "127.0.108.3", None)) == rejoin.REPLICA  # the wrong one
    assert rejoin.decide(newer, "aws", Local(True, True, "127.0.108.2", None)) == rejoin.DONE
    assert rejoin.decide(inventory("aws", 1), "gcp", Local(True, True, "127.0.108.1", None)) == rejoin.DONE


def test_a_pilot_light_follows_with_its_wal_receiver_and_runs_no_database():
    newer = inventory("gcp", 2)
    old_stream = Local(False, None, None, "127.0.108.1", stream_running=True)
    assert rejoin.decide(newer, "azure", old_stream) == rejoin.WALSTREAM
    assert rejoin.decide(newer, "azure", Local(False, None, None, "127.0.108.2", True)) == rejoin.DONE
    assert rejoin.decide(newer, "azure", Local(True, False, None, "127.0.108.2", True)) == rejoin.WALSTREAM


def test_the_walstream_programs_primary_is_read_from_its_config():
    conf = program("failover-walstream", walstream_command("stream_azure", "host=127.0.108.2 port=5432 user=r"))
    assert rejoin.stream_source(conf) == "127.0.108.2"
    assert "--synchronous" in conf
    assert rejoin.stream_source("") is None


def test_a_replica_stays_synchronous_unless_its_settings_made_it_asynchronous():
    assert rejoin.synchronous("port = '5432'\n")
    assert not rejoin.synchronous("wal_receiver_status_interval = '0'\n")
