"""Replica settings per replication mode, on real PostgreSQL 15 clusters on 127.0.26.x.

An asynchronous replica does not report its positions after every write (that reply costs
the primary a walsender wake-up per commit), so its lag is read on the replica; a synchronous
one reports at once, or the primary's commits would wait for it.
"""
from __future__ import annotations

import shutil
import time

import pytest
from invoke import Context

from infra import status
from infra.data import protection
from infra.sites.bringup import _dirs
from infra.sites.local import LocalSite
from infra.sites.processes import wait_for
from playbooks import postgres
from tests.conftest import service_dir

pytestmark = pytest.mark.integration
PORT = 15432


@pytest.fixture(scope="module")
def primary():
    c = Context()
    root = service_dir("modes")
    site = LocalSite("aws", "primary", "127.0.26.1", str(root / "aws"))
    _dirs(c, site)
    postgres.init_cluster(c, site.paths.pgdata)
    settings = {**protection.pg_settings(site.address, PORT, site.paths), "archive_mode": "off"}
    postgres.configure(c, site.paths.pgdata, settings, protection.HBA)
    postgres.start(c, site.paths.pgdata, str(site.logs / "postgresql.log"))
    try:
        yield c, root, site
    finally:
        postgres.stop(c, site.paths.pgdata, "immediate", warn=True)
        shutil.rmtree(root, ignore_errors=True)


def _replica(c, root, primary: LocalSite, name: str, address: str, synchronous: bool) -> LocalSite:
    site = LocalSite(name, "warm", address, str(root / name))
    _dirs(c, site)
    protection.start_replica(c, primary.address, PORT, site.address, site.paths, site.name,
                             str(site.logs / "postgresql.log"), synchronous)
    return site


def _sql(c, site: LocalSite, text: str) -> str:
    return postgres.psql(c, site.address, PORT, text).stdout.strip()


def _write(c, primary: LocalSite) -> str:
    _sql(c, primary, "CREATE TABLE IF NOT EXISTS t (n int); INSERT INTO t VALUES (1)")
    return _sql(c, primary, "SELECT pg_current_wal_lsn()")


def _reported_flush_reached(c, primary: LocalSite, name: str, lsn: str) -> bool:
    sql = f"SELECT flush_lsn >= '{lsn}'::pg_lsn FROM pg_stat_replication WHERE application_name = '{name}'"
    return _sql(c, primary, sql) == "t"


def _received_while_paused(c, primary: LocalSite, replica: LocalSite) -> str:
    """Pauses the replica's replay, writes on the primary, waits until the replica received it.

    While replay is paused, only the walreceiver's own replies could tell the primary (a
    replica whose replay catches up also reports once before it waits for more WAL)."""
    wait_for(lambda: postgres.streaming(c, primary.address, PORT, replica.name), 10, f"{replica.name} to stream")
    _sql(c, replica, "SELECT pg_wal_replay_pause()")
    wait_for(lambda: _sql(c, replica, "SELECT pg_get_wal_replay_pause_state()") == "paused", 10, "replay to pause")
    lsn = _write(c, primary)
    wait_for(lambda: _sql(c, replica, f"SELECT pg_last_wal_receive_lsn() >= '{lsn}'::pg_lsn") == "t", 10,
             f"{replica.name} to receive {lsn}")
    time.sleep(0.5)
    return lsn


def test_async_replica_sends_no_reply_per_write_and_its_lag_is_still_measured(primary):
    c, root, site = primary
    replica = _replica(c, root, site, "gcp", "127.0.26.2", synchronous=False)
    try:
        lsn = _received_while_paused(c, site, replica)
        assert not _reported_flush_reached(c, site, "gcp", lsn)
        assert status.replica_lag(c, site, replica, PORT)[1] > 0
        _sql(c, replica, "SELECT pg_wal_replay_resume()")
        wait_for(lambda: status.replica_lag(c, site, replica, PORT)[1] == 0, 10, "the lag to reach 0")
    finally:
        postgres.stop(c, replica.paths.pgdata, "immediate", warn=True)


def test_sync_replica_reports_every_write(primary):
    c, root, site = primary
    replica = _replica(c, root, site, "azure", "127.0.26.3", synchronous=True)
    try:
        lsn = _received_while_paused(c, site, replica)
        assert _reported_flush_reached(c, site, "azure", lsn)
    finally:
        postgres.stop(c, replica.paths.pgdata, "immediate", warn=True)
