"""One small interface per storage type: how pgBackRest and rclone reach a site's object store.

The core speaks in sites and repositories; only these classes know a storage type. Each
turns a site's `Repository` / `MediaRemote` (from SiteOutputs) into pgBackRest `repoN-*`
options and an rclone remote section, resolving credential references at run time, and
reads and writes small objects (inventory, journal, manifest copies) in the site's store
with `put`/`get`/`list`. `create` writes an object only if its key is free, refused by the
store itself (the claims of infra/data/claims.py stand on it), and `read` is its fast
counterpart. `Store` binds a type to one site's outputs. New types (s3, gcs, azure) register
themselves with `@register`.
"""
from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar, Iterable

from infra import secrets
from infra.sites.contract import MediaRemote, Repository, SiteOutputs


class StoreError(RuntimeError):
    """A put, get or list failed; the message names the site, the store, what failed and a fix."""


class MissingKey(StoreError, LookupError):
    """`get` of a key the store does not hold."""


class UncertainWrite(StoreError):
    """A `create` whose request may have reached the store (a timeout or a broken connection after
    sending): whether the object exists is unknown until it is created or read again."""


class Storage:
    """A storage type. Implementors set `type` and the flags, and fill the hooks.

    Objects live under the site's media remote path (`SiteOutputs.media_remote.path`), so a
    key such as `.failover/journal.json` sits in the same bucket or directory as the media
    and travels with it. `put` replaces the object whole (readers never see half of it),
    `get` raises MissingKey for an absent key, `list` returns whole keys, sorted. Every
    failure is a StoreError from `store_error`, never the tool's raw output.
    """

    type: ClassVar[str]
    # Secret option names: resolved from env/NAME at run time, redacted everywhere.
    secret_options: ClassVar[tuple[str, ...]] = ()
    # What the store's top level is called in messages: directory, bucket or container.
    noun: ClassVar[str] = "directory"
    # What to check when the store refuses the credentials.
    credentials: ClassVar[str] = "the credentials"
    # Reached over the network (True) or a directory on this machine (False).
    remote: ClassVar[bool] = False

    def repo_options(self, index: int, repo: Repository, site: str,
                     credentials: dict[str, str] | None = None, key_dir: str = "") -> dict[str, str]:
        """pgBackRest options for this repository as repo<index>-*, secrets resolved: the
        repository's own options plus the site's writer credentials (`SiteOutputs.writer_credentials`,
        env/NAME references keyed by pgBackRest option names, see infra/clouds) that this type
        uses. `key_dir`: where `credential_files` puts a credential that must be a file."""
        creds = self._credentials(credentials, site)
        options = {"type": repo.type, **repo.options, **self.repo_credentials(index, creds, key_dir)}
        return {f"repo{index}-{key}": self._value(key, value, site) for key, value in options.items()}

    def rclone_section(self, remote: MediaRemote, site: str,
                       credentials: dict[str, str] | None = None) -> dict[str, str]:
        """The rclone.conf section for this media remote, secrets resolved, with the site's
        writer credentials in rclone's names."""
        creds = self._credentials(credentials, site)
        options = {**remote.options, **self.media_credentials(remote, creds, site)}
        return {"type": remote.type, **{k: self._value(k, v, site) for k, v in options.items()}}

    # Writer credentials -> options. A type maps the credential names it knows; a value is an
    # env/NAME reference that _value resolves (and remembers for redaction), or one resolved here.
    def repo_credentials(self, index: int, creds: dict[str, str], key_dir: str) -> dict[str, str]:
        return {}

    def media_credentials(self, remote: MediaRemote, creds: dict[str, str], site: str) -> dict[str, str]:
        return {}

    def credential_files(self, index: int, creds: dict[str, str], key_dir: str,
                         site: str) -> dict[str, str]:
        """path -> content of credentials that pgBackRest reads from a file (resolved)."""
        return {}

    def _credentials(self, credentials: dict[str, str] | None, site: str) -> dict[str, str]:
        creds = dict(credentials or {})
        literal = sorted(k for k, v in creds.items() if not secrets.is_ref(v))
        if literal:  # name the keys, never the values
            raise StoreError(f"site {site}: writer_credentials {', '.join(literal)} hold values; the Inventory "
                             "keeps only references such as env/NAME (run `failover inventory pull` again)")
        return creds

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

    # -- objects in the site's store --

    def put(self, site: SiteOutputs, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, site: SiteOutputs, key: str) -> bytes:
        raise NotImplementedError

    def list(self, site: SiteOutputs, prefix: str = "") -> list[str]:
        raise NotImplementedError

    # Whether `create` is enforced by the store (a precondition it checks when it writes).
    conditional_create: ClassVar[bool] = False

    def create(self, site: SiteOutputs, key: str, data: bytes) -> bytes | None:
        """Writes the object only if no object holds the key: returns None when this call
        created it, else the bytes of the object already there (which it leaves alone).

        Implementors must make the store refuse the second writer atomically (O_EXCL, S3's
        and Azure's If-None-Match, GCS's ifGenerationMatch=0), never check and then write,
        and must never let a reader see part of the object. An answer that leaves open
        whether the object was written (a timeout after sending it) is a StoreError.
        """
        raise NotImplementedError(f"{self.type} storage has no conditional create")

    def read(self, site: SiteOutputs, key: str) -> bytes | None:
        """The object, or None when no object holds the key: `create`'s counterpart, over the
        same direct channel (fast enough to poll), where `get` goes through rclone."""
        raise NotImplementedError(f"{self.type} storage has no direct read")

    def where(self, site: SiteOutputs) -> str:
        """The store of a site's objects, for messages: its directory, or bucket and endpoint."""
        return self.media_where(site.media_remote)

    def media_where(self, remote: MediaRemote) -> str:
        return f"{self.noun} {remote.path}"

    def store_error(self, site: SiteOutputs, action: str, detail: str, fix: str) -> StoreError:
        return StoreError(secrets.redact(f"site {site.site}: {self.type} storage {self.where(site)}: {action}: "
                                         f"{detail}; fix: {fix}"))

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


