"""The hostage audit: what would we lose if provider X dropped us tonight?

The rule (DESIGN.md): nothing needed to recover may live only with the provider that can drop
you. An `Estate` says where each dependency lives (read from Pulumi.yaml and stacks/); each
check asks, for one provider X, whether that dependency still exists outside X, and returns a
`Breach` naming the dependency, where it lives, why that is a breach and how to fix it. The
checks are plain functions over data, and never branch on a cloud's name: only the small
`*_home` maps below know which host or URL scheme belongs to whom.

Two dependencies are single by nature (a domain has one registrar, a stack one state backend
and one secrets provider). For those the rule becomes: they must not share a provider with
what they help recover, so one provider's exit cannot take both (see `check_registrar`,
`check_state`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import yaml

from infra.data.lease import majority
from infra.spec import Site, Spec, SpecError, load_spec

STORAGE_HOMES = {"s3": "aws", "gcs": "gcp", "azure": "azure"}  # posix lives with the site's own cloud
BACKEND_HOMES = {"s3": "aws", "gs": "gcp", "azblob": "azure", "file": "operator machine"}
KMS_HOMES = {"awskms": "aws", "gcpkms": "gcp", "azurekeyvault": "azure", "hashivault": "vault"}
# octoDNS classes that can only run at one cloud, whatever `vendor` says.
DNS_CLASS_HOMES = {"octodns_route53": "aws", "octodns_googlecloud": "gcp", "octodns_azure": "azure"}
REGISTRY_HOMES = (  # (host suffix, provider); first match wins
    (".amazonaws.com", "aws"), ("public.ecr.aws", "aws"), ("gcr.io", "gcp"), ("-docker.pkg.dev", "gcp"),
    (".azurecr.io", "azure"), ("ghcr.io", "github"), ("quay.io", "quay"), ("docker.io", "docker"),
)


@dataclass(frozen=True)
class Breach:
    """One dependency the recovery from `provider`'s exit would lack."""

    check: str       # stable id: dns, registrar, repository, backups, wal, media, standby, state, secrets, image, inventory, vendor, keys, quorum
    dependency: str  # what, in words an operator knows
    lives_at: str    # where it lives now
    why: str         # why that is a breach when `provider` drops us
    fix: str         # what to do
    provider: str    # the provider whose exit this is about

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Vendor:
    """A service declared in `config.vendors` (acme, email, sms, identity...) and its fallbacks."""

    name: str
    provider: str
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyCopy:
    """One place where the operators keep the backup and media encryption keys (`config.encryption.key_copies`)."""

    place: str
    provider: str


@dataclass(frozen=True)
class Estate:
    """The spec plus what Pulumi.yaml and the stack files say beyond it: state, secrets, vendors."""

    spec: Spec
    project_file: str
    backend: str = ""
    secrets_providers: dict[str, str] = field(default_factory=dict)  # stack -> secretsprovider
    vendors: tuple[Vendor, ...] = ()
    key_copies: tuple[KeyCopy, ...] = ()


# ---- where things live -------------------------------------------------------------------

def storage_home(site: Site) -> str:
    return STORAGE_HOMES.get(site.storage, site.cloud)


def store_homes(spec: Spec) -> list[tuple[str, str]]:
    """(store, provider) of every store the epoch claims and the primary's lease count over
    (infra/data/lease.py `stores`): each site's, then each witness's (config.witnesses)."""
    return ([(f"site {s.name}", storage_home(s)) for s in spec.sites]
            + [(f"witness {w.name}", w.provider) for w in spec.witnesses])


def backend_home(url: str) -> str:
    # No url: the Pulumi CLI's default backend is Pulumi Cloud.
    parsed = urlparse(url or "https://api.pulumi.com")
    if parsed.scheme in BACKEND_HOMES:
        return BACKEND_HOMES[parsed.scheme]
    host = parsed.hostname or url
    return "pulumi" if host.endswith("pulumi.com") else host


def kms_home(secrets_provider: str, backend: str) -> str | None:
    """The provider holding a stack's secrets key; None for a passphrase (the operators hold it)."""
    if not secrets_provider or secrets_provider == "default":
        # Pulumi Cloud stacks default to the service's own key; other backends to a passphrase.
        return "pulumi" if backend_home(backend) == "pulumi" else None
    scheme = urlparse(secrets_provider).scheme or secrets_provider
    return None if scheme == "passphrase" else KMS_HOMES.get(scheme, scheme)


