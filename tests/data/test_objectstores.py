"""S3, GCS and Azure storage types: pgBackRest options, rclone remotes, and error messages (pure)."""
from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest

from infra import secrets
from infra.data import media, objectstores, pgbackrest, storage_errors
from infra.data.pgbackrest import HostPaths
from infra.data.storage import StoreError, storage_for
from infra.sites import emulators
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs

PATHS = HostPaths("/srv/pg", "/srv/run", "/srv/pgbackrest")
KEY_SECRET = "s3-secret-value-1234"
AZURE_KEY = "YXp1cmUta2V5LXZhbHVlLTEyMzQ="
SAS = "https://acct.blob.core.windows.net/?sv=2019-12-12&sig=c2VjcmV0c2ln"

S3_REPO = Repository("s3", {"s3-bucket": "backups-a", "s3-endpoint": "s3.eu-west-1.amazonaws.com",
                            "s3-region": "eu-west-1", "s3-key": "env/T_S3_KEY", "s3-key-secret": "env/T_S3_SECRET",
                            "path": "/pgbackrest"})
GCS_REPO = Repository("gcs", {"gcs-bucket": "backups-b", "gcs-key-type": "service", "gcs-key": "/etc/gcs.json",
                              "path": "/pgbackrest"})
AZ_REPO = Repository("azure", {"azure-account": "acct", "azure-container": "backups", "azure-key": "env/T_AZ_KEY",
                               "azure-key-type": "shared", "path": "/pgbackrest"})


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv("T_S3_KEY", "AKIATEST")
    monkeypatch.setenv("T_S3_SECRET", KEY_SECRET)
    monkeypatch.setenv("T_AZ_KEY", AZURE_KEY)
    monkeypatch.setenv("T_AZ_SAS", SAS)


def outputs(name: str, repo: Repository, remote: MediaRemote) -> SiteOutputs:
    return SiteOutputs(name, "x", "r", "warm", (), (), "ops", "10.0.0.1", 5432, repo, remote)


def inventory() -> Inventory:
    return Inventory([
        outputs("aws", S3_REPO, MediaRemote("s3", {"provider": "AWS", "region": "eu-west-1",
                                                   "access_key_id": "env/T_S3_KEY",
                                                   "secret_access_key": "env/T_S3_SECRET"}, "media-a")),
        outputs("gcp", GCS_REPO, MediaRemote("google cloud storage", {"bucket_policy_only": "true"}, "media-b")),
        outputs("azure", AZ_REPO, MediaRemote("azureblob", {"sas_url": "env/T_AZ_SAS"}, "media")),
    ], active="aws")


def test_pgbackrest_options_per_type_with_secrets_resolved():
    text = pgbackrest.render(inventory(), "aws", PATHS, 5432)
    for line in ["repo1-type=s3", "repo1-s3-bucket=backups-a", "repo1-s3-region=eu-west-1",
                 f"repo1-s3-key-secret={KEY_SECRET}", "repo2-type=gcs", "repo2-gcs-key=/etc/gcs.json",
                 "repo3-type=azure", "repo3-azure-container=backups", f"repo3-azure-key={AZURE_KEY}",
                 "repo3-retention-full=2"]:
        assert line in text.splitlines()
    assert "env/" not in text


GCS_KEY = {"type": "service_account", "project_id": "example", "private_key": "-----BEGIN KEY-----\nabc\n"}