def check_key(key: str) -> str:
    """A key is a relative path without `..`: it must not leave the store."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or key.endswith("/"):
        raise ValueError(f"object key {key!r} must be a relative path inside the store, without '..'")
    return key


@dataclass(frozen=True)
class Store:
    """One site's store: where its copies of the inventory, journal and manifest live."""

    site: SiteOutputs

    @property
    def storage(self) -> Storage:
        return storage_for(self.site.repository.type)

    @property
    def name(self) -> str:
        return self.site.site

    def put(self, key: str, data: bytes) -> None:
        self.storage.put(self.site, check_key(key), data)

    def get(self, key: str) -> bytes:
        return self.storage.get(self.site, check_key(key))

    def list(self, prefix: str = "") -> list[str]:
        return self.storage.list(self.site, prefix)

    def create(self, key: str, data: bytes) -> bytes | None:
        return self.storage.create(self.site, check_key(key), data)

    def read(self, key: str) -> bytes | None:
        return self.storage.read(self.site, check_key(key))

    def reachable(self, c) -> bool:
        return self.storage.reachable(c, self.site.repository)

    def __str__(self) -> str:
        return f"site {self.name}'s {self.storage.where(self.site)}"


def put_all(stores: Iterable[Store], key: str, data: bytes) -> tuple[list[str], list[str]]:
    """Puts one object into every store at once; returns (sites written, error messages)."""
    stores = list(stores)

    def attempt(store: Store) -> str:
        try:
            store.put(key, data)
            return ""
        except (StoreError, secrets.MissingSecret) as error:
            return secrets.redact(str(error))

    with ThreadPoolExecutor(max_workers=max(1, len(stores))) as pool:
        errors = list(pool.map(attempt, stores))
    return [s.name for s, e in zip(stores, errors) if not e], [e for e in errors if e]


@register
class Posix(Storage):
    """A directory: the local cloud's object store, or a mounted volume.

    Objects are files below the media directory (`media_remote.path`), written atomically
    and owned like that directory, so the service user can replace them later.
    """

    type = "posix"
    conditional_create = True

    def reachable(self, c, repo: Repository) -> bool:
        from playbooks.host import run

        path = repo.options.get("path", "")
        return run(c, ["test", "-r", path, "-a", "-x", path], warn=True).ok

    def put(self, site: SiteOutputs, key: str, data: bytes) -> None:
        root, path = self._root(site), self._root(site) / key
        try:
            owner = self._folders(root, path)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            _chown(tmp, owner.st_uid, owner.st_gid)
            tmp.chmod(0o664)
            tmp.replace(path)
        except OSError as error:
            raise self._error(site, f"put {key}", error) from None

    def create(self, site: SiteOutputs, key: str, data: bytes) -> bytes | None:
        """O_EXCL by link(2): the whole object is written and synced under a name of its own,
        then linked into place, which fails if anything holds the key; so a reader sees no
        object or all of it, and a crash leaves at most a .tmp file (never listed)."""
        root, path = self._root(site), self._root(site) / key
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            owner = self._folders(root, path)
            _write_synced(tmp, data)
            _chown(tmp, owner.st_uid, owner.st_gid)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return path.read_bytes()
            _sync_directory(path.parent)  # the claim survives a crash of this machine
            return None
        except OSError as error:
            raise self._error(site, f"create {key}", error) from None
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, site: SiteOutputs, key: str) -> bytes | None:
        try:
            return self.get(site, key)
        except MissingKey:
            return None

    def _folders(self, root: Path, path: Path) -> os.stat_result:
        """Makes the folders above `path` inside `root`, owned like root; returns root's stat."""
        owner = root.stat()
        for folder in reversed(path.relative_to(root).parents[:-1]):
            if not (root / folder).exists():
                (root / folder).mkdir(exist_ok=True)
                _chown(root / folder, owner.st_uid, owner.st_gid)
                (root / folder).chmod(0o2775)
        return owner

    def get(self, site: SiteOutputs, key: str) -> bytes:
        try:
            return (self._root(site) / key).read_bytes()
        except FileNotFoundError:
            if self._root(site).is_dir():
                raise MissingKey(f"site {site.site}: posix storage {self.where(site)} holds no {key}") from None
            raise self._error(site, f"get {key}", FileNotFoundError("the directory does not exist")) from None
        except OSError as error:
            raise self._error(site, f"get {key}", error) from None

    def list(self, site: SiteOutputs, prefix: str = "") -> list[str]:
        root = self._root(site)
        if not root.is_dir():
            raise self._error(site, f"list {prefix or '/'}", FileNotFoundError("the directory does not exist"))
        base = root / prefix.rpartition("/")[0]
        keys = (str(p.relative_to(root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
        return sorted(k for k in keys if k.startswith(prefix))

    def _root(self, site: SiteOutputs) -> Path:
        return Path(site.media_remote.path)

    def _error(self, site: SiteOutputs, action: str, error: OSError) -> StoreError:
        return self.store_error(site, action, error.strerror or str(error),
                                "check that the directory exists and is mounted and writable here "
                                "(a dropped site's store is unreachable on purpose)")


# Root hands what it writes to the store's owner; anyone else writes as itself, into folders
# its group may write (the store's group is its credential on a shared volume).
def _chown(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o664)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o664)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_object_stores() -> None:
    # The cloud object stores register themselves on import; they live apart to keep this small.
    import infra.data.objectstores  # noqa: F401


_load_object_stores()
