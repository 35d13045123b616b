"""The embedded local cloud end to end: protected sites, status, snapshot, restore, PITR, a broken repository.

Real PostgreSQL 15, pgBackRest and rclone on 127.0.20.x; one cloud for the whole module
(bringing it up takes about a minute), torn down by PID at the end.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest

from infra import status
from infra.data import integrity
from infra.sites.local import LocalCloud
from tests.conftest import failover, failover_json, local_cloud

pytestmark = pytest.mark.integration
PREFIX = "127.0.20"
PORT = 15432


@pytest.fixture(scope="module")
def cloud():
    with local_cloud("cloud", "--sites", "3", "--seed-mb", "5", "--prefix", PREFIX) as running:
        yield running


def dsn(address: str) -> str:
    return f"host={address} port={PORT} user=postgres dbname=social connect_timeout=3"


def write_and_switch(address: str, body: str) -> str:
    """Writes a post, forces a WAL switch and returns the segment that holds the write."""
    with psycopg.connect(dsn(address), autocommit=True) as conn:
        conn.execute("INSERT INTO posts (user_id, body) VALUES (1, %s)", (body,))
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
    return segment


def archived_in(cloud: LocalCloud, segment: str) -> dict[str, bool]:
    report = status.collect(cloud, PORT, check_media=False)
    return {repo["name"]: (repo["last_archived_wal"] or "") >= segment
            for site in report["sites"] for repo in site["repositories"]}


def wait_archived(cloud, segment, repos: set[str], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        done = archived_in(cloud, segment)
        if all(done.get(r) for r in repos):
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{segment} not archived in {sorted(repos)} within {timeout}s: {archived_in(cloud, segment)}")


def test_status_after_up_shows_three_protected_sites(cloud):
    report = failover_json("status", workdir=cloud.workdir)
    sites = {s["name"]: s for s in report["sites"]}
    assert [s["role"] for s in report["sites"]] == ["primary", "warm", "pilot-light"]
    for site in sites.values():
        assert {"name", "role", "reachable", "replica_lag_seconds", "replica_lag_bytes", "repositories"} <= set(site)
        assert site["reachable"] is True
        assert site["media"]["in_sync"] is True, site["media"]
        for repo in site["repositories"]:
            assert {"name", "type", "last_backup", "last_archived_wal"} <= set(repo)
            assert repo["last_backup"] is not None, repo
            assert repo["type"] == "posix"
    warm = sites["gcp"]
    assert warm["replica_lag_seconds"] is not None and warm["replica_lag_seconds"] < 1.0
    assert sites["aws"]["replica_lag_seconds"] is None and sites["azure"]["replica_lag_bytes"] is None


def test_warm_replica_is_synchronous_and_has_the_write(cloud):
    with psycopg.connect(dsn(f"{PREFIX}.1"), autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] == '"gcp"'
        post = conn.execute("INSERT INTO posts (user_id, body) VALUES (1, 'sync') RETURNING id").fetchone()[0]
    with psycopg.connect(dsn(f"{PREFIX}.2"), autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while not conn.execute("SELECT 1 FROM posts WHERE id = %s", (post,)).fetchone():
            assert time.monotonic() < deadline, "the write never reached the warm replica"
            time.sleep(0.05)


def test_wal_of_a_write_reaches_every_repository_within_5_seconds(cloud):
    segment = write_and_switch(f"{PREFIX}.1", "archived")
    seconds = wait_archived(cloud, segment, {"repo1", "repo2", "repo3"}, timeout=5)
    assert seconds <= 5


def test_unreachable_repository_is_reported_and_others_stay_protected(cloud):
    store = Path(cloud.site("azure").store)
    os.chmod(store, 0o000)
    try:
        segment = write_and_switch(f"{PREFIX}.1", "while azure's store is broken")
        wait_archived(cloud, segment, {"repo1", "repo2"}, timeout=15)
        report = failover_json("status", "--no-media", workdir=cloud.workdir)
        azure = next(s for s in report["sites"] if s["name"] == "azure")
        repo = azure["repositories"][0]
        assert azure["reachable"] is False
        assert repo["name"] == "repo3" and repo["error"], repo
        assert repo["location"] == str(store / "pgbackrest")
    finally:
        os.chmod(store, 0o755)
    wait_archived(cloud, segment, {"repo3"}, timeout=60)  # the queue drains once it is back


def test_snapshot_backs_up_every_repository(cloud):
    before = {r["name"]: r["last_backup"] for s in failover_json("status", "--no-media", workdir=cloud.workdir)["sites"]
              for r in s["repositories"]}
    result = failover_json("snapshot", "--type", "incr", workdir=cloud.workdir)
    assert result["ok"] is True
    assert {r["repo"] for r in result["results"] if r["repo"].startswith("repo")} == {"repo1", "repo2", "repo3"}
    # the pilot-light's data directory is refreshed too, so a failover restores only a delta
    assert [(r["repo"], r["site"]) for r in result["results"] if r["repo"].startswith("prestage")] == \
        [("prestage repo3", "azure")]
    after = {r["name"]: r["last_backup"] for s in failover_json("status", "--no-media", workdir=cloud.workdir)["sites"]
             for r in s["repositories"]}
    assert all(after[name] > before[name] for name in before), (before, after)


def test_point_in_time_restore_keeps_writes_before_and_drops_writes_after(cloud):
    primary = f"{PREFIX}.1"
    write_and_switch(primary, "before T")
    time.sleep(1.5)
    with psycopg.connect(dsn(primary)) as conn:
        target = conn.execute("SELECT now()").fetchone()[0].isoformat()
    time.sleep(1.5)
    segment = write_and_switch(primary, "after T")
    wait_archived(cloud, segment, {"repo1", "repo2", "repo3"}, timeout=15)
    result = failover_json("restore", "--yes", "--site", "azure", "--target-time", target, workdir=cloud.workdir)
    assert result["verified"] is True, result
    with psycopg.connect(dsn(f"{PREFIX}.3")) as conn:
        bodies = {row[0] for row in conn.execute("SELECT body FROM posts WHERE body IN ('before T', 'after T')")}
    assert bodies == {"before T"}


def test_restore_after_the_primary_is_dropped_gives_identical_checksums(cloud):
    primary = f"{PREFIX}.1"
    segment = write_and_switch(primary, "last write before the drop")
    wait_archived(cloud, segment, {"repo2", "repo3"}, timeout=15)
    expected = integrity.checksums(dsn(primary))
    with psycopg.connect(dsn(primary)) as conn:
        media_keys = {row[0] for row in conn.execute("SELECT key FROM media")}
    failover("local", "drop", "--site", "aws", workdir=cloud.workdir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(primary), connect_timeout=2)

    result = failover_json("restore", "--yes", "--site", "azure", workdir=cloud.workdir)
    assert result["verified"] is True, result
    assert result["source_site"] in ("gcp", "azure")
    assert integrity.checksums(dsn(f"{PREFIX}.3")) == expected
    restored_media = {str(p.relative_to(cloud.site("azure").media_dir))
                      for p in cloud.site("azure").media_dir.rglob("*.bin")}
    assert media_keys <= restored_media


def test_restore_into_the_active_site_is_refused_before_anything_changes(cloud):
    result = failover("restore", "--site", "aws", workdir=cloud.workdir, check=False)
    assert result.returncode == 2
    assert "aws" in result.stderr


def test_down_stops_every_process_it_started(cloud):
    pids = {name: cloud.processes.pid(name) for name in cloud.processes.names()}
    assert "media-replicator" in pids and "dns-knot-a" in pids
    failover("local", "down", "--keep", workdir=cloud.workdir)
    for name, pid in pids.items():
        if pid is not None:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], name
    assert cloud.processes.names() == []
