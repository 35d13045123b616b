"""The toolkit's certificate authority: server certificates for every site's PostgreSQL.

The CA is a secret of the operator's, never on a site: a site holds only its own key and
certificate and the CA's certificate, with which its clients (replicas, WAL receivers, the
app) connect at `sslmode=verify-full`. Certificates name the database host's address as an IP
subjectAltName, which libpq 14+ verifies.

Where the CA is kept, in this order:
- the secret FAILOVER_CA (`env/FAILOVER_CA`: the key and certificate PEM, base64 on one line,
  as `failover sites ca --export` writes it), for CI and secret managers; it is written only
  to a private temporary directory (mode 0700) for openssl, removed when the process ends;
- else a directory of the operator's (`<workdir>/vms/ca`, key mode 0600), created on first use.
"""
from __future__ import annotations

import atexit
import base64
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra import secrets
from infra.errors import FailoverError

DAYS = 825
SECRET_NAME = "FAILOVER_CA"
SECRET_REF = f"env/{SECRET_NAME}"


class CertificateError(FailoverError):
    pass


@dataclass(frozen=True)
class CertificateAuthority:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def certificate(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def ensure(cls, directory: Path) -> "CertificateAuthority":
        """The CA from the secret FAILOVER_CA when it is set, else the one in `directory`,
        created on first use. A secret that differs from a CA already in `directory` is refused:
        the sites' certificates come from one of them."""
        if os.environ.get(SECRET_NAME):
            return cls._from_secret(Path(directory))
        ca = cls(Path(directory))
        if not ca.key.exists():
            ca.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(ca.key), "-out", str(ca.certificate), "-days", str(DAYS * 2),
                      "-subj", "/CN=failover toolkit CA"])
            ca.key.chmod(0o600)
        return ca

    @classmethod
    def available(cls, directory: Path) -> "CertificateAuthority | None":
        """The CA where `ensure` finds one, or None (nothing is created)."""
        if os.environ.get(SECRET_NAME) or (Path(directory) / "ca.key").exists():
            return cls.ensure(directory)
        return None

    def export(self) -> str:
        """The CA as the value of the secret FAILOVER_CA (base64 of the key and certificate PEM)."""
        bundle = base64.b64encode((self.key.read_text() + self.certificate.read_text()).encode()).decode()
        secrets.remember(bundle)
        return bundle

    def describe(self) -> dict[str, str]:
        """Subject, expiry and SHA-256 fingerprint of the CA's certificate (nothing secret)."""
        result = subprocess.run(["openssl", "x509", "-in", str(self.certificate), "-noout", "-subject", "-enddate",
                                 "-fingerprint", "-sha256"], capture_output=True, text=True, check=True)
        fields = dict(line.split("=", 1) for line in result.stdout.strip().splitlines())
        return {"subject": fields.get("subject", "").strip(), "expires": fields.get("notAfter", ""),
                "sha256": fields.get("sha256 Fingerprint", fields.get("SHA256 Fingerprint", ""))}

    @classmethod
    def _from_secret(cls, directory: Path) -> "CertificateAuthority":
        value = secrets.resolve(SECRET_REF, "the toolkit's CA")
        try:
            pem = base64.b64decode(value, validate=True).decode()
        except ValueError:
            raise CertificateError(f"secret {SECRET_REF} is not base64 PEM: write it with `failover sites ca "
                                   "--export FILE` where the CA is kept") from None
        key, certificate = _pem_block(pem, "PRIVATE KEY"), _pem_block(pem, "CERTIFICATE")
        if not key or not certificate:
            raise CertificateError(f"secret {SECRET_REF} lacks the CA's private key or certificate: write it "
                                   "with `failover sites ca --export FILE` where the CA is kept")
        secrets.remember(key)
        existing = cls(directory)
        if existing.certificate.exists() and existing.certificate.read_text().strip() != certificate.strip():
            raise CertificateError(f"secret {SECRET_REF} holds another CA than {directory}: the sites' certificates "
                                   f"come from one of them; unset {SECRET_NAME}, or move {directory} away")
        private = Path(tempfile.mkdtemp(prefix="failover-ca-"))  # mode 0700
        atexit.register(shutil.rmtree, private, True)
        ca = cls(private)
        ca.key.touch(mode=0o600)
        ca.key.write_text(key)
        ca.certificate.write_text(certificate)
        return ca

    def issue(self, host: str, names: tuple[str, ...] = ()) -> tuple[str, str]:
        """(key PEM, certificate PEM) for a server at `host` (an address or a DNS name)."""
        alt = ",".join([_san(host), *(_san(n) for n in names)])
        with tempfile.TemporaryDirectory() as tmp:
            key, csr, crt, ext = (Path(tmp) / n for n in ("server.key", "server.csr", "server.crt", "ext.cnf"))
            ext.write_text(f"subjectAltName={alt}\nextendedKeyUsage=serverAuth\n")
            _openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}"])
            _openssl(["x509", "-req", "-in", str(csr), "-CA", str(self.certificate), "-CAkey", str(self.key),
                      "-CAcreateserial", "-out", str(crt), "-days", str(DAYS), "-extfile", str(ext)])
            return key.read_text(), crt.read_text()


def _pem_block(text: str, kind: str) -> str:
    """The first PEM block whose label ends with `kind` (PRIVATE KEY matches EC PRIVATE KEY too)."""
    match = re.search(r"-----BEGIN ([A-Z ]*%s)-----.*?-----END \1-----\n?" % kind, text, re.S)
    return match.group(0) if match else ""


def _san(name: str) -> str:
    try:
        ipaddress.ip_address(name)
        return f"IP:{name}"
    except ValueError:
        return f"DNS:{name}"


def _openssl(args: list[str]) -> None:
    result = subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {result.stdout.strip()[-300:]}")
