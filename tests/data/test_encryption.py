"""Client-side encryption in the rendered configs (infra/data/encryption.py), and the secrets a
host gets: every repository has a cipher, every bucket a crypt remote, keys come only from
their references and are redacted (pure, but for `rclone obscure` and `rclone reveal`)."""
from __future__ import annotations

import subprocess

import pytest

from infra import secrets
from infra.data import encryption, media, pgbackrest, protection
from infra.data.pgbackrest import HostPaths
from tests.data.test_objectstores import inventory

PATHS = HostPaths("/srv/pg", "/srv/run", "/srv/pgbackrest")
BACKUP_KEY = "b" * 20 + "backup-key-for-the-test-1234"
MEDIA_KEY = "m" * 20 + "media-key-for-the-test-12345"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("T_S3_KEY", "AKIATEST")
    monkeypatch.setenv("T_S3_SECRET", "s3-secret-value-1234")
    monkeypatch.setenv("T_AZ_KEY", "YXp1cmUta2V5LXZhbHVlLTEyMzQ=")
    monkeypatch.setenv("T_AZ_SAS", "https://acct.blob.core.windows.net/?sv=2019-12-12&sig=c2VjcmV0c2ln")
    monkeypatch.setenv("FAILOVER_BACKUP_KEY", BACKUP_KEY)
    monkeypatch.setenv("FAILOVER_MEDIA_KEY", MEDIA_KEY)


def conf_sections(text: str) -> dict[str, dict[str, str]]:
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif " = " in line:
            key, value = line.split(" = ", 1)
            current[key] = value
    return sections


def test_every_repository_is_encrypted_with_the_backup_key():
    lines = pgbackrest.render(inventory(), "aws", PATHS, 5432).splitlines()
    for index in (1, 2, 3):
        assert f"repo{index}-cipher-type=aes-256-cbc" in lines
        assert f"repo{index}-cipher-pass={BACKUP_KEY}" in lines


def test_every_bucket_is_reached_through_its_crypt_remote_with_passwords_from_the_media_key():
    sections = conf_sections(media.render(inventory()))
    for site, path in (("aws", "media-a"), ("gcp", "media-b"), ("azure", "media")):
        crypt = sections[f"{site}-crypt"]
        assert crypt["type"] == "crypt" and crypt["remote"] == f"{site}:{path}/{encryption.SEALED}"
        assert crypt["filename_encryption"] == "standard" and crypt["directory_name_encryption"] == "true"
        revealed = [subprocess.run(["rclone", "reveal", crypt[k]], capture_output=True, text=True, check=True).stdout.strip()
                    for k in ("password", "password2")]
        assert revealed == [encryption.derived(MEDIA_KEY, "rclone crypt password"),
                            encryption.derived(MEDIA_KEY, "rclone crypt salt")]
        assert MEDIA_KEY not in crypt.values()
        assert media.bucket(inventory(), site) == f"{site}-crypt:"


def test_a_missing_key_names_its_variable_and_what_needs_it(monkeypatch):
    monkeypatch.delenv("FAILOVER_BACKUP_KEY")
    with pytest.raises(secrets.MissingSecret, match="FAILOVER_BACKUP_KEY.*pgBackRest's repository encryption"):
        pgbackrest.render(inventory(), "aws", PATHS, 5432)
    monkeypatch.delenv("FAILOVER_MEDIA_KEY")
    with pytest.raises(secrets.MissingSecret, match="FAILOVER_MEDIA_KEY"):
        media.render(inventory())


def test_a_short_key_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("FAILOVER_MEDIA_KEY", "changeme")
    with pytest.raises(encryption.WeakKey) as error:
        media.render(inventory())
    assert "changeme" not in str(error.value) and "openssl rand" in str(error.value)


def test_a_host_gets_every_secret_behind_the_inventory_and_both_keys_and_they_are_redacted():
    values = protection.host_secrets(inventory())
    assert values == {"T_S3_KEY": "AKIATEST", "T_S3_SECRET": "s3-secret-value-1234",
                      "T_AZ_KEY": "YXp1cmUta2V5LXZhbHVlLTEyMzQ=",
                      "T_AZ_SAS": "https://acct.blob.core.windows.net/?sv=2019-12-12&sig=c2VjcmV0c2ln",
                      "FAILOVER_BACKUP_KEY": BACKUP_KEY, "FAILOVER_MEDIA_KEY": MEDIA_KEY}
    assert secrets.parse_env(secrets.render_env(values)) == values
    assert secrets.redact(f"failed with {BACKUP_KEY} and {MEDIA_KEY}") == "failed with *** and ***"
