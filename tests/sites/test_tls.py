"""The toolkit's CA: created once in a private directory, or taken from the secret FAILOVER_CA
(pure: openssl only, no server)."""
from __future__ import annotations

import base64
import os
import stat
import subprocess

import pytest

from infra import secrets
from infra.sites.tls import SECRET_NAME, CertificateAuthority, CertificateError
from tests.conftest import FAILOVER, failover


@pytest.fixture(autouse=True)
def no_secret(monkeypatch):
    monkeypatch.delenv(SECRET_NAME, raising=False)


def _verifies(ca: CertificateAuthority, certificate: str, tmp_path) -> bool:
    path = tmp_path / "server.crt"
    path.write_text(certificate)
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca.certificate), str(path)],
                          capture_output=True).returncode == 0


def test_the_ca_is_created_once_with_a_private_key(tmp_path):
    ca = CertificateAuthority.ensure(tmp_path / "ca")
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.directory.stat().st_mode) == 0o700
    first = ca.certificate.read_text()
    assert CertificateAuthority.ensure(tmp_path / "ca").certificate.read_text() == first
    assert CertificateAuthority.available(tmp_path / "elsewhere") is None
    assert not (tmp_path / "elsewhere").exists()


def test_the_secret_carries_the_ca_and_never_lands_in_the_work_directory(tmp_path, monkeypatch):
    original = CertificateAuthority.ensure(tmp_path / "ca")
    value = original.export()
    assert value not in secrets.redact(f"x {value} y")  # remembered for redaction
    monkeypatch.setenv(SECRET_NAME, value)
    from_secret = CertificateAuthority.ensure(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert from_secret.directory != original.directory
    assert stat.S_IMODE(from_secret.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(from_secret.key.stat().st_mode) == 0o600
    _, certificate = from_secret.issue("127.0.0.9", ("aws",))
    assert _verifies(original, certificate, tmp_path)  # the same CA: sites need no new certificates
    assert from_secret.describe()["sha256"] == original.describe()["sha256"]


def test_a_secret_naming_another_ca_than_the_work_directory_is_refused(tmp_path, monkeypatch):
    CertificateAuthority.ensure(tmp_path / "ca")
    other = CertificateAuthority.ensure(tmp_path / "other")
    monkeypatch.setenv(SECRET_NAME, other.export())
    with pytest.raises(CertificateError, match=f"holds another CA than {tmp_path / 'ca'}"):
        CertificateAuthority.ensure(tmp_path / "ca")


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n").decode()])
def test_a_broken_secret_is_named_and_says_how_to_write_it(tmp_path, monkeypatch, value):
    monkeypatch.setenv(SECRET_NAME, value)
    with pytest.raises(CertificateError, match="env/FAILOVER_CA .*failover sites ca --export"):
        CertificateAuthority.ensure(tmp_path / "ca")


def test_sites_ca_exports_to_a_new_private_file_and_prints_no_key(tmp_path):
    workdir = tmp_path / "wd"
    CertificateAuthority.ensure(workdir / "vms" / "ca")
    target = tmp_path / "ca.env"
    shown = failover("sites", "ca", "--export", str(target), workdir=workdir)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    value = target.read_text().strip().removeprefix("FAILOVER_CA=")
    assert "PRIVATE KEY" in base64.b64decode(value).decode()
    assert value not in shown.stdout + shown.stderr and "PRIVATE" not in shown.stdout + shown.stderr
    assert "sha256" in shown.stdout + shown.stderr
    again = failover("sites", "ca", "--export", str(target), workdir=workdir, check=False)
    assert again.returncode != 0 and "exists" in again.stderr
    none = failover("sites", "ca", workdir=tmp_path / "empty", check=False)
    assert none.returncode != 0 and "no CA here" in none.stderr
    env = {**os.environ, SECRET_NAME: value, "FAILOVER_WORKDIR": str(tmp_path / "empty")}
    from_secret = subprocess.run([*FAILOVER, "sites", "ca"], env=env, capture_output=True, text=True)
    assert from_secret.returncode == 0 and "secret FAILOVER_CA" in from_secret.stdout + from_secret.stderr
    assert value not in from_secret.stdout + from_secret.stderr
