"""The local cloud on emulated object stores: S3 (moto behind stunnel), GCS (fake-gcs-server), Azure (Azurite).

Protection, snapshot and status work as with directories; with one emulator stopped, WAL keeps
reaching the other stores and the stopped one is reported by name; when it returns it is
backed up again.
"""
from __future__ import annotations

import json
import time

import psycopg
import pytest

from infra import status
from infra.data import integrity
from infra.data.storage import Store
from infra.runbook import runner
from infra.runbook.journal import REMOTE_PATH, Journal, JournalStore
from infra.sites import emulators
from infra.sites.bringup import EMULATOR_BASE_PORT
from infra.sites.contract import Inventory
from infra.sites.local import INVENTORY_COPY, LocalCloud
from tests.conftest import failover_json, local_cloud

pytestmark = pytest.mark.integration
PREFIX = "127.0.22"
PORT = 15432


@pytest.fixture(scope="module")
def cloud():
    with local_cloud("emulated", "--storage", "emulated", "--seed-mb", "5", "--prefix", PREFIX) as running:
        yield running


def write_and_switch(body: str) -> str:
    with psycopg.connect(f"host={PREFIX}.1 port={PORT} user=postgres dbname=social", autocommit=True) as conn:
        conn.execute("INSERT INTO posts (user_id, body) VALUES (1, %s)", (body,))
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
    return segment


def archived(cloud: LocalCloud) -> dict[str, str]:
    report = status.collect(cloud, PORT, check_media=False)
    return {r["name"]: r["last_archived_wal"] or "" for s in report["sites"] for r in s["repositories"]}


def wait_archived(cloud, segment: str, repos: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(archived(cloud).get(r, "") >= segment for r in repos):
        assert time.monotonic() < deadline, f"{segment} not in {sorted(repos)} after {timeout}s: {archived(cloud)}"
        time.sleep(1)


def test_status_shows_every_object_store_with_backup_wal_and_media(cloud):
    report = failover_json("status", workdir=cloud.workdir)
    types = {s["name"]: s["repositories"][0]["type"] for s in report["sites"]}
    assert types == {"aws": "s3", "gcp": "gcs", "azure": "azure"}
    for site in report["sites"]:
        repo = site["repositories"][0]
        assert repo["last_backup"] and repo["last_archived_wal"], repo
        assert site["media"]["in_sync"] is True, (site["name"], site["media"])
    segment = write_and_switch("archived to all three clouds")
    wait_archived(cloud, segment, {"repo1", "repo2", "repo3"}, timeout=20)


def test_snapshot_reaches_every_object_store(cloud):
    result = failover_json("snapshot", "--type", "incr", workdir=cloud.workdir)
    assert result["ok"] is True, result
    assert {r["site"] for r in result["results"] if r["repo"] != "media"} == {"aws", "gcp", "azure"}


def test_inventory_and_manifest_copies_are_in_every_emulated_store(cloud):
    inventory = cloud.inventory()
    for site in inventory.sites:
        store = Store(site)
        assert store.storage.remote, site.site
        assert Inventory.from_json(store.get(INVENTORY_COPY).decode()).names == inventory.names
        assert json.loads(store.get(integrity.MANIFEST))["site"] == inventory.active
        # Not a file in the local staging directory that waits for the replicator.
        assert not (cloud.site(site.site).media_dir / INVENTORY_COPY).exists()


def test_journal_copies_go_into_every_emulated_store_and_are_read_back(cloud, tmp_path):
    journal = Journal.new("failover", "aws", "gcp", 2, ["preflight"], {})
    journal.record("preflight", "started")
    assert JournalStore(tmp_path).save(journal, runner.journal_copies(cloud)()) == []
    for site in cloud.inventory().sites:
        assert json.loads(Store(site).get(REMOTE_PATH))["run_id"] == journal.run_id
    shown = failover_json("journal", workdir=cloud.workdir)  # no local journal: read back from the stores
    assert shown["run_id"] == journal.run_id and shown["complete"] is False


def test_a_stopped_emulator_is_named_and_the_others_stay_protected(cloud):
    assert cloud.processes.stop("emulator-azure")
    try:
        segment = write_and_switch("while azure's store is down")
        wait_archived(cloud, segment, {"repo1", "repo2"}, timeout=45)
        report = failover_json("status", "--no-media", workdir=cloud.workdir)
        azure = next(s for s in report["sites"] if s["name"] == "azure")
        assert azure["reachable"] is False
        assert "container failover-azure at localhost" in azure["repositories"][0]["error"]
    finally:  # the store comes back, as a provider's outage ends
        emulators.start_emulated(cloud.workdir, 2, "azure", EMULATOR_BASE_PORT)
    later = write_and_switch("azure is back")
    wait_archived(cloud, later, {"repo1", "repo2", "repo3"}, timeout=90)
    log = cloud.workdir / "logs" / "replicator.log"
    deadline = time.monotonic() + 120
    while "repo3 (azure) is back: backup" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(1)
    assert "repositories left out: repo3 (azure)" in log.read_text()
    assert "repo3 (azure) is back: backup done" in log.read_text(), log.read_text()


def test_restore_from_an_object_store_verifies_checksums_and_media(cloud):
    result = failover_json("restore", "--yes", "--site", "azure", "--repo", "gcp", workdir=cloud.workdir)
    assert result["verified"] is True, result
    assert result["repo"] == "repo2" and result["source_site"] == "gcp"
    assert result["media_missing"] == 0 and all(check["match"] for check in result["checks"].values())
