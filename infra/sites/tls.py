"""The toolkit's certificate authority: server certificates for every site's PostgreSQL.

The CA lives in a directory of the operator's (key mode 0600), never on a site: a site holds
only its own key and certificate and the CA's certificate, with which its clients
(replicas, WAL receivers, the app) connect at `sslmode=verify-full`. Certificates name the
database host's address as an IP subjectAltName, which libpq 14+ verifies.
"""
from __future__ import annotations

import ipaddress
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infra.errors import FailoverError

DAYS = 825


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
        """The CA in `directory`, created on first use."""
        ca = cls(Path(directory))
        if not ca.key.exists():
            ca.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(ca.key), "-out", str(ca.certificate), "-days", str(DAYS * 2),
                      "-subj", "/CN=failover toolkit CA"])
            ca.key.chmod(0o600)
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
