"""Protection on the VM cloud, through the real CLI: quorum commit (the shipped mode) and the
synchronous warm replica, an asynchronous replica's lag, WAL in every repository within seconds, journal copies in every store, scratch
restores from a chosen repository or against a wrong or missing manifest, a point-in-time
restore, and a repository that goes away and comes back while the protector keeps the others
protected.

One `failover local up --seed-mb 5 --prefix 127.0.78` cloud for the module (VMs on 127.0.78.1-3,
DNS on .53/.54); the tests run in order and the last ones drop azure.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from infra import secrets
from infra.data import integrity, scratch
from infra.data.storage import Store
from infra.runbook import runner
from infra.runbook.journal import REMOTE_PATH, Journal, JournalStore
from infra.sites import services
from infra.sites.fleet import Fleet
from infra.sites.processes import wait_for
from infra.sites.protect import protect
from infra.sites.site import KEY_ENV, KNOWN_HOSTS_ENV, PROTECTOR_PROGRAM, Site
from infra.sites.tls import CertificateAuthority
from infra.sites.vmcloud import SECRETS_FILE, VmCloud
from infra.spec import load_spec
from infra.status import replica_lag
from tests.appclient import post
from tests.conftest import ROOT, failover, failover_json, processes_rooted_under, remove_unmounted

pytestmark = pytest.mark.integration

PREFIX = "127.0.78"
SPEC = load_spec(ROOT / "Pulumi.yaml")
DB = SPEC.database.name
PASSWORD_ENV = "FAILOVER_REPLICATION_PASSWORD"
PROTECTOR_LOG = f"{services.LOG_DIR}/{PROTECTOR_PROGRAM}.log"
SEGMENT = re.compile(r"^[0-9A-F]{24}$")


@dataclass
class Cloud:
    workdir: Path
    fleet: Fleet

    def site(self, name: str) -> Site:
        return self.fleet.site(name)

    def sql(self, name: str, query: str) -> str:
        return self.site(name).psql(query, DB).stdout.strip()

    def store_dir(self, name: str) -> Path:
        return self.workdir / "vms" / "stores" / name

    def protect(self, spec) -> None:
        """`sites protect` in-process with another spec (the replication mode), on the same VMs."""
        vm_cloud = VmCloud(self.workdir)
        sites = vm_cloud.sites(self.fleet.inventory(), spec)
        try:
            protect(self.fleet.inventory(), sites, spec, CertificateAuthority.ensure(vm_cloud.vms.directory / "ca"))
        finally:
            for site in sites.values():
                site.close()


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="helperC-protection-"))
    workdir.chmod(0o755)
    saved = {name: os.environ.pop(name, None) for name in (PASSWORD_ENV, KNOWN_HOSTS_ENV, KEY_ENV)}
    fleet = None
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, workdir=workdir)
        # The Fleet loads the secret `local up` generated, for the in-process calls (protect) below.
        fleet = Fleet(workdir, app_port=SPEC.app.port)
        assert os.environ[PASSWORD_ENV] == secrets.parse_env((workdir / "vms" / SECRETS_FILE).read_text())[PASSWORD_ENV]
        yield Cloud(workdir, fleet)
    finally:
        if fleet is not None:
            fleet.close()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        take_down(workdir)


def take_down(workdir: Path) -> None:
    """`local down`; the directory goes only when nothing is mounted below it (rmtree would
    follow a VM's bind mount of /dev into the machine's own) and no process runs in a VM."""
    down = failover("local", "down", workdir=workdir, check=False)
    running = processes_rooted_under(workdir)
    remove_unmounted(workdir)
    assert down.returncode == 0, down.stderr
    assert not running, f"processes left in the VMs: {running}"


def by_name(report: dict) -> dict[str, dict]:
    return {s["name"]: s for s in report["sites"]}


# ---------------------------------------------------------------- WAL in the repositories

def write_and_switch(cloud: Cloud, body: str) -> str:
    """A row on the primary, then a WAL switch; returns the segment that holds the write."""
    quoted = body.replace("'", "''")
    out = cloud.site("aws").psql([f"INSERT INTO posts (user_id, body) VALUES (1, '{quoted}')",
                                  "SELECT pg_walfile_name(pg_current_wal_lsn())", "SELECT pg_switch_wal()"], DB)
    return next(line for line in out.stdout.split("\n") if SEGMENT.match(line))


def archived(cloud: Cloud, name: str, segment: str) -> bool:
    """The segment is in the site's repository, as a file in its store (archive/<stanza>/<db id>/<dir>/)."""
    return any((cloud.store_dir(name) / "pgbackrest" / "archive").glob(f"*/*/{segment[:16]}/{segment}-*"))


