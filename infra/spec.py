"""The cloud-neutral spec of the stack, read from Pulumi.yaml and stacks/Pulumi.<site>.yaml.

The project-level config in Pulumi.yaml describes the app (shared by every site); each stack
file describes one site. Both Pulumi (infra/__main__.py) and the failover engine read the spec
through `load_spec`, so it is never duplicated. Validation collects every problem and raises
one `SpecError` naming each file and key.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT = "failover"
ROLES = ("primary", "warm", "pilot-light")
CLOUDS = ("aws", "gcp", "azure", "local")
STORAGE_TYPES = ("posix", "s3", "gcs", "azure")
# quorum: a commit waits for any one secondary (the warm replica or the pilot-light's WAL
# receiver); sync: for the warm replica alone; async: for none (docs/quorum.md).
REPLICATION_MODES = ("quorum", "sync", "async")
SECRET_REF = re.compile(r"^env/[A-Za-z_][A-Za-z0-9_]*$")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
NS_NAME = re.compile(r"^[A-Za-z0-9*_-]+(\.[A-Za-z0-9*_-]+)*\.?$")
ENDPOINT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")  # host or host:port, no scheme
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")  # S3's and GCS's common rules
CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


class SpecError(ValueError):
    """Every problem found in the spec, each as 'file: key: message'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid spec:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class App:
    image: str
    port: int
    replicas: int = 1
    image_mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Database:
    name: str
    version: int
    disk_gb: int
    port: int
    replication: str = "quorum"
    max_backup_age_hours: int = 26
    # With no synchronous standby streaming for this long, the primary commits alone, but only
    # while it holds its lease (infra/data/fallback.py, docs/lease.md).
    async_after_seconds: int = 5

    @property
    def standbys_reply(self) -> bool:
        """Whether commits wait for a secondary, so the secondaries report every write and flush."""
        return self.replication != "async"


@dataclass(frozen=True)
class Media:
    bucket: str


@dataclass(frozen=True)
class DnsProvider:
    """An octoDNS provider: its class, its arguments (secrets as env/NAME) and who runs it."""

    name: str
    class_: str
    args: dict[str, Any]
    vendor: str
    # config.dns.resolvers: who verification asks for the zone's NS ("" = /etc/resolv.conf).
    resolvers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dns:
    zone: str
    names: tuple[str, ...]
    ttl: int
    providers: tuple[DnsProvider, ...]
    registrar: str = ""
    resolvers: tuple[str, ...] = ()

    def fqdn(self, name: str) -> str:
        return f"{name}.{self.zone}" if name else self.zone


@dataclass(frozen=True)
class Site:
    name: str
    cloud: str
    region: str
    role: str
    storage: str
    admin_cidrs: tuple[str, ...] = ()
    file: str = ""