def registry_home(image: str) -> str:
    first = image.split("/", 1)[0]
    # Docker's rule: a first component without '.' or ':' (and not localhost) is a Docker Hub path.
    host = first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"
    return next((home for suffix, home in REGISTRY_HOMES if host.endswith(suffix)), host)


def dns_homes(provider) -> set[str]:
    module = provider.class_.split(".", 1)[0]
    return {provider.vendor} | ({DNS_CLASS_HOMES[module]} if module in DNS_CLASS_HOMES else set())


def images(spec: Spec) -> tuple[str, ...]:
    return (spec.app.image, *spec.app.image_mirrors)


def providers(estate: Estate) -> list[str]:
    """Every provider that holds something: the candidates for `--drop`."""
    spec = estate.spec
    found = {s.cloud for s in spec.sites} | {home for _, home in store_homes(spec)}
    found |= set().union(*(dns_homes(p) for p in spec.dns.providers)) if spec.dns.providers else set()
    found |= {registry_home(i) for i in images(spec)} | {backend_home(estate.backend)}
    found |= {kms_home(sp, estate.backend) for sp in estate.secrets_providers.values()} - {None}
    found |= {v.provider for v in estate.vendors} | {f for v in estate.vendors for f in v.fallbacks}
    found |= {spec.dns.registrar} if spec.dns.registrar else set()
    found |= {k.provider for k in estate.key_copies}
    return sorted(found - {"", "operator machine"})


def hosts_site(estate: Estate, x: str) -> bool:
    return any(x in (s.cloud, storage_home(s)) for s in estate.spec.sites)


def holdings(estate: Estate, x: str) -> list[str]:
    """What `x` holds besides the registration, in words, for the registrar's message."""
    spec = estate.spec
    held = [f"site {s.name}" for s in spec.sites if x in (s.cloud, storage_home(s))]
    held += [f"witness store {w.name}" for w in spec.witnesses if w.provider == x]
    held += [f"DNS provider {p.name}" for p in spec.dns.providers if x in dns_homes(p)]
    held += [f"image {i}" for i in images(spec) if registry_home(i) == x]
    held += ["the Pulumi state"] if backend_home(estate.backend) == x else []
    held += [f"the secrets key of stack {n}" for n, sp in estate.secrets_providers.items()
             if kms_home(sp, estate.backend) == x]
    held += [f"vendor {v.name}" for v in estate.vendors if v.provider == x]
    return held


# ---- the checks: each returns the breaches for one provider x ------------------------------

@dataclass(frozen=True)
class Live:
    """`failover status --json` and the time it was read, for backup ages and reachability."""

    status: dict[str, Any]
    now: datetime

    def site(self, name: str) -> dict[str, Any]:
        return next((s for s in self.status.get("sites", []) if s.get("name") == name), {})


Check = Callable[[Estate, str, "Live | None"], list[Breach]]


def _outside(estate: Estate, x: str) -> list[Site]:
    """Sites whose object store (backups, WAL, media, inventory copy) is not at x."""
    return [s for s in estate.spec.sites if storage_home(s) != x]


def _where_sites(sites) -> str:
    return ", ".join(f"site {s.name} ({s.storage} at {storage_home(s)})" for s in sites) or "no site"


