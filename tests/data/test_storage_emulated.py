"""pgBackRest and rclone against emulated S3 (moto behind stunnel), GCS (fake-gcs-server) and Azure (Azurite).

Real PostgreSQL 15, pgBackRest and rclone as the `postgres` user; only the cloud APIs are
emulated. Per storage type: WAL archived and a full backup taken, restored into another
cluster with the same checksum, media synced and checked. Then each failure (wrong key,
missing bucket, stopped emulator, untrusted certificate) must give a message naming site,
type, location and fix, and never a credential.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from pathlib import Path

import pytest
from invoke import Context

from infra.data import objectstores  # noqa: F401  (registers s3, gcs, azure)
from infra.data import protection, storage_errors
from infra.data.pgbackrest import HostPaths
from infra.sites import emulators
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable, wait_for
from playbooks import media, pgbackrest, postgres
from playbooks.host import ensure_dir, run
from tests.conftest import service_dir
from tests.data.emulated import free_block, secret_values

pytestmark = pytest.mark.integration

SITES = [(0, "aws", "s3"), (1, "gcp", "gcs"), (2, "azure", "azure")]
ADDRESS = "127.0.0.1"


@pytest.fixture(scope="module")
def cloud():
    """All three emulators in one work directory, stopped (by PID) and removed afterwards."""
    for tool in ("pgbackrest", "rclone", "stunnel4"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: run scripts/setup")
    workdir = service_dir("emulated")
    base = free_block([ADDRESS], 19100, 19700)
    try:
        for index, site, _ in SITES:
            emulators.start_emulated(workdir, index, site, base)
        yield Emulated(workdir, base)
    finally:
        table = ProcessTable(workdir)
        for name in table.names():
            table.stop(name)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclasses.dataclass
class Emulated:
    workdir: Path
    base: int

    def emulator(self, index: int) -> emulators.Emulator:
        return emulators.emulator(self.workdir, index, SITES[index][1], self.base)

    def inventory(self, index: int, repo: Repository | None = None, remote: MediaRemote | None = None,
                  credentials: dict[str, str] | None = None) -> Inventory:
        """The emulated site as an Inventory, its credentials only in writer_credentials (as the
        cloud programs export them): pgBackRest and rclone get them merged in by the engine."""
        emu = self.emulator(index)
        outputs = SiteOutputs(emu.site, emu.site, "loopback", "primary", (ADDRESS,), (ADDRESS,), "postgres",
                              ADDRESS, 0, repo or emu.repository(), remote or emu.media_remote(),
                              credentials if credentials is not None else emu.writer_credentials())
        return Inventory([outputs], active=emu.site)

    def secret_values(self) -> list[str]:
        return secret_values(self.workdir)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        return sock.getsockname()[1]


def _host(c, root: Path, name: str) -> HostPaths:
    base = root / name
    paths = HostPaths(f"{base}/pg", f"{base}/run", f"{base}/pgbackrest")
    for path in (str(base), paths.socket_dir, f"{base}/logs"):
        ensure_dir(c, path, "755")
    return paths


CHECKSUM = "SELECT count(*) || ':' || md5(string_agg(id || ',' || body, ';' ORDER BY id)) FROM items"


@pytest.mark.parametrize("index", [0, 1, 2], ids=[kind for _, _, kind in SITES])
def test_backup_restore_and_media_through_the_emulated_store(cloud, index):
    c, root = Context(), service_dir(f"it-{SITES[index][2]}")
    site, inventory = SITES[index][1], cloud.inventory(index)
    try:
        source, source_port = _host(c, root, "source"), _port()
        protection.install_pgbackrest(c, inventory, site, source, source_port)
        postgres.init_cluster(c, source.pgdata)
        postgres.configure(c, source.pgdata, protection.pg_settings(ADDRESS, source_port, source), protection.HBA)
        postgres.start(c, source.pgdata, f"{root}/source/logs/pg.log")
        sql = "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 50000) g"
        postgres.psql(c, ADDRESS, source_port, sql)

        assert all(r.ok for r in protection.create_stanzas(c, inventory, source)), "stanza-create failed"
        backups = protection.backup_all(c, inventory, source)
        assert backups[0].ok, storage_errors.repository_error(site, inventory.sites[0].repository, backups[0].error, 1)
        # Rows written after the backup reach the restore only through archived WAL.
        postgres.psql(c, ADDRESS, source_port, "INSERT INTO items SELECT g, 'after ' || g FROM generate_series(50001, 50500) g")
        expected = postgres.psql(c, ADDRESS, source_port, CHECKSUM).stdout.strip()
        assert pgbackrest.check(c, source.config).ok  # switches WAL and waits until it is in the repository
        info, error = pgbackrest.info(c, source.config, 1)
        assert info and info["backup"][0]["type"] == "full" and info["archive"][0]["max"], error
        # Two more full backups: each rewrites the info files, and the third expires the first
        # (retention-full=2), deleting its files: what the writer credentials must allow (on S3,
        # moto enforces exactly the AWS program's writer policy).
        for _ in range(2):
            again = pgbackrest.backup(c, source.config, 1, "full")
            assert again.ok, storage_errors.repository_error(site, inventory.sites[0].repository, again.stderr, 1)
        info, error = pgbackrest.info(c, source.config, 1)
        assert info and len(info["backup"]) == 2, error
        postgres.stop(c, source.pgdata)

        target, target_port = _host(c, root, "target"), _port()
        protection.install_pgbackrest(c, inventory, site, target, target_port)
        ensure_dir(c, target.pgdata)
        pgbackrest.restore(c, target.config, 1)
        settings = {**protection.pg_settings(ADDRESS, target_port, target), "archive_mode": "off"}
        postgres.configure(c, target.pgdata, settings, protection.HBA)
        postgres.start(c, target.pgdata, f"{root}/target/logs/pg.log")
        wait_for(lambda: not postgres.in_recovery(c, ADDRESS, target_port), 60, "the restored cluster to promote")
        assert postgres.psql(c, ADDRESS, target_port, CHECKSUM).stdout.strip() == expected

        conf = protection.install_rclone(c, inventory, source)
        media_dir = root / "media"
        ensure_dir(c, str(media_dir), "755")
        for name, size in (("a.jpg", 1000), ("nested/b.png", 300_000), ("c.mp4", 5 * 1024 * 1024)):
            run(c, ["mkdir", "-p", str((media_dir / name).parent)])
            run(c, ["sh", "-c", f"head -c {size} /dev/urandom > {media_dir / name}"])
        bucket = f"{site}:{inventory.sites[0].media_remote.path}"
        copied = media.copy(c, conf, str(media_dir), bucket)
        assert copied.ok, storage_errors.media_error(site, SITES[index][2], inventory.sites[0].media_remote, copied.stderr)
        assert media.check(c, conf, str(media_dir), bucket) == {"missing": [], "ok": True, "error": ""}
        assert media.count(c, conf, bucket) == 3
    finally:
        for name in ("source", "target"):
            if (root / name / "pg" / "PG_VERSION").exists():
                postgres.stop(c, f"{root}/{name}/pg", "immediate")
        shutil.rmtree(root, ignore_errors=True)


# --- failures ---------------------------------------------------------------------------------

def _broken(cloud: Emulated, index: int, failure: str) -> tuple[Repository, MediaRemote, dict[str, str], dict[str, str]]:
    """The site's repository, media remote and writer credentials, broken the way `failure`
    says, plus env for rclone."""
    emu = cloud.emulator(index)
    repo, remote, creds, env = emu.repository(), emu.media_remote(), emu.writer_credentials(), {}
    if failure == "wrong key":
        os.environ["FAILOVER_TEST_WRONG_KEY"] = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
        wrong = "env/FAILOVER_TEST_WRONG_KEY"
        if emu.kind == "s3":
            creds = {**creds, "s3-key-secret": wrong}
        elif emu.kind == "azure":
            sas = f"https://127.0.0.1:{emu.port}/{emulators.AZURE_ACCOUNT}?" + emulators.account_sas(
                emulators.AZURE_ACCOUNT, os.environ["FAILOVER_TEST_WRONG_KEY"])
            os.environ["FAILOVER_TEST_WRONG_SAS"] = sas
            creds = {**creds, "azure-key": wrong, "media-sas-url": "env/FAILOVER_TEST_WRONG_SAS"}
    elif failure == "missing bucket":
        option = {"s3": "s3-bucket", "gcs": "gcs-bucket", "azure": "azure-container"}[emu.kind]
        repo = _with(repo, {option: "no-such-bucket"})
        remote = dataclasses.replace(remote, path="no-such-bucket/media")
    elif failure == "untrusted certificate":
        other_ca, _ = emulators.ensure_ca(cloud.workdir / "other-ca", "another CA")
        repo = _with(repo, {"storage-ca-file": str(other_ca)})
        env = {"RCLONE_CA_CERT": str(other_ca)}
    return repo, remote, creds, env


def _with(thing, options: dict[str, str]):
    return dataclasses.replace(thing, options={**thing.options, **options})


def _attempt(cloud: Emulated, index: int, repo: Repository, remote: MediaRemote, creds: dict[str, str],
             env: dict[str, str], slow: bool = False):
    """pgBackRest lists the repository and rclone the bucket; returns both failure messages."""
    c, root = Context(), service_dir("err")
    site, kind = SITES[index][1], SITES[index][2]
    try:
        inventory = cloud.inventory(index, repo, remote, creds)
        paths = _host(c, root, "host")
        protection.install_pgbackrest(c, inventory, site, paths, 5432)
        conf = protection.install_rclone(c, inventory, paths)
        # A short I/O timeout: pgBackRest retries an unreachable store for about 4 x io-timeout.
        listed = run(c, ["pgbackrest", f"--config={paths.config}", "--stanza=social", "--repo=1", "--io-timeout=1",
                         "--log-level-console=warn", "repo-ls"], warn=True, timeout=60)
        synced = _rclone_failure(c, conf, f"{site}:{remote.path}", env, kind == "azure" and slow)
        assert not listed.ok and not synced.ok, (listed.stderr, synced.stderr)
        return (storage_errors.repository_error(site, repo, listed.stdout + listed.stderr, 1),
                storage_errors.media_error(site, kind, remote, synced.stdout + synced.stderr))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _rclone_failure(c, conf: str, path: str, env: dict[str, str], slow: bool):
    """rclone lsf expected to fail.

    The Azure SDK inside rclone 1.60 retries a refused connection or a TLS failure itself for
    about 45 s whatever rclone's retry flags say; then its debug dump of the first response
    (rclone is stopped after 10 s) carries the same error text the final message would.
    """
    if not slow:
        return run(c, media._rclone(conf, "--low-level-retries=1", "lsf", path), warn=True, timeout=120, env=env)
    # `timeout` runs as the service user, so it can stop rclone itself (invoke's timeout stops only runuser).
    argv = ["timeout", "10", *media._rclone(conf, "--low-level-retries=1", "-vv", "--dump=headers", "lsf", path)]
    return run(c, argv, warn=True, timeout=30, env=env)


EXPECTED = {
    "wrong key": ("the store refused the credentials", "check the "),
    "missing bucket": ("does not exist", "create the "),
    "untrusted certificate": ("could not be verified", "point "),
    "stopped emulator": ("did not answer", "check that the store"),
}


def _assert_message(cloud: Emulated, message: str, index: int, failure: str, where: str) -> None:
    site, kind = SITES[index][1], SITES[index][2]
    assert message.startswith(f"site {site}: {kind} storage "), message
    assert where in message, message
    # The S3 writer's policy names its own bucket only: as on AWS, another (or a missing) bucket
    # answers 403, so the message is the refused-credentials one, which names that bucket.
    summary, fix = EXPECTED["wrong key" if (kind, failure) == ("s3", "missing bucket") else failure]
    assert summary in message and f"fix: {fix}" in message, message
    for secret in [*cloud.secret_values(), "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=", "sig="]:
        assert secret not in message, f"{message} leaks a credential"


@pytest.mark.parametrize("failure", ["wrong key", "missing bucket", "untrusted certificate"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=[kind for _, _, kind in SITES])
def test_failures_name_site_type_location_and_fix_without_secrets(cloud, index, failure):
    if failure == "wrong key" and SITES[index][2] == "gcs":
        pytest.skip("fake-gcs-server accepts every credential: a wrong GCS key cannot be produced here")
    repo, remote, creds, env = _broken(cloud, index, failure)
    repo_message, media_message = _attempt(cloud, index, repo, remote, creds, env, failure == "untrusted certificate")
    emu = cloud.emulator(index)
    bucket = "no-such-bucket" if failure == "missing bucket" else emu.bucket
    _assert_message(cloud, repo_message, index, failure, f"{bucket} at localhost:{emu.port}")
    _assert_message(cloud, media_message, index, failure, bucket)


@pytest.mark.parametrize("index", [0, 1, 2], ids=[kind for _, _, kind in SITES])
def test_a_stopped_emulator_is_reported_by_name(cloud, index):
    emu = cloud.emulator(index)
    assert emu.stop()
    try:
        repo_message, media_message = _attempt(cloud, index, emu.repository(), emu.media_remote(), emu.writer_credentials(), {},
                                               slow=True)
        _assert_message(cloud, repo_message, index, "stopped emulator", f"{emu.bucket} at localhost:{emu.port}")
        _assert_message(cloud, media_message, index, "stopped emulator", emu.bucket)
    finally:
        emulators.start_emulated(cloud.workdir, index, emu.site, cloud.base)


def test_the_s3_writer_overwrites_and_deletes_objects_but_never_a_version_or_the_bucket(cloud):
    """The AWS program's writer policy, enforced by moto: a current object can be overwritten and
    deleted (pgBackRest's info files, expire), while an earlier version, the bucket's versioning
    and lifecycle and the bucket itself are out of reach, so history survives the writer."""
    import boto3
    from botocore.exceptions import ClientError

    emu = cloud.emulator(0)
    values = emulators.emulator_env(cloud.workdir)
    refs = emu.writer_credentials()
    s3 = boto3.client("s3", endpoint_url=emu.url, region_name=emulators.REGION, verify=str(emu.tls_dir / "ca.crt"),
                      aws_access_key_id=values[refs["s3-key"][4:]],
                      aws_secret_access_key=values[refs["s3-key-secret"][4:]])
    first = s3.put_object(Bucket=emu.bucket, Key="probe/archive.info", Body=b"1")["VersionId"]
    s3.put_object(Bucket=emu.bucket, Key="probe/archive.info", Body=b"2")  # an overwrite: a new version
    s3.delete_object(Bucket=emu.bucket, Key="probe/archive.info")  # a delete marker
    refused = {
        "DeleteObjectVersion": lambda: s3.delete_object(Bucket=emu.bucket, Key="probe/archive.info", VersionId=first),
        "PutBucketVersioning": lambda: s3.put_bucket_versioning(Bucket=emu.bucket,
                                                                VersioningConfiguration={"Status": "Suspended"}),
        "PutLifecycleConfiguration": lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=emu.bucket, LifecycleConfiguration={"Rules": [
                {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]}),
        "DeleteBucket": lambda: s3.delete_bucket(Bucket=emu.bucket),
    }
    for action, attempt in refused.items():
        with pytest.raises(ClientError) as error:
            attempt()
        assert error.value.response["Error"]["Code"] == "AccessDenied", (action, error.value.response)