def wait_archived(cloud: Cloud, segment: str, names: tuple[str, ...], seconds: float) -> float:
    started = time.monotonic()
    wait_for(lambda: all(archived(cloud, n, segment) for n in names), seconds,
               f"{segment} in the repositories of {', '.join(names)} (in: "
               f"{[n for n in ('aws', 'gcp', 'azure') if archived(cloud, n, segment)]})")
    return time.monotonic() - started


# ---------------------------------------------------------------- replicas

def test_commits_wait_for_either_secondary_and_a_write_is_on_the_warm_replica_once_acknowledged(cloud):
    assert SPEC.database.replication == "quorum"  # the spec's default; the next test changes it
    assert cloud.sql("aws", "SHOW synchronous_standby_names") == 'ANY 1 ("gcp", "azure")'
    states = cloud.sql("aws", "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1").split()
    assert states == ["azure|quorum", "gcp|quorum"]  # the pilot-light's WAL stream counts as much as the replica
    status, body = post(f"{PREFIX}.1", 1)
    assert status == 201, body
    # The commit returned once gcp or azure flushed it; gcp's replay follows within moments.
    wait_for(lambda: cloud.sql("gcp", f"SELECT count(*) FROM posts WHERE id = {body['id']}") == "1", 5,
               "the acknowledged write to be readable on gcp")
    report = by_name(failover_json("status", "--no-media", workdir=cloud.workdir))
    assert [report[n]["role"] for n in ("aws", "gcp", "azure")] == ["primary", "warm", "pilot-light"]
    assert report["gcp"]["replica_lag_seconds"] is not None and report["gcp"]["replica_lag_seconds"] < 1.0


def _flush_reported(cloud: Cloud, name: str, lsn: str) -> bool:
    return cloud.sql("aws", f"SELECT flush_lsn >= '{lsn}'::pg_lsn FROM pg_stat_replication "
                            f"WHERE application_name = '{name}'") == "t"


def _received_while_paused(cloud: Cloud) -> str:
    """Pauses gcp's replay, writes on the primary, waits until gcp received it (and a little).

    While replay is paused only the walreceiver's own replies can tell the primary how far it got."""
    wait_for(lambda: cloud.sql("aws", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'gcp' "
                                        "AND state = 'streaming'") == "1", 10, "gcp to stream")
    cloud.sql("gcp", "SELECT pg_wal_replay_pause()")
    wait_for(lambda: cloud.sql("gcp", "SELECT pg_get_wal_replay_pause_state()") == "paused", 10, "replay to pause")
    # Separate statements: in one transaction pg_current_wal_lsn() would precede the write's WAL.
    lsn = cloud.site("aws").psql(["CREATE TABLE IF NOT EXISTS modes (n int)", "INSERT INTO modes VALUES (1)",
                                  "SELECT pg_current_wal_lsn()"], DB).stdout.split()[-1]
    wait_for(lambda: cloud.sql("gcp", f"SELECT pg_last_wal_receive_lsn() >= '{lsn}'::pg_lsn") == "t", 10,
               f"gcp to receive {lsn}")
    time.sleep(0.5)
    return lsn