def check_dns(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    dns = estate.spec.dns
    if any(x not in dns_homes(p) for p in dns.providers):
        return []
    where = ", ".join(f"{p.name} ({'/'.join(sorted(dns_homes(p)))})" for p in dns.providers) or "no provider"
    return [Breach("dns", f"DNS zone {dns.zone}", where,
                   f"every DNS provider serving {dns.zone} is run by {x}: without {x} the names cannot be moved",
                   f"add a provider run by another vendor under config.dns.providers in {estate.project_file} "
                   "(e.g. octodns_cloudflare.CloudflareProvider or octodns_ns1.Ns1Provider) and list it at the registrar",
                   x)]


def check_registrar(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    dns, file = estate.spec.dns, estate.project_file
    held = holdings(estate, x)
    if dns.registrar != x or not held:
        return []  # a registrar holding nothing else is the one unavoidable single home
    return [Breach("registrar", f"registration of {dns.zone}", dns.registrar,
                   f"the registrar {x} also holds {', '.join(held)}: its exit takes the delegation with them",
                   f"transfer {dns.zone} to a registrar that holds nothing else of the stack, lock it, and update "
                   f"config.dns.registrar in {file}", x)]


def check_repository(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    sites = estate.spec.sites
    if _outside(estate, x):
        return []
    return [Breach("repository", f"pgBackRest repository of database {estate.spec.database.name}", _where_sites(sites),
                   f"every site's repository is in {x}'s object store: no backup to restore from without {x}",
                   "add a site on another cloud (stacks/Pulumi.<site>.yaml) with storage there (s3, gcs or azure "
                   f"not at {x}); each site's store holds one repository", x)]


def check_backups(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    if live is None or not _outside(estate, x):
        return []  # without --live there are no ages; with no repository, check_repository already says it
    limit = estate.spec.database.max_backup_age_hours
    ages = {s.name: _backup_age_hours(live, s.name) for s in _outside(estate, x)}
    if any(age is not None and age <= limit for age in ages.values()):
        return []
    where = ", ".join(f"{n}: {'none' if a is None else f'{a:.1f} h old'}" for n, a in ages.items())
    return [Breach("backups", f"a database backup no older than {limit} h", where,
                   f"no repository outside {x} holds a backup younger than database.max_backup_age_hours",
                   "run `failover snapshot` and check the scheduled backups; `failover status` shows each repository's "
                   "last backup and error", x)]


def _backup_age_hours(live: Live, site: str) -> float | None:
    repos = [r for r in live.site(site).get("repositories", []) if r.get("last_backup") and not r.get("error")]
    stops = [datetime.fromisoformat(r["last_backup"]) for r in repos]
    return min(((live.now - s).total_seconds() / 3600 for s in stops), default=None)


def check_wal(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    outside = _outside(estate, x)
    if live is not None:
        outside = [s for s in outside if any(r.get("last_archived_wal") for r in live.site(s.name).get("repositories", []))]
    if outside:
        return []
    return [Breach("wal", "the WAL archive (point-in-time recovery)", _where_sites(estate.spec.sites),
                   f"WAL is pushed to every site's repository, and none outside {x} "
                   + ("has archived WAL (--live)" if live else "exists"),
                   f"keep a site whose storage is not at {x}; `failover status` shows each repository's last WAL", x)]


def check_media(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    outside = _outside(estate, x)
    if live is not None:
        outside = [s for s in outside if (live.site(s.name).get("media") or {}).get("in_sync")]
    if outside:
        return []
    return [Breach("media", f"media objects (bucket {estate.spec.media.bucket})", _where_sites(estate.spec.sites),
                   f"no copy of the media outside {x}" + (" is in sync (--live)" if live else ""),
                   f"keep a site whose storage is not at {x}; rclone copies media to every site's bucket "
                   "(`failover snapshot` syncs now)", x)]


def check_inventory(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    if _outside(estate, x):
        return []
    return [Breach("inventory", "the Inventory (inventory.json)", _where_sites(estate.spec.sites),
                   f"every site's bucket is at {x}, so no copy of the sites' outputs survives it",
                   "add a site whose storage is on another cloud, then `failover inventory pull --doit` copies it there", x)]


def check_standby(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    spec = estate.spec
    if spec.primary.cloud != x:
        return []  # the primary keeps serving
    ready = [s for s in spec.sites if s.role in ("warm", "pilot-light") and s.cloud != x]
    if live is not None:
        ready = [s for s in ready if live.site(s.name).get("reachable")]
    if ready:
        return []
    where = ", ".join(f"{s.name} ({s.role} on {s.cloud})" for s in spec.sites)
    return [Breach("standby", "a site able to take over (warm or pilot-light)", where,
                   f"the primary runs on {x} and no warm or pilot-light site on another cloud "
                   + ("is reachable (--live)" if live else "exists"),
                   "add stacks/Pulumi.<site>.yaml with failover:site.role warm or pilot-light on another cloud "
                   "and `pulumi up -s <site>`", x)]


def check_state(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    # The state is needed to recover only when x hosts a site (scaling a pilot light is a
    # `pulumi up`); when x hosts none, the app keeps running and a failover needs only the Inventory.
    home = backend_home(estate.backend)
    if home != x or not hosts_site(estate, x):
        return []
    return [Breach("state", "the Pulumi state", f"backend.url {estate.backend or '(default)'} in {estate.project_file}",
                   f"the state of every stack is in {x}, which also hosts a site: the failover's `pulumi up` needs it",
                   "`pulumi stack export` each stack, `pulumi login` to Pulumi Cloud or a file:// backend synced to two "
                   f"clouds, `pulumi stack import`, and update backend.url in {estate.project_file}", x)]


def check_secrets(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    if not hosts_site(estate, x):
        return []  # same reasoning as check_state
    stacks = [n for n, sp in estate.secrets_providers.items() if kms_home(sp, estate.backend) == x]
    if not stacks:
        return []
    where = ", ".join(f"{n}: {estate.secrets_providers[n] or '(default)'}" for n in stacks)
    return [Breach("secrets", f"the secrets key of stack(s) {', '.join(stacks)}", where,
                   f"the key that decrypts these stacks' secrets is held by {x}: without it their config and state "
                   "secrets cannot be read",
                   "`pulumi stack change-secrets-provider passphrase -s <stack>` (keep the passphrase with the operators), "
                   "which rewrites secretsprovider in stacks/Pulumi.<stack>.yaml", x)]


def check_image(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    homes = {i: registry_home(i) for i in images(estate.spec)}
    if any(h != x for h in homes.values()):
        return []
    where = ", ".join(f"{i} ({h})" for i, h in homes.items())
    return [Breach("image", "the app's container image", where,
                   f"every registry holding the image is run by {x}: no site can pull it without {x}",
                   f"push the image to a registry not run by {x} (e.g. ghcr.io or quay.io) and list it in "
                   f"config.app.image_mirrors in {estate.project_file}", x)]


def check_vendors(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    return [Breach("vendor", f"vendor {v.name}", f"{v.provider}" + (f", fallback {', '.join(v.fallbacks)}" if v.fallbacks else ""),
                   f"{v.name} is provided by {x} with no fallback outside {x}",
                   f"set config.vendors.{v.name}.fallback in {estate.project_file} to a provider other than {x} "
                   "and keep it configured", x)
            for v in estate.vendors if v.provider == x and all(f == x for f in v.fallbacks)]


def check_quorum(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    """A failover claims its epoch at a majority of the stores before anything else (docs/claims.md):
    when x holds so many of them that the rest are no majority, no failover away from x can run."""
    homes = store_homes(estate.spec)
    left, need = [store for store, home in homes if home != x], majority(len(homes))
    if len(left) >= need:
        return []
    where = ", ".join(f"{store} ({home})" for store, home in homes) or "no store"
    return [Breach("quorum", "a majority of the stores, for a failover's epoch claim and the primary's lease", where,
                   f"{len(homes) - len(left)} of the {len(homes)} stores are at {x}: without it {len(left)} remain, and "
                   f"a failover must claim its epoch at {need}, so none can run (and the primary fences itself)",
                   "keep most stores away from any one provider: give a site storage at another provider, or add "
                   f"witness stores at further providers under config.witnesses in {estate.project_file} "
                   "(docs/lease.md)", x)]


KEYS_HELD_APART = 2  # copies of the encryption keys at none of the sites' providers


def site_providers(estate: Estate) -> set[str]:
    return {s.cloud for s in estate.spec.sites} | {storage_home(s) for s in estate.spec.sites}


def check_keys(estate: Estate, x: str, live: Live | None) -> list[Breach]:
    """The backup and media keys decrypt every store: a copy at a site's provider lets that
    provider read the other clouds' backups, and fewer than two copies elsewhere risk them all."""
    if not hosts_site(estate, x):
        return []
    homes = site_providers(estate)
    apart = [k for k in estate.key_copies if k.provider not in homes]
    if len(apart) >= KEYS_HELD_APART:
        return []
    listed = ", ".join(f"{k.place} ({k.provider})" for k in estate.key_copies) or "config.encryption.key_copies is empty"
    return [Breach("keys", "the backup and media encryption keys", listed,
                   f"{len(apart)} cop{'y' if len(apart) == 1 else 'ies'} outside the sites' providers "
                   f"({', '.join(sorted(homes))}): if {x} drops us and that copy is lost too, no backup or media "
                   "copy can be read; a copy at a site's provider lets it read the other clouds' data",
                   f"keep FAILOVER_BACKUP_KEY and FAILOVER_MEDIA_KEY in at least {KEYS_HELD_APART} places at none of "
                   f"those providers and list them in config.encryption.key_copies in {estate.project_file}", x)]


CHECKS: tuple[Check, ...] = (check_dns, check_registrar, check_repository, check_backups, check_wal, check_media,
                             check_standby, check_state, check_secrets, check_image, check_inventory, check_vendors,
                             check_keys, check_quorum)


def audit(estate: Estate, drop: str | None = None, live: Live | None = None) -> list[Breach]:
    """Every breach, for the provider `drop` or for each provider that holds something."""
    xs = [drop] if drop else providers(estate)
    return unknowns(estate, drop) + [b for x in xs for check in CHECKS for b in check(estate, x, live)]


def unknowns(estate: Estate, drop: str | None) -> list[Breach]:
    """What the audit cannot place, so cannot prove outside any provider: one breach each, not one per provider."""
    dns, file = estate.spec.dns, estate.project_file
    if dns.registrar:
        return []
    return [Breach("registrar", f"registration of {dns.zone}", f"config.dns.registrar in {file} is not set",
                   f"the audit cannot prove the registrar is not {drop or 'any provider that holds the stack'}",
                   f"set config.dns.registrar in {file} to the company the domain is registered with",
                   drop or "unknown")]


# ---- reading the estate ------------------------------------------------------------------

def load_estate(project_file: str | Path) -> Estate:
    """The spec (validated by load_spec) plus backend, secrets providers and vendors; SpecError on problems."""
    spec = load_spec(project_file)
    problems: list[str] = []
    backend = spec.extra.get("backend") or {}
    if not isinstance(backend, dict) or not isinstance(backend.get("url", ""), str):
        problems.append(f"{project_file}: backend: must be a mapping with a url, got {backend!r}")
        backend = {}
    vendors = parse_vendors(spec.extra.get("vendors") or {}, str(project_file), problems)
    secrets_providers = {s.name: _secrets_provider(s, problems) for s in spec.sites}
    key_copies = parse_key_copies(spec.extra.get("encryption") or {}, str(project_file), problems)
    if problems:
        raise SpecError(problems)
    return Estate(spec, str(project_file), backend.get("url", ""), secrets_providers, vendors, key_copies)


def _secrets_provider(site: Site, problems: list[str]) -> str:
    value = (yaml.safe_load(Path(site.file).read_text()) or {}).get("secretsprovider", "")
    if not isinstance(value, str):
        problems.append(f"{site.file}: secretsprovider: must be a string such as passphrase, got {value!r}")
        return ""
    return value


def parse_vendors(data: Any, file: str, problems: list[str]) -> tuple[Vendor, ...]:
    """`config.vendors: {name: {provider: P, fallback: F or [F, ...]}}`, every problem recorded."""
    if not isinstance(data, dict):
        problems.append(f"{file}: config.vendors: must be a mapping of name -> {{provider, fallback}}")
        return ()
    return tuple(v for v in (_vendor(n, d, file, problems) for n, d in data.items()) if v)


def _vendor(name: str, data: Any, file: str, problems: list[str]) -> Vendor | None:
    key = f"{file}: config.vendors.{name}"
    if not isinstance(data, dict) or not isinstance(data.get("provider"), str) or not data["provider"]:
        problems.append(f"{key}.provider: is required: who provides {name} (e.g. letsencrypt, sendgrid)")
        return None
    unknown = set(data) - {"provider", "fallback"}
    problems.extend(f"{key}.{k}: unknown key; valid keys: provider, fallback" for k in sorted(unknown))
    fallback = data.get("fallback") or []
    fallbacks = [fallback] if isinstance(fallback, str) else fallback
    if not isinstance(fallbacks, list) or not all(isinstance(f, str) and f for f in fallbacks):
        problems.append(f"{key}.fallback: must be a provider name or a list of them, got {fallback!r}")
        return None
    return Vendor(name, data["provider"], tuple(fallbacks))


def parse_key_copies(data: Any, file: str, problems: list[str]) -> tuple[KeyCopy, ...]:
    """`config.encryption: {key_copies: [{place: ..., provider: ...}, ...]}`, every problem recorded."""
    key = f"{file}: config.encryption"
    if not isinstance(data, dict) or set(data) - {"key_copies"}:
        problems.append(f"{key}: must be a mapping with key_copies (a list of {{place, provider}})")
        return ()
    copies = data.get("key_copies") or []
    if not isinstance(copies, list):
        problems.append(f"{key}.key_copies: must be a list of {{place, provider}}, got {copies!r}")
        return ()
    found = []
    for number, entry in enumerate(copies):
        if (not isinstance(entry, dict) or set(entry) != {"place", "provider"}
                or not all(isinstance(v, str) and v for v in entry.values())):
            problems.append(f"{key}.key_copies[{number}]: needs exactly place and provider, both non-empty "
                            f"strings (e.g. place: the operators' password manager, provider: 1password)")
            continue
        found.append(KeyCopy(entry["place"], entry["provider"]))
    return tuple(found)


def live_status(status: dict[str, Any], now: datetime | None = None) -> Live:
    return Live(status, now or datetime.now(timezone.utc))