def pulled_inventory(monkeypatch) -> Inventory:
    """Sites shaped as `inventory pull` leaves them: no credential in any option, each site's
    writer credentials as references keyed by pgBackRest option names (infra/clouds)."""
    monkeypatch.setenv("T_GCS_KEY", base64.b64encode(json.dumps(GCS_KEY).encode()).decode())
    monkeypatch.setenv("T_MEDIA_SAS", "sv=2022-11-02&sr=c&sp=rcwl&sig=bWVkaWFzaWc")
    s3 = Repository("s3", {k: v for k, v in S3_REPO.options.items() if k not in ("s3-key", "s3-key-secret")})
    gcs = Repository("gcs", {"gcs-bucket": "backups-b", "gcs-key-type": "service", "path": "/pgbackrest"})
    azure = Repository("azure", {"azure-account": "acct", "azure-container": "backups", "azure-key-type": "sas",
                                 "path": "/pgbackrest"})
    return Inventory([
        SiteOutputs("aws", "aws", "r", "primary", (), (), "ops", "10.0.0.1", 5432, s3,
                    MediaRemote("s3", {"provider": "AWS", "region": "eu-west-1"}, "media-a"),
                    {"s3-key": "env/T_S3_KEY", "s3-key-secret": "env/T_S3_SECRET"}),
        SiteOutputs("gcp", "gcp", "r", "warm", (), (), "ops", "10.0.0.2", 5432, gcs,
                    MediaRemote("google cloud storage", {"bucket_policy_only": "true"}, "media-b"),
                    {"gcs-key-json-base64": "env/T_GCS_KEY"}),
        SiteOutputs("azure", "azure", "r", "pilot-light", (), (), "ops", "10.0.0.3", 5432, azure,
                    MediaRemote("azureblob", {"account": "mediaacct"}, "media"),
                    {"azure-key": "env/T_AZ_KEY", "media-sas": "env/T_MEDIA_SAS"}),
    ], active="aws")


def test_writer_credentials_are_merged_into_every_repository_and_media_remote(monkeypatch):
    inv = pulled_inventory(monkeypatch)
    lines = pgbackrest.render(inv, "gcp", PATHS, 5432).splitlines()
    for line in ["repo1-s3-key=AKIATEST", f"repo1-s3-key-secret={KEY_SECRET}",
                 "repo2-gcs-key-type=service", "repo2-gcs-key=/srv/pgbackrest/repo2-gcs-key.json",
                 f"repo3-azure-key={AZURE_KEY}", "repo3-azure-key-type=sas"]:
        assert line in lines, line
    # pgBackRest reads a GCS service key from a file: the decoded JSON, written beside its config.
    files = pgbackrest.credential_files(inv, PATHS)
    assert list(files) == ["/srv/pgbackrest/repo2-gcs-key.json"]
    assert json.loads(files["/srv/pgbackrest/repo2-gcs-key.json"]) == GCS_KEY
    assert pgbackrest.credential_files(inv, PATHS, exclude={"gcp"}) == {}
    conf = media.render(inv)
    assert "access_key_id = AKIATEST" in conf and f"secret_access_key = {KEY_SECRET}" in conf
    assert f"service_account_credentials = {json.dumps(GCS_KEY, separators=(',', ':'))}" in conf
    assert "sas_url = https://mediaacct.blob.core.windows.net/media?sv=2022-11-02&sr=c&sp=rcwl&sig=bWVkaWFzaWc" in conf
    assert "env/" not in conf
    # Every value resolved is remembered: a message that quotes one is redacted.
    assert "bWVkaWFzaWc" not in secrets.redact(conf) and KEY_SECRET not in secrets.redact(conf)


def test_a_writer_credential_written_as_a_value_is_refused_by_key_not_value(monkeypatch):
    inv = pulled_inventory(monkeypatch)
    aws = dataclasses.replace(inv.sites[0], writer_credentials={"s3-key": "AKIAVISIBLE", "s3-key-secret": "env/T_S3_SECRET"})
    inv.sites[0] = aws
    with pytest.raises(StoreError) as error:
        pgbackrest.render(inv, "aws", PATHS, 5432)
    assert "site aws: writer_credentials s3-key hold values" in str(error.value)
    assert "AKIAVISIBLE" not in str(error.value)


def test_a_broken_gcs_service_key_is_named_with_the_site(monkeypatch):
    inv = pulled_inventory(monkeypatch)
    monkeypatch.setenv("T_GCS_KEY", "not base64 json")
    with pytest.raises(objectstores.StorageConfigError, match="site gcp: writer credential gcs-key-json-base64"):
        pgbackrest.credential_files(inv, PATHS)


