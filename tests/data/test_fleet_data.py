"""`failover status`, `snapshot` and `restore` (also `--scratch`) on a Fleet: three protected Debian
VMs on 127.0.72.x, every database, pgBackRest and rclone action run on a site's host over SSH.

The tests share one module-scoped cloud and run in order: status, snapshot, restore into the
pilot-light site, refused plans, a scratch restore, then the primary is dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infra.data import integrity, protection, restore, scratch
from infra.data.storage import Store
from infra.errors import FailoverError
from infra.sites.fleet import Fleet
from infra.sites.localvms import LocalVms
from infra.sites.processes import wait_for
from infra.sites.protect import protect
from infra.sites.site import KEY_ENV, KNOWN_HOSTS_ENV, PATHS, Site, SshSettings
from infra.sites.tls import CertificateAuthority
from infra.spec import load_spec
from infra.status import repository
from tests.conftest import ROOT, failover, failover_json, remove_unmounted

pytestmark = pytest.mark.integration

PREFIX = "127.0.72"
PASSWORD = "fleet-data-replication-pw"
MEDIA = range(10, 1001, 10)  # posts with id % 10 == 0 name a media object
TIMINGS: dict[str, float] = {}
MOMENTS: dict[str, str] = {}


class Cloud:
    def __init__(self, workdir: Path, vms: LocalVms, fleet: Fleet, spec):
        self.workdir, self.vms, self.fleet, self.spec = workdir, vms, fleet, spec

    def site(self, name: str) -> Site:
        return self.fleet.site(name)

    def sql(self, name: str, query: str) -> str:
        return self.site(name).psql(query, self.spec.database.name).stdout.strip()


def _seed(fleet: Fleet, spec) -> None:
    """Rows written on the primary with psql over SSH, media objects into its bucket through its
    crypt remote (from the host, as the app writes them)."""
    fleet.site("aws").psql(
        "INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 200) g; "
        "INSERT INTO posts (user_id, body, media_key) SELECT 1 + g % 200, 'post ' || g, "
        "  CASE WHEN g % 10 = 0 THEN 'm/' || g || '.bin' END FROM generate_series(1, 1000) g; "
        "INSERT INTO follows (follower, followee) SELECT 1 + g % 200, 1 + (g * 7) % 200 FROM generate_series(1, 500) g; "
        "INSERT INTO media (key, bytes, sha256) SELECT 'm/' || g || '.bin', 16, md5(g::text) "
        "  FROM generate_series(10, 1000, 10) g", spec.database.name)
    aws, inventory = fleet.site("aws"), fleet.inventory()
    staging = f"{PATHS.media_staging}/seed"
    aws.service().run(f"mkdir -p {staging}/m")
    for g in MEDIA:
        aws.write(f"{staging}/m/{g}.bin", hashlib.md5(str(g).encode()).hexdigest()[:16].encode())
    c = aws.service()
    (copied,) = protection.sync_media(c, protection.install_rclone(c, inventory, PATHS), inventory, staging, ["aws"])
    assert copied.ok, copied
    c.run(f"rm -rf {staging}")


@pytest.fixture(scope="module")
def cloud():
    os.environ["FAILOVER_REPLICATION_PASSWORD"] = PASSWORD
    for name in (KNOWN_HOSTS_ENV, KEY_ENV):  # the CLI must find the VM cloud's own key and known_hosts
        os.environ.pop(name, None)
    workdir = Path(tempfile.mkdtemp(prefix="helperB-fleet-data-"))
    vms = LocalVms(workdir / "vms")  # <workdir>/vms/ssh is where Fleet looks for the toolkit's SSH files
    spec = load_spec(ROOT / "Pulumi.yaml")
    fleet = None
    try:
        started = time.monotonic()
        inventory = vms.up(spec, 3, PREFIX)
        inventory.save(workdir / "inventory.json")
        ssh = SshSettings(vms.identity.known_hosts, vms.identity.key)
        sites = {o.site: Site(o, ssh) for o in inventory.sites}
        protect(inventory, sites, spec, CertificateAuthority.ensure(workdir / "ca"))
        for site in sites.values():
            site.close()
        TIMINGS["up and protect"] = round(time.monotonic() - started, 1)
        fleet = Fleet(workdir, ssh, spec.app.port)
        _seed(fleet, spec)
        yield Cloud(workdir, vms, fleet, spec)
    finally:
        if fleet is not None:
            fleet.close()
        vms.down()
        print(f"\ntimings (s): {TIMINGS}")
        remove_unmounted(workdir)


def timed(name: str, fn):
    started = time.monotonic()
    result = fn()
    TIMINGS[name] = round(time.monotonic() - started, 2)
    return result


def by_name(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["sites"]}


def started_at(cloud: Cloud, name: str) -> str:
    return cloud.sql(name, "SELECT pg_postmaster_start_time()")


def test_status_over_ssh_shows_the_replicas_lag_and_every_repositorys_backup(cloud):
    report = timed("status (3 sites, CLI)", lambda: failover_json("status", workdir=cloud.workdir))
    sites = by_name(report)
    assert report["active"] == "aws" and report["epoch"] == 1
    assert all(s["reachable"] for s in sites.values())
    assert [sites[n]["database"] for n in ("aws", "gcp", "azure")] == ["up", "up", "none"]  # pilot-light: no cluster
    gcp = sites["gcp"]
    assert gcp["in_recovery"] is True
    assert gcp["replica_lag_seconds"] is not None and gcp["replica_lag_seconds"] >= 0
    assert gcp["replica_lag_bytes"] is not None and gcp["replica_lag_bytes"] >= 0
    assert sites["aws"]["replica_lag_seconds"] is None and sites["azure"]["replica_lag_bytes"] is None
    for index, name in enumerate(("aws", "gcp", "azure"), 1):
        (repo,) = sites[name]["repositories"]
        assert repo["name"] == f"repo{index}" and repo["error"] is None, repo
        assert repo["backups"] >= 1 and repo["last_backup"] and repo["last_archived_wal"], repo
    # The seed's media went into aws's bucket only: the others miss every object until a snapshot.
    assert sites["aws"]["media"]["in_sync"] and sites["aws"]["media"]["objects"] == len(MEDIA)
    assert sites["gcp"]["media"] == {"in_sync": False, "missing": len(MEDIA), "error": None}
    table = failover("status", workdir=cloud.workdir).stdout
    assert "active: aws" in table and "repo3 posix" in table


def test_snapshot_backs_up_into_every_repository_and_writes_the_manifest_to_every_store(cloud):
    primary = cloud.site("aws")
    before = {n: repository(primary.service(), primary.paths.config, i, cloud.fleet.inventory(), n)["backups"]
              for i, n in enumerate(("aws", "gcp", "azure"), 1)}
    result = timed("snapshot (API)", lambda: restore.snapshot(cloud.fleet, cloud.spec, "full", lambda m: None))
    assert result["ok"], result
    backups = [e for e in result["results"] if e["repo"].startswith("repo")]
    assert sorted((e["repo"], e["site"]) for e in backups) == [("repo1", "aws"), ("repo2", "gcp"), ("repo3", "azure")]
    assert any(e["repo"].startswith("prestage") and e["site"] == "azure" for e in result["results"])
    expected = integrity.checksums_of(primary, cloud.spec.database.name)
    for outputs in cloud.fleet.inventory().sites:
        manifest = json.loads(Store(outputs).get(integrity.MANIFEST))
        assert manifest["site"] == "aws" and manifest["tables"] == expected, outputs.site
    after = {n: repository(primary.service(), primary.paths.config, i, cloud.fleet.inventory(), n)["backups"]
             for i, n in enumerate(("aws", "gcp", "azure"), 1)}
    assert all(after[n] == min(before[n] + 1, 2) for n in after), (before, after)  # retention-full=2
    media = {n: s["media"] for n, s in by_name(failover_json("status", workdir=cloud.workdir)).items()}
    assert all(m["in_sync"] and not m["missing"] for m in media.values()), media


def test_restore_into_the_pilot_light_verifies_against_the_live_primary(cloud):
    MOMENTS["before late rows"] = datetime.now(timezone.utc).isoformat()
    time.sleep(1)
    cloud.sql("aws", "INSERT INTO users (name) SELECT 'late ' || g FROM generate_series(1, 50) g")  # after the snapshot
    plan = failover_json("restore", "--site", "azure", workdir=cloud.workdir)
    assert plan["executed"] is False and plan["plan"]["site"] == "azure" and plan["plan"]["unreachable"] == []
    assert cloud.site("azure").recovery_state() is None, "the plan changed nothing: azure runs no database"
    result = timed("restore into azure, live check (CLI)",
                   lambda: failover_json("restore", "--site", "azure", "--yes", workdir=cloud.workdir))
    assert result["verified"] and result["against"] == "live aws", result
    assert result["source_site"] == plan["plan"]["source_site"]
    assert all(c["match"] and c["restored_rows"] > 0 for c in result["checks"].values()), result["checks"]
    assert result["rows"]["users"] == int(cloud.sql("aws", "SELECT count(*) FROM users")) == 250  # the WAL after the backup too
    assert result["media_missing"] == 0 and result["media_error"] is None
    assert cloud.site("azure").recovery_state() is False
    assert cloud.sql("azure", "SHOW archive_mode") == "off" and cloud.sql("azure", "SHOW ssl") == "on"
    assert "RUNNING" not in cloud.site("azure").root().run("supervisorctl status failover-walstream", warn=True).stdout
    # A changed row is caught: verify compares checksums, not only counts.
    cloud.sql("azure", "UPDATE posts SET body = 'changed' WHERE id = 1")
    inventory, azure = cloud.fleet.inventory(), cloud.site("azure")
    again = restore.verify(cloud.fleet, cloud.spec, inventory, azure, result["source_site"], protection.install_rclone(azure.service(), inventory, PATHS))
    assert not again["verified"] and [t for t, c in again["checks"].items() if not c["match"]] == ["posts"], again


def test_a_plan_with_the_active_site_as_target_is_refused_before_anything_changes(cloud):
    before = started_at(cloud, "aws")
    refused = failover("restore", "--site", "aws", "--yes", workdir=cloud.workdir, check=False)
    assert refused.returncode == 2 and "site aws is the active primary" in refused.stderr, refused.stderr
    assert started_at(cloud, "aws") == before and cloud.site("aws").recovery_state() is False
    with pytest.raises(FailoverError, match=r"--repo 'repo9' is neither a site nor a repoN of: repo1 \(aws\)"):
        restore.plan(cloud.fleet, cloud.spec, "gcp", "repo9", None)
    with pytest.raises(FailoverError, match=r"--target-time 'yesterday' is not an ISO 8601 time"):
        restore.plan(cloud.fleet, cloud.spec, "gcp", None, "yesterday")


def test_scratch_restore_verifies_and_leaves_no_scratch_cluster_behind(cloud):
    gcp = cloud.site("gcp")
    before, clusters = started_at(cloud, "gcp"), gcp.service().run("pg_lsclusters -h").stdout
    result = timed("scratch restore on gcp (CLI)",
                   lambda: failover_json("restore", "--site", "gcp", "--scratch", "--yes", workdir=cloud.workdir))
    assert result["verified"] and result["removed"] and result["site"] == "gcp", result
    assert result["port"] == cloud.spec.database.port + scratch.PORT_OFFSET
    assert all(c["match"] and c["restored_rows"] > 0 for c in result["checks"].values()), result["checks"]
    assert not gcp.service().run(f"test -e {scratch.PGDATA} -o -e {scratch.LOG}", warn=True).ok
    assert not gcp.service().run(f"pg_isready -q -p {result['port']}", warn=True).ok, "the scratch cluster still runs"
    assert started_at(cloud, "gcp") == before and gcp.service().run("pg_lsclusters -h").stdout == clusters
    assert gcp.recovery_state() is True, "the warm replica kept replaying"


def test_a_scratch_restore_from_each_encrypted_repository_verifies(cloud):
    """Every repository is encrypted (repoN-cipher-type) and each restores on its own."""
    config = cloud.site("gcp").service().run(f"cat {PATHS.config}").stdout.splitlines()
    for index, name in enumerate(("aws", "gcp", "azure"), 1):
        assert f"repo{index}-cipher-type=aes-256-cbc" in config
        result = timed(f"scratch restore from repo{index} on gcp (CLI)", lambda: failover_json(
            "restore", "--site", "gcp", "--scratch", "--repo", f"repo{index}", "--yes", workdir=cloud.workdir))
        assert result["verified"] and result["repo"] == f"repo{index}" and result["source_site"] == name, result
    # Read as if unencrypted, the repository is unreadable: what the store holds is ciphertext.
    probe = cloud.site("gcp").service().run(
        f"sed '/^repo2-cipher/d' {PATHS.config} > /tmp/nokey.conf && pgbackrest --config=/tmp/nokey.conf "
        "--stanza=social --repo=2 info --output=json; status=$?; rm -f /tmp/nokey.conf; exit $status", warn=True)
    assert not probe.ok or '"status":{"code":0' not in probe.stdout.replace(" ", ""), probe.stdout


def test_with_the_primary_dropped_status_says_so_and_restore_verifies_against_the_manifest(cloud):
    cloud.vms.drop("aws")
    report = timed("status, primary dropped (CLI)", lambda: failover_json("status", workdir=cloud.workdir))
    sites = by_name(report)
    assert sites["aws"]["reachable"] is False and sites["aws"]["database"] == "unknown"
    assert sites["aws"]["repositories"][0]["error"].startswith("unreachable"), sites["aws"]["repositories"]
    assert sites["gcp"]["reachable"] and sites["gcp"]["repositories"][0]["last_backup"]
    assert sites["gcp"]["replica_lag_bytes"] is None, "no primary to compare with"
    before = started_at(cloud, "azure")
    refused = failover("restore", "--site", "azure", "--repo", "repo1", workdir=cloud.workdir, check=False)
    assert refused.returncode == 2 and "repo1 of site aws" in refused.stderr and "unreachable" in refused.stderr, \
        refused.stderr
    active = failover("restore", "--site", "aws", workdir=cloud.workdir, check=False)
    assert active.returncode == 2 and "site aws is the active primary" in active.stderr, active.stderr
    assert started_at(cloud, "azure") == before, "a refused plan changed nothing"
    result = timed("restore into azure, manifest check (CLI)",
                   lambda: failover_json("restore", "--site", "azure", "--yes", workdir=cloud.workdir))
    assert result["verified"] and result["against"].startswith("manifest of "), result
    assert result["plan"]["unreachable"] == ["aws"] and result["source_site"] in ("gcp", "azure")
    assert all(c["match"] and c["restored_rows"] > 0 for c in result["checks"].values()), result["checks"]
    assert result["media_missing"] == 0


def test_restore_database_to_a_point_in_time_can_return_before_recovery_ends(cloud):
    """The runbook's pilot-light step: wait=False returns once the cluster answers; it promotes itself."""
    azure, inventory = cloud.site("azure"), cloud.fleet.inventory()
    timed("restore_database to a point in time, wait=False", lambda: restore.restore_database(
        azure, inventory, inventory.repo_index("azure"), {"aws"}, MOMENTS["before late rows"], wait=False))
    assert azure.recovery_state() is not None, "it answers (read-only while it replays)"
    wait_for(lambda: azure.recovery_state() is False, 120, "azure to reach the target time and promote", 0.3)
    assert cloud.sql("azure", "SELECT count(*) FROM users") == "200", "stopped before the late rows"
