"""SiteOutputs and Inventory: what every site exports, identical on every cloud and locally.

A Pulumi stack exports exactly the keys of `SiteOutputs` (see infra/__main__.py); the local
cloud builds the same objects for its loopback sites. The failover engine only ever reads an
`Inventory`, a single JSON document copied to every site's object store, so that a failover
needs neither the dropped provider nor the Pulumi state backend.

Credentials are never stored as values in SiteOutputs or the Inventory: they are references
(`env/NAME`) resolved at run time by infra.secrets.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

EXPORTED_KEYS = (
    "site", "cloud", "region", "role", "public_addresses", "ssh_hosts", "ssh_user",
    "db_host", "db_port", "repository", "media_remote", "writer_credentials",
)


@dataclass(frozen=True)
class Repository:
    """A site's backup repository, as pgBackRest options without the `repoN-` prefix.

    `type` is a pgBackRest repo type (posix, s3, gcs, azure); `options` holds the rest, for
    example {"path": "/var/lib/pgbackrest"} or {"s3-bucket": ..., "s3-endpoint": ...}.
    Secret options hold references (env/NAME), never values.
    """

    type: str
    options: dict[str, str]


@dataclass(frozen=True)
class MediaRemote:
    """A site's media bucket as an rclone remote: backend type, its options, and the path in it."""

    type: str
    options: dict[str, str]
    path: str


@dataclass(frozen=True)
class SiteOutputs:
    site: str
    cloud: str
    region: str
    role: str
    public_addresses: tuple[str, ...]
    ssh_hosts: tuple[str, ...]
    ssh_user: str
    db_host: str
    db_port: int
    repository: Repository
    media_remote: MediaRemote
    writer_credentials: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "inventory") -> "SiteOutputs":
        missing = [f.name for f in fields(cls) if f.name not in data and f.name != "writer_credentials"]
        if missing:
            raise ValueError(f"{where}: site {data.get('site', '?')!r} lacks keys: {', '.join(missing)}")
        values = dict(data)
        values["public_addresses"] = tuple(data["public_addresses"])
        values["ssh_hosts"] = tuple(data["ssh_hosts"])
        values["db_port"] = int(data["db_port"])
        values["repository"] = Repository(**data["repository"])
        values["media_remote"] = MediaRemote(**data["media_remote"])
        values["writer_credentials"] = dict(data.get("writer_credentials") or {})
        return cls(**{f.name: values[f.name] for f in fields(cls)})


WITNESS = "witness"  # the role of a witness store's entry in Inventory.witnesses


def witness(name: str, cloud: str, region: str, repository: Repository, media_remote: MediaRemote,
            writer_credentials: dict[str, str] | None = None) -> SiteOutputs:
    """A witness store as the Inventory lists it: a SiteOutputs with role witness and no hosts."""
    return SiteOutputs(site=name, cloud=cloud, region=region, role=WITNESS, public_addresses=(), ssh_hosts=(),
                       ssh_user="", db_host="", db_port=0, repository=repository, media_remote=media_remote,
                       writer_credentials=dict(writer_credentials or {}))


@dataclass
class Inventory:
    """Every site's outputs, in spec order, plus which site is active and the epoch."""

    sites: list[SiteOutputs]
    active: str
    epoch: int = 1
    updated: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    # Witness stores: buckets at further providers that run no site. They count in the lease's
    # and the claims' majorities (infra/data/lease.py stores) and hold nothing else. Each is a
    # SiteOutputs with role "witness", of which only the name, repository (its storage type),
    # media_remote (where objects go) and writer_credentials are used.
    witnesses: list[SiteOutputs] = field(default_factory=list)

    def site(self, name: str) -> SiteOutputs:
        for site in self.sites:
            if site.site == name:
                return site
        raise KeyError(f"unknown site {name!r}; the inventory has: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [s.site for s in self.sites]

    def repo_index(self, name: str) -> int:
        """pgBackRest repo number of a site's repository: the same on every site (1-based)."""
        return self.names.index(name) + 1

    def to_json(self) -> str:
        data = {"active": self.active, "epoch": self.epoch, "updated": self.updated,
                "sites": [s.to_dict() for s in self.sites]}
        if self.witnesses:  # an Inventory without witnesses reads as before
            data["witnesses"] = [w.to_dict() for w in self.witnesses]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "inventory") -> "Inventory":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
        sites = [SiteOutputs.from_dict(s, where) for s in data.get("sites", [])]
        witnesses = [SiteOutputs.from_dict(w, f"{where} witnesses") for w in data.get("witnesses", [])]
        return cls(sites=sites, active=data["active"], epoch=int(data.get("epoch", 1)), updated=data.get("updated", ""),
                   witnesses=witnesses)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        if not path.exists():
            raise FileNotFoundError(f"{path}: no inventory; run `failover local up` or `failover inventory pull` first")
        return cls.from_json(path.read_text(), str(path))