def test_rclone_sections_per_type():
    text = media.render(inventory())
    assert "[aws]\ntype = s3\nprovider = AWS\n" in text
    assert f"secret_access_key = {KEY_SECRET}" in text
    assert "[gcp]\ntype = google cloud storage\nbucket_policy_only = true\n" in text
    assert f"[azure]\ntype = azureblob\nsas_url = {SAS}\n" in text


@pytest.mark.parametrize("repo, option", [
    (Repository("s3", {**S3_REPO.options, "s3-key-secret": KEY_SECRET}), "s3-key-secret"),
    (Repository("azure", {**AZ_REPO.options, "azure-key": AZURE_KEY}), "azure-key"),
    (Repository("gcs", {**GCS_REPO.options, "gcs-key-type": "token", "gcs-key": "ya29.tokenvalue"}), "gcs-key"),
])
def test_a_credential_written_as_a_value_is_refused_without_echoing_it(repo, option):
    with pytest.raises(objectstores.StorageConfigError) as error:
        storage_for(repo.type).repo_options(1, repo, "aws")
    assert option in str(error.value) and "env/NAME" in str(error.value)
    assert repo.options[option] not in str(error.value)


def test_a_literal_rclone_credential_is_refused():
    remote = MediaRemote("azureblob", {"sas_url": SAS}, "media")
    with pytest.raises(objectstores.StorageConfigError, match="sas_url") as error:
        storage_for("azure").rclone_section(remote, "azure")
    assert "sig=" not in str(error.value)


def test_missing_options_are_named_with_the_site():
    with pytest.raises(objectstores.StorageConfigError, match="site aws: s3 repository lacks option.* s3-region"):
        storage_for("s3").repo_options(1, Repository("s3", {"s3-bucket": "b", "s3-endpoint": "e"}), "aws")


def test_an_unset_reference_names_the_variable_and_site(monkeypatch):
    monkeypatch.delenv("T_S3_SECRET")
    with pytest.raises(secrets.MissingSecret, match="env/T_S3_SECRET.*site aws s3 option s3-key-secret"):
        storage_for("s3").repo_options(1, S3_REPO, "aws")


def test_describe_names_endpoint_and_bucket_or_container():
    assert storage_for("s3").describe(S3_REPO) == "bucket backups-a at s3.eu-west-1.amazonaws.com, path /pgbackrest"
    assert storage_for("gcs").describe(GCS_REPO) == "bucket backups-b at storage.googleapis.com, path /pgbackrest"
    assert storage_for("azure").describe(AZ_REPO) == "container backups at acct.blob.core.windows.net, path /pgbackrest"
    local = Repository("azure", {**AZ_REPO.options, "azure-endpoint": "localhost", "storage-port": "19020"})
    assert storage_for("azure").describe(local) == \
        "container backups at localhost:19020, path /pgbackrest (account acct)"


def test_emulated_outputs_are_one_type_per_site_and_hold_only_references(tmp_path):
    kinds = []
    for index, site in enumerate(["aws", "gcp", "azure"]):
        repo, remote, creds = emulators.emulated_outputs(tmp_path, index, site, base_port=19000)
        kinds.append((repo.type, remote.type))
        # Credentials only as writer credentials (references), as the cloud programs export them.
        assert creds and all(secrets.is_ref(v) for v in creds.values())
        assert not set(storage_for(repo.type).secret_options) & set(repo.options)
        assert remote.path == f"failover-{site}/media"
        assert repo.options["storage-ca-file"] == str(tmp_path / "emulators" / "tls" / "ca.crt")
    assert kinds == [("s3", "s3"), ("gcs", "google cloud storage"), ("azure", "azureblob")]
    gcs, _, _ = emulators.emulated_outputs(tmp_path, 1, "gcp", base_port=19000)
    assert gcs.options["gcs-endpoint"] == "localhost:19010" and gcs.options["storage-upload-chunk-size"] == "1GiB"