def test_an_async_replica_sends_no_reply_per_write_and_its_lag_is_still_measured(cloud):
    """`replication: async` (protect again with it): no reply per write, so lag is read on the
    replica; then `sync`, where only the warm replica holds commits and reports every write at
    once; then the spec's quorum mode again."""
    aws, gcp = cloud.site("aws"), cloud.site("gcp")
    cloud.protect(replace(SPEC, database=replace(SPEC.database, replication="async")))
    try:
        assert cloud.sql("aws", "SHOW synchronous_standby_names") == ""
        assert cloud.sql("gcp", "SHOW wal_receiver_status_interval") == "0"
        lsn = _received_while_paused(cloud)
        assert not _flush_reported(cloud, "gcp", lsn), "an async replica replied to a write"
        seconds, lag_bytes = replica_lag(aws, gcp)
        assert lag_bytes is not None and lag_bytes > 0 and seconds is not None and seconds > 0
        cloud.sql("gcp", "SELECT pg_wal_replay_resume()")
        wait_for(lambda: replica_lag(aws, gcp) == (0, 0), 10, "the lag to reach 0")
    finally:
        gcp.psql("SELECT pg_wal_replay_resume()", warn=True)
        cloud.protect(replace(SPEC, database=replace(SPEC.database, replication="sync")))
    try:
        assert cloud.sql("aws", "SHOW synchronous_standby_names") == '"gcp"'
        states = cloud.sql("aws", "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1").split()
        assert states == ["azure|async", "gcp|sync"]  # under sync the WAL stream holds no commit
        lsn = _received_while_paused(cloud)
        assert _flush_reported(cloud, "gcp", lsn), "a sync replica did not report its flush"
    finally:
        gcp.psql("SELECT pg_wal_replay_resume()", warn=True)
        cloud.protect(SPEC)
    assert cloud.sql("aws", "SHOW synchronous_standby_names") == 'ANY 1 ("gcp", "azure")'


def test_the_wal_of_a_write_reaches_every_repository_within_5_seconds(cloud):
    segment = write_and_switch(cloud, "archived")
    seconds = wait_archived(cloud, segment, ("aws", "gcp", "azure"), 5)
    print(f"\nWAL in every repository after {seconds:.2f} s")


def test_journal_copies_go_into_every_store_and_are_read_back_without_a_local_journal(cloud, tmp_path):
    journal = Journal.new("failover", "aws", "gcp", 2, ["preflight"], {})
    journal.record("preflight", "started")
    assert JournalStore(tmp_path).save(journal, runner.journal_copies(cloud.fleet)()) == []
    for outputs in cloud.fleet.inventory().sites:
        assert json.loads(Store(outputs).get(REMOTE_PATH))["run_id"] == journal.run_id, outputs.site
    shown = failover_json("journal", workdir=cloud.workdir)  # no journal in the work directory: from the stores
    assert shown["run_id"] == journal.run_id and shown["complete"] is False


# ---------------------------------------------------------------- scratch restores

def test_a_scratch_restore_runs_on_the_pilot_light_from_a_chosen_repository(cloud):
    result = failover_json("restore", "--yes", "--site", "azure", "--scratch", "--repo", "repo2", workdir=cloud.workdir)
    assert result["verified"] and result["removed"], result
    assert (result["repo"], result["source_site"], result["site"]) == ("repo2", "gcp", "azure")
    assert all(c["match"] and c["restored_rows"] > 0 for c in result["checks"].values()), result["checks"]


def _stores_hold(cloud: Cloud, data: bytes) -> bool:
    return all(Store(s).get(integrity.MANIFEST) == data for s in cloud.fleet.inventory().sites)


def test_a_scratch_restore_that_differs_from_the_manifest_fails(cloud):
    """Proof that the check compares: the primary's manifest is read first for --repo aws (the
    protector copies it to the other buckets, and copies the original back afterwards)."""
    aws = Store(cloud.fleet.inventory().site("aws"))
    original = aws.get(integrity.MANIFEST)
    tampered = json.loads(original)
    tampered["tables"]["posts"]["md5"] = "0" * 32
    aws.put(integrity.MANIFEST, json.dumps(tampered).encode())
    try:
        result = failover("restore", "--yes", "--site", "gcp", "--scratch", "--repo", "aws", "--json",
                          workdir=cloud.workdir, check=False)
    finally:
        aws.put(integrity.MANIFEST, original)
        wait_for(lambda: _stores_hold(cloud, original), 20, "the original manifest back in every store", 0.5)
    assert result.returncode == 1, result.stderr
    checks = json.loads(result.stdout)["checks"]
    assert not checks["posts"]["match"] and checks["users"]["match"], checks
    assert not cloud.site("gcp").service().run(f"test -e {scratch.PGDATA}", warn=True).ok, "scratch left behind"


