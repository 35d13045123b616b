"""The object stores of real clouds as storage types: S3, Google Cloud Storage and Azure Blob.

A site's Repository options are pgBackRest's `repoN-*` option names without the prefix, and
its MediaRemote options are rclone's option names for the backend, so each class mostly
checks and passes them through. What the classes add: the options each type cannot work
without, a refusal of credentials written as values (only env/NAME references may appear
in SiteOutputs and the Inventory), and a short `describe()` for messages.
"""
from __future__ import annotations

import socket

from typing import ClassVar

from infra import secrets
from infra.data.storage import Storage, register
from infra.sites.contract import MediaRemote, Repository


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

    def repo_options(self, index: int, repo: Repository, site: str) -> dict[str, str]:
        self.check(repo, site)
        return super().repo_options(index, repo, site)

    def rclone_section(self, remote: MediaRemote, site: str) -> dict[str, str]:
        _only_references(remote.options, self.rclone_secret_options, site, f"{self.type} media remote")
        return super().rclone_section(remote, site)

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

    def reachable(self, c, repo: Repository) -> bool:
        """A TCP connection to the endpoint within a second: enough to tell a dead store fast."""
        host, port = self.endpoint(repo)
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    def endpoint(self, repo: Repository) -> tuple[str, int]:
        endpoint = repo.options.get(self.endpoint_option) or self.default_endpoint
        host, _, port = endpoint.partition(":")
        return host, int(port or repo.options.get("storage-port") or 443)

    def explain(self, site: str, repo: Repository, output: str, index: int | None = None) -> str:
        from infra.data.storage_errors import repository_error

        return repository_error(site, repo, output, index)

    def explain_media(self, site: str, remote: MediaRemote, output: str) -> str:
        from infra.data.storage_errors import media_error

        return media_error(site, self.type, remote, output)

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
    required = ("s3-bucket", "s3-endpoint", "s3-region")
    secret_options = ("s3-key", "s3-key-secret", "s3-token")
    rclone_secret_options = ("access_key_id", "secret_access_key", "session_token")
    container_option = "s3-bucket"
    endpoint_option = "s3-endpoint"
    default_endpoint = "s3.amazonaws.com"


@register
class GCS(ObjectStore):
    """Google Cloud Storage (fake-gcs-server in the local cloud).

    `gcs-key` is a credential when `gcs-key-type=token`; with `service` it is the path of a
    key file, which is not itself secret.
    """

    type = "gcs"
    required = ("gcs-bucket",)
    rclone_secret_options = ("service_account_credentials", "token", "client_secret")
    container_option = "gcs-bucket"
    endpoint_option = "gcs-endpoint"
    default_endpoint = "storage.googleapis.com"

    def check(self, repo: Repository, site: str) -> None:
        super().check(repo, site)
        if repo.options.get("gcs-key-type", "service") == "token":
            _only_references(repo.options, ("gcs-key",), site, "gcs repository")


@register
class Azure(ObjectStore):
    """Azure Blob Storage (Azurite in the local cloud)."""

    type = "azure"
    noun = "container"
    required = ("azure-account", "azure-container")
    secret_options = ("azure-key",)
    rclone_secret_options = ("key", "sas_url", "client_secret")
    container_option = "azure-container"
    endpoint_option = "azure-endpoint"
    default_endpoint = "blob.core.windows.net"

    def describe(self, repo: Repository) -> str:
        options = repo.options
        if not options.get("azure-endpoint"):
            account = options.get("azure-account", "?")
            return f"container {options.get('azure-container', '?')} at {account}.blob.core.windows.net{self._path(options)}"
        return super().describe(repo) + f" (account {options.get('azure-account', '?')})"
