"""One small interface per storage type: how pgBackRest and rclone reach a site's object store.

The core speaks in sites and repositories; only these classes know a storage type. Each
turns a site's `Repository` / `MediaRemote` (from SiteOutputs) into pgBackRest `repoN-*`
options and an rclone remote section, resolving credential references at run time. New
types (s3, gcs, azure) register themselves with `@register`.
"""
from __future__ import annotations

from typing import ClassVar

from infra import secrets
from infra.sites.contract import MediaRemote, Repository


class Storage:
    """A storage type. Implementors set `type` and fill the two render hooks."""

    type: ClassVar[str]
    # Secret option names: resolved from env/NAME at run time, redacted everywhere.
    secret_options: ClassVar[tuple[str, ...]] = ()

    def repo_options(self, index: int, repo: Repository, site: str) -> dict[str, str]:
        """pgBackRest options for this repository as repo<index>-*, secrets resolved."""
        options = {"type": repo.type, **repo.options}
        return {f"repo{index}-{key}": self._value(key, value, site) for key, value in options.items()}

    def rclone_section(self, remote: MediaRemote, site: str) -> dict[str, str]:
        """The rclone.conf section for this media remote, secrets resolved."""
        return {"type": remote.type, **{k: self._value(k, v, site) for k, v in remote.options.items()}}

    def describe(self, repo: Repository) -> str:
        """Where the repository lives, for messages: a path, endpoint/bucket or container."""
        return repo.options.get("path", "?")

    def reachable(self, c, repo: Repository) -> bool:
        """Can this host reach the store at all? Cheap: status and preflight call it for every site."""
        raise NotImplementedError

    def explain(self, site: str, repo: Repository, output: str, index: int | None = None) -> str:
        """A failed pgBackRest command's output as a message naming the store and a fix (no secrets)."""
        return f"site {site}: {self.type} repository {self.describe(repo)}: {last_line(output)}"

    def explain_media(self, site: str, remote: MediaRemote, output: str) -> str:
        """A failed rclone command's output as a message naming the bucket and a fix (no secrets)."""
        return f"site {site}: media bucket {remote.path}: {last_line(output)}"

    def _value(self, key: str, value: str, site: str) -> str:
        return secrets.resolve(value, f"site {site} {self.type} option {key}") if secrets.is_ref(value) else str(value)


def last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return secrets.redact(lines[-1]) if lines else "failed without output"


_TYPES: dict[str, Storage] = {}


def register(cls: type[Storage]) -> type[Storage]:
    _TYPES[cls.type] = cls()
    return cls


def storage_for(type_: str) -> Storage:
    try:
        return _TYPES[type_]
    except KeyError:
        raise KeyError(f"unknown storage type {type_!r}; known: {', '.join(sorted(_TYPES))}") from None


@register
class Posix(Storage):
    """A directory: the local cloud's object store, or a mounted volume."""

    type = "posix"

    def reachable(self, c, repo: Repository) -> bool:
        from playbooks.host import run

        path = repo.options.get("path", "")
        return run(c, ["test", "-r", path, "-a", "-x", path], warn=True).ok


def _load_object_stores() -> None:
    # The cloud object stores register themselves on import; they live apart to keep this small.
    import infra.data.objectstores  # noqa: F401


_load_object_stores()
