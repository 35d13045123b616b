"""The object stores of real clouds as storage types: S3, Google Cloud Storage and Azure Blob.

A site's Repository options are pgBackRest's `repoN-*` option names without the prefix, and
its MediaRemote options are rclone's option names for the backend, so each class mostly
checks and passes them through. What the classes add: the options each type cannot work
without, a refusal of credentials written as values (only env/NAME references may appear
in SiteOutputs and the Inventory), and a short `describe()` for messages.

Objects (`put`/`get`/`list`) go through rclone with the site's media remote, configured in
rclone's environment for the one call (`RCLONE_CONFIG_STORE_*`): credentials never reach a
command line or a file, and rclone's output only classifies a failure (storage_errors).
`create` (only if the key is free) and `read` go to the store's own HTTP API instead
(objecthttp), because rclone has no conditional write.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
from typing import ClassVar

from infra import secrets
from infra.data import storage_errors  # a module import: storage_errors imports infra.data.storage, which loads this
from infra.data.storage import MissingKey, Storage, StoreError, register
from infra.sites.contract import MediaRemote, Repository, SiteOutputs

RCLONE_FLAGS = ("--config=/dev/null", "--contimeout=5s", "--timeout=30s", "--retries=1", "--low-level-retries=2")


class StorageConfigError(ValueError):
    pass


class ObjectStore(Storage):
    """A bucket-like store. Subclasses name their required and secret options (pgBackRest and rclone)."""

    required: ClassVar[tuple[str, ...]] = ()
    # rclone option names holding credentials, checked and redacted like `secret_options`.
    rclone_secret_options: ClassVar[tuple[str, ...]] = ()
    container_option: ClassVar[str]
    endpoint_option: ClassVar[str]
    default_endpoint: ClassVar[str]

    # writer credential -> pgBackRest option (without repoN-), and -> rclone option
    repo_credential_names: ClassVar[dict[str, str]] = {}
    media_credential_names: ClassVar[dict[str, str]] = {}

    def repo_options(self, index: int, repo: Repository, site: str,
                     credentials: dict[str, str] | None = None, key_dir: str = "") -> dict[str, str]:
        self.check(repo, site)
        return super().repo_options(index, repo, site, credentials, key_dir)

    def rclone_section(self, remote: MediaRemote, site: str,
                       credentials: dict[str, str] | None = None) -> dict[str, str]:
        _only_references(remote.options, self.rclone_secret_options, site, f"{self.type} media remote")
        return super().rclone_section(remote, site, credentials)

    def repo_credentials(self, index: int, creds: dict[str, str], key_dir: str) -> dict[str, str]:
        return {option: creds[name] for name, option in self.repo_credential_names.items() if name in creds}

    def media_credentials(self, remote: MediaRemote, creds: dict[str, str], site: str) -> dict[str, str]:
        return {option: creds[name] for name, option in self.media_credential_names.items() if name in creds}

    def check(self, repo: Repository, site: str) -> None:
        """Raises StorageConfigError naming the site and every missing or literal secret option."""
        missing = [key for key in self.required if not repo.options.get(key)]
        if missing:
            raise StorageConfigError(f"site {site}: {self.type} repository lacks option(s) {', '.join(missing)} "
                                     f"(pgBackRest names without repoN-)")
        _only_references(repo.options, self.secret_options, site, f"{self.type} repository")

    def describe(self, repo: Repository) -> str:
        options = repo.options
        endpoint = options.get(self.endpoint_option) or self.default_endpoint
        if options.get("storage-port") and ":" not in endpoint:
            endpoint = f"{endpoint}:{options['storage-port']}"
        return f"{self.noun} {options.get(self.container_option, '?')} at {endpoint}{self._path(options)}"

    noun: ClassVar[str] = "bucket"
    remote = True
    # rclone options for a put that fails on a missing bucket instead of creating one.
    put_options: ClassVar[dict[str, str]] = {"no_check_bucket": "true"}
    # rclone creates a missing bucket on put whatever it is told (Azure in rclone 1.60), so a
    # put checks that the bucket exists first (once per process and site).
    put_creates_bucket: ClassVar[bool] = False
    _checked: ClassVar[set[tuple[str, str]]] = set()

    def reachable(self, c, repo: Repository) -> bool:
        """A TCP connection to the endpoint within a second: enough to tell a dead store fast."""
        host, port = self.endpoint(repo)
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    # -- objects, through rclone --

    def put(self, site: SiteOutputs, key: str, data: bytes) -> None:
        if self.put_creates_bucket and (site.site, self.bucket(site)) not in self._checked:
            self._rclone(site, f"put {key}", ["lsjson", "--stat", f"store:{self.bucket(site)}"])
            self._checked.add((site.site, self.bucket(site)))
        self._rclone(site, f"put {key}", ["rcat", self._object(site, key)], data, self.put_options)

    def get(self, site: SiteOutputs, key: str) -> bytes:
        data = self._rclone(site, f"get {key}", ["cat", self._object(site, key)])
        # `rclone cat` of an absent object prints nothing and succeeds: an empty answer is checked.
        if not data and json.loads(self._rclone(site, f"get {key}", ["lsjson", "--stat", self._object(site, key)]))["Size"] < 0:
            raise MissingKey(f"site {site.site}: {self.type} storage {self.where(site)} holds no {key}")
        return data

    def list(self, site: SiteOutputs, prefix: str = "") -> list[str]:
        folder = prefix.rpartition("/")[0]
        out = self._rclone(site, f"list {prefix or '/'}", ["lsf", "-R", "--files-only", self._object(site, folder)])
        keys = (f"{folder}/{name}" if folder else name for name in out.decode().splitlines() if name)
        return sorted(k for k in keys if k.startswith(prefix))

    # -- create only if absent, and read: the store's own HTTP API --

    conditional_create = True
    api: ClassVar[str]  # its class in infra.data.objecthttp

    @property
    def objects(self):
        """The store's HTTP API (infra.data.objecthttp), imported on first use: it needs requests
        and botocore, which the operator's machine has and the sites' hosts (the protector, the
        app) do not."""
        from infra.data import objecthttp

        return getattr(objecthttp, self.api)()

    def create(self, site: SiteOutputs, key: str, data: bytes) -> bytes | None:
        return self.objects.create(self, site, key, data)

    def read(self, site: SiteOutputs, key: str) -> bytes | None:
        return self.objects.read(self, site, key)

    def where(self, site: SiteOutputs) -> str:
        host, port = self.endpoint(site.repository)
        return f"{self.noun} {self.bucket(site)} at {host}:{port}"

    def media_where(self, remote: MediaRemote) -> str:
        """The bucket of a media remote and the host of its endpoint (never a SAS URL), for messages."""
        endpoint = remote.options.get("endpoint", "")
        at = f" at {re.sub(r'^[a-z]+://', '', endpoint).split('/')[0]}" if endpoint and not secrets.is_ref(endpoint) else ""
        return f"{self.noun} {remote.path.strip('/').split('/')[0] or '?'}{at}"

    @staticmethod
    def bucket(site: SiteOutputs) -> str:
        return site.media_remote.path.strip("/").split("/")[0] or "?"

    @staticmethod
    def _object(site: SiteOutputs, key: str) -> str:
        return f"store:{site.media_remote.path.rstrip('/')}/{key}".rstrip("/")

    def _rclone(self, site: SiteOutputs, action: str, args: list[str], data: bytes | None = None,
                extra: dict[str, str] | None = None) -> bytes:
        """Runs rclone against the site's media remote; returns its output or raises a StoreError."""
        host, port = self.endpoint(site.repository)
        if not self.reachable(None, site.repository):
            # rclone (the Azure SDK in it) retries a refused connection for most of a minute.
            raise self.store_error(site, action, f"the endpoint {host}:{port} did not answer",
                                   "check that the store (or its emulator) is running and that endpoint and port "
                                   "are right")
        section = {**self.rclone_section(site.media_remote, site.site, site.writer_credentials), **(extra or {})}
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # breaks rclone 1.60's S3
        env.update({f"RCLONE_CONFIG_STORE_{k.upper().replace('-', '_')}": v for k, v in section.items()})
        try:
            result = subprocess.run(["rclone", *RCLONE_FLAGS, *self.ca_flags(site.repository), *args], input=data,
                                    capture_output=True, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            raise self.store_error(site, action, "rclone gave no answer within 120 s",
                                   "check the store's endpoint and network") from None
        except FileNotFoundError:
            raise StoreError(f"site {site.site}: rclone is not installed: run scripts/setup") from None
        if result.returncode:
            output = result.stderr.decode(errors="replace")
            message = storage_errors.media_error(site.site, self.type, site.media_remote, output, self.where(site))
            raise StoreError(f"{message} (could not {action})")
        return result.stdout

    @staticmethod
    def ca_flags(repo: Repository) -> list[str]:
        """The store's CA (the repository's storage-ca-file, which pgBackRest and the HTTP API use)
        for rclone too, which takes no CA per remote: only a private CA's store (an emulator) has one."""
        ca = repo.options.get("storage-ca-file")
        return [f"--ca-cert={ca}"] if ca else []

    def endpoint(self, repo: Repository) -> tuple[str, int]:
        endpoint = repo.options.get(self.endpoint_option) or self.default_endpoint
        host, _, port = endpoint.partition(":")
        return host, int(port or repo.options.get("storage-port") or 443)

    def explain(self, site: str, repo: Repository, output: str, index: int | None = None) -> str:
        return storage_errors.repository_error(site, repo, output, index)

    def explain_media(self, site: str, remote: MediaRemote, output: str) -> str:
        return storage_errors.media_error(site, self.type, remote, output)

    @staticmethod
    def _path(options: dict[str, str]) -> str:
        path = options.get("path", "/")
        return f", path {path}" if path not in ("", "/") else ""


def _only_references(options: dict[str, str], names: tuple[str, ...], site: str, what: str) -> None:
    literal = [key for key in names if options.get(key) and not secrets.is_ref(options[key])]
    if literal:
        # Name the option, never its value: the value is the credential.
        raise StorageConfigError(f"site {site}: {what} option(s) {', '.join(literal)} hold a value; "
                                 f"credentials must be references such as env/NAME")


@register
class S3(ObjectStore):
    """Amazon S3 and S3-compatible stores (moto behind stunnel in the local cloud)."""

    type = "s3"
    credentials = "the access key pair"
    required = ("s3-bucket", "s3-endpoint", "s3-region")
    secret_options = ("s3-key", "s3-key-secret", "s3-token")
    rclone_secret_options = ("access_key_id", "secret_access_key", "session_token")
    container_option = "s3-bucket"
    endpoint_option = "s3-endpoint"
    default_endpoint = "s3.amazonaws.com"
    repo_credential_names = {"s3-key": "s3-key", "s3-key-secret": "s3-key-secret", "s3-token": "s3-token"}
    media_credential_names = {"s3-key": "access_key_id", "s3-key-secret": "secret_access_key",
                              "s3-token": "session_token"}
    api = "S3Api"


@register
class GCS(ObjectStore):
    """Google Cloud Storage (fake-gcs-server in the local cloud).

    `gcs-key` is a credential when `gcs-key-type=token`; with `service` it is the path of a
    key file, which is not itself secret.
    """

    type = "gcs"
    credentials = "the service account key or token"
    required = ("gcs-bucket",)
    rclone_secret_options = ("service_account_credentials", "token", "client_secret")
    container_option = "gcs-bucket"
    endpoint_option = "gcs-endpoint"
    default_endpoint = "storage.googleapis.com"

    repo_credential_names = {"gcs-key": "gcs-key"}  # a token (gcs-key-type=token)
    api = "GCSApi"
    SERVICE_KEY = "gcs-key-json-base64"  # a service account's JSON key, base64 (what the GCP program exports)

    def check(self, repo: Repository, site: str) -> None:
        super().check(repo, site)
        if repo.options.get("gcs-key-type", "service") == "token":
            _only_references(repo.options, ("gcs-key",), site, "gcs repository")

    def repo_credentials(self, index: int, creds: dict[str, str], key_dir: str) -> dict[str, str]:
        if self.SERVICE_KEY in creds:  # pgBackRest reads a service key from a file
            return {"gcs-key-type": "service", "gcs-key": self._key_file(index, key_dir)}
        return super().repo_credentials(index, creds, key_dir)

    def credential_files(self, index: int, creds: dict[str, str], key_dir: str, site: str) -> dict[str, str]:
        if self.SERVICE_KEY not in creds:
            return {}
        return {self._key_file(index, key_dir): self._service_key(creds, site)}

    def media_credentials(self, remote: MediaRemote, creds: dict[str, str], site: str) -> dict[str, str]:
        if self.SERVICE_KEY in creds:  # rclone takes the JSON itself, on one line
            return {"service_account_credentials": self._service_key(creds, site)}
        return {}

    def _service_key(self, creds: dict[str, str], site: str) -> str:
        encoded = secrets.resolve(creds[self.SERVICE_KEY], f"site {site} writer credential {self.SERVICE_KEY}")
        try:
            key = json.dumps(json.loads(base64.b64decode(encoded)), separators=(",", ":"))
        except ValueError:
            raise StorageConfigError(f"site {site}: writer credential {self.SERVICE_KEY} is not a base64 JSON "
                                     "service account key: pull the Inventory again (`failover inventory pull`)") from None
        secrets.remember(key)
        return key

    @staticmethod
    def _key_file(index: int, key_dir: str) -> str:
        return f"{key_dir}/repo{index}-gcs-key.json"


@register
class Azure(ObjectStore):
    """Azure Blob Storage (Azurite in the local cloud)."""

    type = "azure"
    noun = "container"
    credentials = "the account key or SAS"
    put_options = {}
    put_creates_bucket = True
    required = ("azure-account", "azure-container")
    secret_options = ("azure-key",)
    rclone_secret_options = ("key", "sas_url", "client_secret")
    container_option = "azure-container"
    endpoint_option = "azure-endpoint"
    default_endpoint = "blob.core.windows.net"
    repo_credential_names = {"azure-key": "azure-key"}  # the account key, or a SAS with azure-key-type=sas
    # media-sas-url: a whole SAS URL (the emulator's); media-sas: a container SAS token (the Azure
    # program's), made into the container's URL on the media remote's account.
    media_credential_names = {"media-sas-url": "sas_url"}
    api = "AzureApi"

    def media_credentials(self, remote: MediaRemote, creds: dict[str, str], site: str) -> dict[str, str]:
        if "media-sas" in creds and remote.options.get("account"):
            token = secrets.resolve(creds["media-sas"], f"site {site} writer credential media-sas")
            container = remote.path.strip("/").split("/")[0]
            return {"sas_url": f"https://{remote.options['account']}.{self.default_endpoint}/{container}?"
                               f"{token.lstrip('?')}"}
        return super().media_credentials(remote, creds, site)

    def endpoint(self, repo: Repository) -> tuple[str, int]:
        if not repo.options.get("azure-endpoint"):
            return f"{repo.options.get('azure-account', '?')}.{self.default_endpoint}", 443
        return super().endpoint(repo)

    def describe(self, repo: Repository) -> str:
        options = repo.options
        if not options.get("azure-endpoint"):
            account = options.get("azure-account", "?")
            return f"container {options.get('azure-container', '?')} at {account}.blob.core.windows.net{self._path(options)}"
        return super().describe(repo) + f" (account {options.get('azure-account', '?')})"