# Outputs seen from pgBackRest 2.45 and rclone 1.60 against the emulators (trimmed).
OUTPUTS = {
    "wrong key s3": ("ERROR: [039]: HTTP request failed with 403 (Forbidden):\n  *** Response Content ***:\n"
                     "<Error><Code>SignatureDoesNotMatch</Code></Error>", storage_errors.CREDENTIALS),
    "wrong key azure": ("ERROR: [039]: HTTP request failed with 403 (Server failed to authenticate the request.)\n"
                        "x-ms-error-code: AuthorizationFailure", storage_errors.CREDENTIALS),
    "rclone wrong key": ("ERROR : : error listing: SignatureDoesNotMatch: The request signature we calculated "
                         "does not match\n\tstatus code: 403, request id: x", storage_errors.CREDENTIALS),
    "missing bucket s3": ("HTTP request failed with 404 (Not Found):\ncontent-length: 403\n"
                          "<Error><Code>NoSuchBucket</Code></Error>", storage_errors.MISSING),
    "missing container": ("x-ms-error-code: ContainerNotFound", storage_errors.MISSING),
    "missing gcs": ("ERROR: [039]: HTTP request failed with 404 (Not Found):\n GET /storage/v1/b/nosuch/o",
                    storage_errors.MISSING),
    "rclone missing": ("Failed to lsf with 2 errors: last error was: error in ListJSON: directory not found",
                       storage_errors.MISSING),
    "unreachable": ("ERROR: [049]: unable to connect to 'localhost:19599': [111] Connection refused",
                    storage_errors.UNREACHABLE),
    "rclone unreachable": ('Get "https://localhost:19599/b?x=1": dial tcp 127.0.0.1:19599: connect: connection refused',
                           storage_errors.UNREACHABLE),
    "tls": ("ERROR: [095]: unable to verify certificate presented by 'localhost:19500': [20] unable to get local "
            "issuer certificate", storage_errors.TLS),
    "rclone tls": ('Get "https://localhost:19500/b": tls: failed to verify certificate: x509: certificate signed by '
                   'unknown authority', storage_errors.TLS),
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_failures_are_classified(name):
    output, kind = OUTPUTS[name]
    assert storage_errors.classify(output).kind == kind


@pytest.mark.parametrize("kind, fix", [("wrong key s3", "access key pair"), ("missing bucket s3", "create the bucket"),
                                       ("unreachable", "running"), ("tls", "repo1-storage-ca-file")])
def test_repository_messages_name_site_type_location_and_fix_but_no_secret(kind, fix):
    storage_for("s3").repo_options(1, S3_REPO, "aws")  # resolving remembers the secrets for redaction
    output = OUTPUTS[kind][0] + f"\nsecret was {KEY_SECRET}"
    message = storage_errors.repository_error("aws", S3_REPO, output, 1)
    assert message.startswith("site aws: s3 storage bucket backups-a at s3.eu-west-1.amazonaws.com")
    assert fix in message and KEY_SECRET not in message and "secret was" not in message


def test_a_media_message_never_shows_a_sas_signature():
    output = f'Get "{SAS}&comp=list": x509: certificate signed by unknown authority'
    remote = MediaRemote("azureblob", {"sas_url": "env/T_AZ_SAS"}, "failover-azure/media")
    message = storage_errors.media_error("azure", "azure", remote, output)
    assert "site azure: azure storage container failover-azure" in message
    assert "RCLONE_CA_CERT" in message and "sig=" not in message and "c2VjcmV0c2ln" not in message


def test_a_credentials_message_names_the_variables_to_fix():
    message = storage_errors.repository_error("azure", AZ_REPO, OUTPUTS["wrong key azure"][0], 3)
    assert "container backups" in message and "account key or SAS (held in env/T_AZ_KEY)" in message
    assert AZURE_KEY not in message


def test_unknown_output_is_not_echoed():
    message = storage_errors.repository_error("aws", S3_REPO, f"something odd {Path('/x')} token=abc123", 1)
    assert "abc123" not in message and "the operation failed" in message