@dataclass(frozen=True)
class WitnessType:
    """What a witness store of one storage type declares (config.witnesses.<name>): the keys it
    needs and may have, and its credentials by their writer-credential names (the ones the
    Inventory keeps and infra/data/objectstores.py maps to rclone's and the HTTP API's options).
    The credentials must be one of `credentials`' alternatives, whole, plus any `optional_credentials`."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    credentials: tuple[tuple[str, ...], ...]
    optional_credentials: tuple[str, ...] = ()


WITNESS_COMMON = ("provider", "storage", "credentials", "ca_file")
WITNESS_TYPES = {
    "s3": WitnessType(("bucket", "region"), ("endpoint", "uri_style"), (("s3-key", "s3-key-secret"),), ("s3-token",)),
    "gcs": WitnessType(("bucket",), ("endpoint",), (("gcs-key-json-base64",),)),
    # media-sas: a container SAS token (at <account>.blob.core.windows.net); media-sas-url: a whole
    # SAS URL, which an `endpoint` other than Azure's needs.
    "azure": WitnessType(("account", "container"), ("endpoint",), (("media-sas",), ("media-sas-url",))),
}


@dataclass(frozen=True)
class Witness:
    """A witness store (config.witnesses.<name>): a bucket at a further provider that runs no
    site. It counts in the lease's and the claims' majorities and holds nothing else
    (docs/lease.md). `credentials` maps writer-credential names to env/NAME references."""

    name: str
    provider: str  # who runs the bucket, for `failover audit` (backblaze, cloudflare, wasabi...)
    storage: str  # s3 | gcs | azure
    bucket: str  # the bucket; Azure: the container
    credentials: dict[str, str]
    region: str = ""
    endpoint: str = ""  # host[:port]; "" for the storage type's public endpoint
    account: str = ""  # Azure's storage account
    uri_style: str = ""  # S3: host | path ("" = host)
    ca_file: str = ""  # a private CA's certificate, at this path on the operator's machine and every host


@dataclass(frozen=True)
class Spec:
    project: str
    app: App
    database: Database
    media: Media
    dns: Dns
    sites: tuple[Site, ...]
    witnesses: tuple[Witness, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(f"unknown site {name!r}; known sites: {', '.join(s.name for s in self.sites)}")

    @property
    def primary(self) -> Site:
        for site in self.sites:
            if site.role == "primary":
                return site
        # Only a spec loaded with roles_in_flux (a failover's resume) can lack one.
        raise SpecError(["role: no stack file names a primary (an interrupted `failover run` is changing the "
                         "roles): finish it with `failover run --to <its target> --yes` first"])


class _Checker:
    """Reads typed values out of nested dicts, recording problems instead of raising."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.file}: {key}: {message}")

    def mapping(self, data: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(data, dict):
            self.problem(key, f"must be a mapping, got {type(data).__name__}")
            return {}
        for name in data:
            if name not in allowed:
                self.problem(f"{key}.{name}", f"unknown key; valid keys: {', '.join(allowed)}")
        for name in required:
            if name not in data:
                self.problem(f"{key}.{name}", "is required")
        return data

    def value(self, data: dict, key: str, name: str, kind: type, default: Any = None, choices: tuple = ()):
        if name not in data:
            return default
        value = data[name]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            self.problem(f"{key}.{name}", f"must be {kind.__name__}, got {value!r}")
            return default
        if choices and value not in choices:
            self.problem(f"{key}.{name}", f"{value!r} is not one of: {', '.join(choices)}")
            return default
        return value

    def positive(self, data: dict, key: str, name: str, default: int, maximum: int = 2**31) -> int:
        value = self.value(data, key, name, int, default)
        if not 0 < value <= maximum:
            self.problem(f"{key}.{name}", f"must be between 1 and {maximum}, got {value}")
        return value


def _read_yaml(path: Path, checker: _Checker) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        checker.problem("-", "file not found")
        return {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "-"
        checker.problem(where, f"not valid YAML: {getattr(error, 'problem', error)}")
        return {}
    if not isinstance(data, dict):
        checker.problem("-", "must be a YAML mapping")
        return {}
    return data


def _project_config(raw: dict, check: _Checker) -> dict[str, Any]:
    """Project-level config: `key: {value: ...}` or `key: value`, namespaced or not."""
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        check.problem("config", "must be a mapping")
        return {}
    values = {}
    for key, entry in config.items():
        name = key.split(":", 1)[1] if key.startswith(f"{PROJECT}:") else key
        values[name] = entry["value"] if isinstance(entry, dict) and "value" in entry else entry
    return values


def _app(data: Any, check: _Checker) -> App:
    key = "config.app"
    data = check.mapping(data, key, ("image", "image_mirrors", "port", "replicas"), ("image", "port"))
    mirrors = check.value(data, key, "image_mirrors", list, [])
    return App(
        image=check.value(data, key, "image", str, ""),
        port=check.positive(data, key, "port", 8080, 65535),
        replicas=check.positive(data, key, "replicas", 1, 100),
        image_mirrors=tuple(str(m) for m in mirrors),
    )


def _database(data: Any, check: _Checker) -> Database:
    key = "config.database"
    allowed = ("name", "version", "disk_gb", "port", "replication", "max_backup_age_hours", "async_after_seconds")
    data = check.mapping(data, key, allowed, ("name", "version"))
    version = check.value(data, key, "version", int, 15)
    if version != 15:
        check.problem(f"{key}.version", f"only PostgreSQL 15 is supported, got {version}")
    return Database(
        name=check.value(data, key, "name", str, "social"),
        version=version,
        disk_gb=check.positive(data, key, "disk_gb", 20, 65536),
        port=check.positive(data, key, "port", 5432, 65535),
        replication=check.value(data, key, "replication", str, "quorum", REPLICATION_MODES),
        max_backup_age_hours=check.positive(data, key, "max_backup_age_hours", 26),
        async_after_seconds=check.positive(data, key, "async_after_seconds", 5, 3600),
    )


def _dns_provider(name: str, data: Any, check: _Checker, resolvers: tuple[str, ...] = ()) -> DnsProvider:
    key = f"config.dns.providers.{name}"
    data = check.mapping(data, key, ("class", "args", "vendor"), ("class", "vendor"))
    args = check.value(data, key, "args", dict, {})
    for arg, value in args.items():
        if _looks_secret(arg) and not (isinstance(value, str) and SECRET_REF.match(value)):
            check.problem(f"{key}.args.{arg}", "secrets must be references like env/NAME, never values")
    _check_ns_names(args.get("ns_names"), f"{key}.args.ns_names", check)
    class_ = check.value(data, key, "class", str, "")
    if class_ and "." not in class_:
        check.problem(f"{key}.class", f"must be a dotted octoDNS provider class, got {class_!r}")
    return DnsProvider(name=name, class_=class_, args=args, vendor=check.value(data, key, "vendor", str, ""),
                       resolvers=resolvers)


def _check_ns_names(names: Any, key: str, check: _Checker) -> None:
    if names is None:
        return
    listed = [names] if isinstance(names, str) else names
    if not isinstance(listed, list) or not listed:
        check.problem(key, f"must be a list of NS names such as ['*.ns.cloudflare.com'], got {names!r}")
        return
    for name in listed:
        if not isinstance(name, str) or not NS_NAME.match(name):
            check.problem(key, f"{name!r} is not an NS name or pattern such as *.ns.cloudflare.com")


def resolver_address(text: str) -> tuple[str, int]:
    """(address, port) of a resolver written `127.0.0.1`, `127.0.0.1:5353`, `::1` or `[::1]:5353`."""
    host, digits = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        digits = rest[1:] if rest.startswith(":") else rest or "53"
    elif text.count(":") == 1:  # more than one colon and no brackets: a bare IPv6 address
        host, _, digits = text.partition(":")
    ipaddress.ip_address(host)  # ValueError if it is not an address
    if not digits.isdigit() or not 0 < int(digits) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    return host, int(digits)


def _resolvers(data: dict, key: str, check: _Checker) -> tuple[str, ...]:
    listed = check.value(data, key, "resolvers", list, [])
    good = []
    for text in listed:
        try:
            resolver_address(text if isinstance(text, str) else "")
            good.append(text)
        except ValueError:
            check.problem(f"{key}.resolvers", f"{text!r} is not a resolver address such as 127.0.0.1 or "
                                              f"127.0.0.1:5353 (or [::1]:53)")
    return tuple(good)


def _looks_secret(arg: str) -> bool:
    # key_secret, api_key, token...; but not key_name or key_algorithm, which are not secret.
    return bool(re.search(r"(secret|token|password|api_key|access_key|^key)$", arg.lower()))


def _dns(data: Any, check: _Checker) -> Dns:
    key = "config.dns"
    allowed = ("zone", "names", "ttl", "providers", "registrar", "resolvers")
    data = check.mapping(data, key, allowed, ("zone", "names", "providers"))
    zone = check.value(data, key, "zone", str, "example.")
    if not zone.endswith("."):
        check.problem(f"{key}.zone", f"must end with a dot, got {zone!r}")
    names = check.value(data, key, "names", list, [])
    for name in names:
        if not isinstance(name, str) or (name and not re.match(r"^[a-z0-9-]+$", name)):
            check.problem(f"{key}.names", f"{name!r} is not a DNS label (use '' for the apex)")
    providers = check.value(data, key, "providers", dict, {})
    resolvers = _resolvers(data, key, check)
    return Dns(
        zone=zone,
        names=tuple(str(n) for n in names),
        ttl=check.positive(data, key, "ttl", 60, 86400),
        providers=tuple(_dns_provider(n, p, check, resolvers) for n, p in providers.items()),
        registrar=check.value(data, key, "registrar", str, ""),
        resolvers=resolvers,
    )


def _witnesses(data: Any, check: _Checker, stack_files: dict[str, Path]) -> tuple[Witness, ...]:
    """config.witnesses: {name: {provider, storage, ...}}; every problem recorded. `stack_files`:
    site name -> its stack file, whose names a witness must not take."""
    if not isinstance(data, dict):
        check.problem("config.witnesses", f"must be a mapping of name -> witness store, got {type(data).__name__}")
        return ()
    found = []
    for name, entry in data.items():
        key = f"config.witnesses.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            check.problem(key, "a witness name must be lower-case letters, digits and '-', starting with a letter")
        elif name in stack_files:
            check.problem(key, f"clashes with site {name} ({stack_files[name]}): sites and witnesses share one set "
                               "of store names; rename the witness")
        found.append(_witness(str(name), entry, key, check))
    return tuple(w for w in found if w)


def _witness(name: str, data: Any, key: str, check: _Checker) -> Witness | None:
    storage = check.value(data, key, "storage", str, "", tuple(WITNESS_TYPES)) if isinstance(data, dict) else ""
    if isinstance(data, dict) and "storage" not in data:
        check.problem(f"{key}.storage", f"is required: one of {', '.join(WITNESS_TYPES)}")
    kind = WITNESS_TYPES.get(storage)
    # Without a known type, any type's keys pass: the storage key's own problem says what is wrong.
    fields_ = kind.required + kind.optional if kind else tuple({f: 0 for t in WITNESS_TYPES.values()
                                                                for f in t.required + t.optional})
    data = check.mapping(data, key, WITNESS_COMMON + fields_, ("provider", "credentials") + (kind.required if kind else ()))
    values = {field_: check.value(data, key, field_, str, "") for field_ in ("provider", "ca_file") + fields_}
    _check_witness_values(values, key, check)
    credentials = _witness_credentials(data.get("credentials", {}), f"{key}.credentials", kind, check)
    if not kind:
        return None
    if storage == "azure" and values["endpoint"] and "media-sas" in credentials:
        check.problem(f"{key}.credentials.media-sas", "with an endpoint other than Azure's, give media-sas-url "
                                                      "(the whole SAS URL) instead")
    return Witness(name=name, provider=values["provider"], storage=storage,
                   bucket=values.get("bucket") or values.get("container", ""), credentials=credentials,
                   **{f: values.get(f, "") for f in ("region", "endpoint", "account", "uri_style", "ca_file")})


def _check_witness_values(values: dict[str, str], key: str, check: _Checker) -> None:
    rules = (("endpoint", ENDPOINT, "a host or host:port without a scheme, such as s3.us-west-004.backblazeb2.com"),
             ("bucket", BUCKET, "a bucket name: lower-case letters, digits, '.', '-' and '_', 3 to 222 characters"),
             ("container", CONTAINER, "a container name: lower-case letters, digits and single '-', 3 to 63 characters"),
             ("account", ACCOUNT, "a storage account name: 3 to 24 lower-case letters and digits"))
    for name, pattern, what in rules:
        if values.get(name) and not pattern.match(values[name]):
            check.problem(f"{key}.{name}", f"{values[name]!r} is not {what}")
    if values.get("uri_style") and values["uri_style"] not in ("host", "path"):
        check.problem(f"{key}.uri_style", f"{values['uri_style']!r} is not one of: host, path")
    if values.get("ca_file") and not values["ca_file"].startswith("/"):
        check.problem(f"{key}.ca_file", f"must be an absolute path, got {values['ca_file']!r}")


def _witness_credentials(data: Any, key: str, kind: WitnessType | None, check: _Checker) -> dict[str, str]:
    """{writer-credential name: env/NAME}: references only, and one whole alternative of the type's."""
    if not isinstance(data, dict):
        check.problem(key, "must be a mapping of credential name -> env/NAME")
        return {}
    for name, value in data.items():
        if not (isinstance(value, str) and SECRET_REF.match(value)):
            check.problem(f"{key}.{name}", "secrets must be references like env/NAME, never values")
    if kind is None:
        return {}
    known = tuple(n for names in kind.credentials for n in names) + kind.optional_credentials
    for name in data:
        if name not in known:
            check.problem(f"{key}.{name}", f"unknown credential; valid: {', '.join(known)}")
    if not any(all(n in data for n in names) for names in kind.credentials):
        needed = " or ".join(" and ".join(names) for names in kind.credentials)
        check.problem(key, f"needs {needed}, each an env/NAME reference")
    return {str(n): v for n, v in data.items() if isinstance(v, str) and SECRET_REF.match(v)}


def _site(path: Path, problems: list[str]) -> Site | None:
    check = _Checker(str(path))
    raw = _read_yaml(path, check)
    name = _stack_name(path)
    if raw and not NAME.match(name):
        check.problem("-", f"stack name {name!r} must be lower-case letters, digits and '-'")
    site = _site_from(raw, name, str(path), check)
    problems.extend(check.problems)
    return site if not check.problems else None


def _site_from(raw: dict, name: str, file: str, check: _Checker) -> Site:
    """The site described by a stack's raw config (`config: {failover:site: ...}`)."""
    config = check.mapping(raw.get("config", {}), "config", tuple(raw.get("config", {}) or ()))
    key = f"config.{PROJECT}:site"
    if raw and key.split(".", 1)[1] not in config:
        check.problem(key, "is required: the site's cloud, region, role and storage")
    data = check.mapping(
        config.get(f"{PROJECT}:site", {}), key,
        ("cloud", "region", "role", "storage", "admin_cidrs"), ("cloud", "region", "role"),
    )
    cidrs = check.value(data, key, "admin_cidrs", list, [])
    for cidr in cidrs:
        try:
            ipaddress.ip_network(str(cidr))
        except ValueError:
            check.problem(f"{key}.admin_cidrs", f"{cidr!r} is not a CIDR such as 198.51.100.0/24")
    site = Site(
        name=name,
        cloud=check.value(data, key, "cloud", str, "", CLOUDS),
        region=check.value(data, key, "region", str, ""),
        role=check.value(data, key, "role", str, "", ROLES),
        storage=check.value(data, key, "storage", str, "posix", STORAGE_TYPES),
        admin_cidrs=tuple(str(c) for c in cidrs),
        file=file,
    )
    return site


def _check_roles(sites: list[Site], stacks: Path, problems: list[str], in_flux: Collection[str] = ()) -> None:
    primaries = [s.name for s in sites if s.role == "primary"]
    if len(primaries) == 1 or not primaries and {s.name for s in sites} & set(in_flux):
        return
    fix = ("set failover:site.role: primary in exactly one stack file (`pulumi config set --path failover:site.role "
           "<role> -s <stack>`); if a `failover run` was interrupted, rerun it instead: it finishes the change")
    problems.append(f"{stacks}: role: exactly one site must be primary, found {len(primaries)} "
                    f"({', '.join(primaries) or 'none'}): {fix}")


def load_spec(project_file: str | Path = "Pulumi.yaml", stacks_dir: str | Path | None = None,
              roles_in_flux: Collection[str] = ()) -> Spec:
    """Reads and validates the whole spec; raises SpecError listing every problem.

    `roles_in_flux` names the sites whose stack roles a resumable run is changing (a failover's
    source and target, until its `capacity` step is done): with them, no primary at all is
    accepted too, the state between demoting the old primary's stack and promoting the
    target's. Two primaries never are."""
    project_file = Path(project_file)
    check = _Checker(str(project_file))
    raw = _read_yaml(project_file, check)
    if raw and raw.get("name") != PROJECT:
        check.problem("name", f"project must be named {PROJECT!r} (the config namespace), got {raw.get('name')!r}")
    config = _project_config(raw, check)
    for name in ("app", "database", "media", "dns"):
        if raw and name not in config:
            check.problem(f"config.{name}", "is required")
    known = ("app", "database", "media", "dns", "vendors", "encryption", "witnesses")
    for name in config:
        if name not in known and ":" not in name:
            check.problem(f"config.{name}", f"unknown key; valid keys: {', '.join(known)}")
    app = _app(config.get("app", {}), check)
    database = _database(config.get("database", {}), check)
    media_data = check.mapping(config.get("media", {}), "config.media", ("bucket",), ("bucket",))
    media = Media(bucket=check.value(media_data, "config.media", "bucket", str, "media"))
    dns = _dns(config.get("dns", {}), check)
    problems = check.problems

    stacks = _stacks_dir(project_file, raw, stacks_dir)
    files = sorted(stacks.glob("Pulumi.*.yaml"))
    if not files:
        problems.append(f"{stacks}: -: no stack files Pulumi.<site>.yaml found")
    sites = [s for s in (_site(f, problems) for f in files) if s]
    witnesses = _witnesses(config.get("witnesses", {}), check, _stack_names(files))
    sites.sort(key=lambda s: (ROLES.index(s.role), s.name))  # primary first, then warm, then pilot-light
    if sites and len(sites) == len(files):
        _check_roles(sites, stacks, problems, roles_in_flux)
    if problems:
        raise SpecError(problems)
    extra = {"vendors": config.get("vendors", {}), "encryption": config.get("encryption", {}),
             "backend": raw.get("backend", {})}
    return Spec(project=PROJECT, app=app, database=database, media=media, dns=dns, sites=tuple(sites),
                witnesses=witnesses, extra=extra)


def _stacks_dir(project_file: Path, raw: dict, stacks_dir: str | Path | None = None) -> Path:
    return Path(stacks_dir) if stacks_dir else project_file.parent / (raw.get("stackConfigDir") or ".")


def _stack_name(path: Path) -> str:
    """The site a stack file describes: Pulumi.<site>.yaml."""
    return path.name[len("Pulumi."):-len(".yaml")]


def _stack_names(files: list[Path]) -> dict[str, Path]:
    return {_stack_name(f): f for f in files}


def load_witnesses(project_file: str | Path = "Pulumi.yaml") -> tuple[Witness, ...]:
    """The spec's witness stores alone (config.witnesses), validated, their names checked against
    the stack files' names; raises SpecError. For `failover inventory pull`, which must not depend
    on the stacks' roles, which an interrupted failover may be changing."""
    project_file = Path(project_file)
    check = _Checker(str(project_file))
    raw = _read_yaml(project_file, check)
    config = _project_config(raw, check)
    files = sorted(_stacks_dir(project_file, raw).glob("Pulumi.*.yaml"))
    witnesses = _witnesses(config.get("witnesses", {}), check, _stack_names(files))
    if check.problems:
        raise SpecError(check.problems)
    return witnesses


def spec_from_config(project_values: dict, site_name: str, site_values: dict, where: str = "pulumi config") -> Spec:
    """The spec as a Pulumi program sees it: project config plus one stack's `failover:site`.

    Validated by the same helpers as `load_spec`; raises SpecError naming `where` and each key.
    """
    check = _Checker(where)
    for name in ("app", "database", "media", "dns"):
        if name not in project_values:
            check.problem(f"config.{name}", "is required")
    app = _app(project_values.get("app", {}), check)
    database = _database(project_values.get("database", {}), check)
    media_data = check.mapping(project_values.get("media", {}), "config.media", ("bucket",), ("bucket",))
    media = Media(bucket=check.value(media_data, "config.media", "bucket", str, "media"))
    dns = _dns(project_values.get("dns", {}), check)
    if not NAME.match(site_name):
        check.problem("-", f"stack name {site_name!r} must be lower-case letters, digits and '-'")
    site = _site_from({"config": {f"{PROJECT}:site": site_values}}, site_name, where, check)
    if check.problems:
        raise SpecError(check.problems)
    return Spec(project=PROJECT, app=app, database=database, media=media, dns=dns, sites=(site,))