def test_without_a_manifest_a_scratch_restore_says_to_take_a_snapshot(cloud):
    # aws's first: the protector copies it to the others (and never deletes there).
    manifests = [cloud.store_dir(n) / "media" / integrity.MANIFEST for n in ("aws", "gcp", "azure")]
    for manifest in manifests:
        manifest.rename(manifest.with_suffix(".hidden"))
    try:
        result = failover("restore", "--yes", "--site", "gcp", "--scratch", "--repo", "gcp", workdir=cloud.workdir,
                          check=False)
    finally:
        for manifest in manifests:
            manifest.with_suffix(".hidden").rename(manifest)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "no checksum manifest" in message and "failover snapshot" in message, message


# ---------------------------------------------------------------- point in time

def test_a_point_in_time_restore_from_a_chosen_repository_keeps_the_writes_before_and_drops_those_after(cloud):
    write_and_switch(cloud, "before T")
    time.sleep(1.5)
    target = cloud.sql("aws", "SELECT now()")
    time.sleep(1.5)
    segment = write_and_switch(cloud, "after T")
    wait_archived(cloud, segment, ("aws", "gcp", "azure"), 15)
    result = failover_json("restore", "--yes", "--site", "azure", "--repo", "gcp", "--target-time", target,
                           workdir=cloud.workdir)
    assert result["verified"] and result["target_time"] == target, result
    assert (result["repo"], result["source_site"]) == ("repo2", "gcp")
    bodies = cloud.sql("azure", "SELECT body FROM posts WHERE body IN ('before T', 'after T')").split("\n")
    assert bodies == ["before T"]


# ---------------------------------------------------------------- a repository goes away

def protector_log(cloud: Cloud) -> str:
    return cloud.site("aws").root().run(f"cat {PROTECTOR_LOG}").stdout


def archiver_reached(cloud: Cloud, segment: str) -> bool:
    """PostgreSQL's archiver got past `segment` (archive_command succeeded): nothing piles up in pg_wal."""
    return cloud.sql("aws", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment


def test_an_unreachable_repository_is_reported_and_the_others_stay_protected(cloud):
    """pgBackRest pushes WAL into the repositories that answer even while one does not, but then
    fails the archive_command: PostgreSQL keeps the segment, retries, and pg_wal grows. The
    protector leaves the dead repository out, so the archiver moves on."""
    failover("local", "drop", "--site", "azure", workdir=cloud.workdir)
    cloud.fleet.forget("azure")
    wait_for(lambda: "repositories left out: repo3 (azure)" in protector_log(cloud), 15,
               "the protector to leave azure's repository out", 0.5)
    segment = write_and_switch(cloud, "while azure's store is gone")
    wait_archived(cloud, segment, ("aws", "gcp"), 15)
    wait_for(lambda: archiver_reached(cloud, segment), 15, f"the primary's archiver to get past {segment}", 0.5)
    report = by_name(failover_json("status", "--no-media", workdir=cloud.workdir))
    (repo,) = report["azure"]["repositories"]
    assert report["azure"]["reachable"] is False
    assert repo["name"] == "repo3" and repo["error"].startswith("unreachable"), repo
    assert repo["location"] == str(cloud.store_dir("azure") / "pgbackrest")
    for name in ("aws", "gcp"):
        assert report[name]["reachable"] and report[name]["repositories"][0]["error"] is None, report[name]

    failover("local", "restore-site", "--site", "azure", workdir=cloud.workdir)
    cloud.fleet.forget("azure")
    wait_for(lambda: "repo3 (azure) is back: backup" in protector_log(cloud), 60,
               "the protector to back up into azure's repository again", 0.5)
    assert "repo3 (azure) is back: backup done" in protector_log(cloud), protector_log(cloud)
    later = write_and_switch(cloud, "azure is back")
    wait_archived(cloud, later, ("aws", "gcp", "azure"), 15)
    wait_for(lambda: archiver_reached(cloud, later), 15, f"the primary's archiver to get past {later}", 0.5)
    report = by_name(failover_json("status", "--no-media", workdir=cloud.workdir))
    assert report["azure"]["reachable"] and report["azure"]["repositories"][0]["error"] is None
    assert report["azure"]["repositories"][0]["backups"] >= 2, "no backup into it after it came back"
