"""What every cloud's site component shares: its args, its outputs, and the pure planning.

Each cloud module (aws.py, gcp.py, azure.py) is a thin adapter: it turns the plans made here
(names, subnet ranges, machine sizes by role, firewall rules, the cloud-init bootstrap) into
that cloud's resources, and hands back the same `SiteOutputs`-shaped outputs. Nothing here
imports a cloud SDK, so the planning is tested as plain functions.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import pulumi

from infra.clouds import hostkey, stores
from infra.spec import App, Database

WORLD = "0.0.0.0/0"
WEB_PORTS = (80, 443)
SSH_PORT = 22
CLOUD_INIT = Path(__file__).with_name("cloud-init.yaml")
# The one bootstrap file: cloud-init embeds it, and the local cloud's VMs boot with it.
BOOTSTRAP = Path(__file__).with_name("bootstrap.sh")
TIERS = ("app", "db")

# Generic size classes, so a role picks a class and each cloud maps it to a machine type.
MACHINE_TYPES = {
    "aws": {"small": "t3.small", "medium": "t3.medium", "large": "m6i.large"},
    "gcp": {"small": "e2-small", "medium": "e2-medium", "large": "e2-standard-2"},
    "azure": {"small": "Standard_B1ms", "medium": "Standard_B2s", "large": "Standard_D2s_v5"},
}
# Roles change size, not shape: a pilot-light site has every network, bucket and credential,
# no app VM and one small database VM (the WAL receiver on the data disk, which holds the
# prestaged data directory), so `role: primary` plus `pulumi up` is all a failover needs to
# scale it: the app VMs appear and the database VM grows to its primary size.
ROLE_SIZES = {
    "primary": {"app": "medium", "db": "large"},
    "warm": {"app": "small", "db": "large"},  # the replica must keep up with the primary's WAL
    "pilot-light": {"app": "small", "db": "small"},  # pg_receivewal only, until a failover
}


@dataclass(frozen=True)
class SiteArgs:
    """Identical args for every cloud's site component; checked in `validate()`."""

    site: str
    cloud: str
    region: str
    role: str
    app: App
    database: Database
    media_bucket: str
    admin_cidrs: tuple[str, ...] = ()
    peer_cidrs: tuple[str, ...] = ()  # static extra addresses allowed to reach PostgreSQL
    # The other sites' database addresses as CIDRs, read from their stacks (Outputs): they join
    # peer_cidrs in the PostgreSQL rule, and, like them, never reach a VM's user-data.
    peer_hosts: tuple[pulumi.Input[str], ...] = ()
    # The site's ed25519 host key (OpenSSH private key, a secret): every VM of the site boots with it.
    ssh_host_key: pulumi.Input[str] = ""
    ssh_user: str = "failover"
    ssh_public_key: str = ""
    network_cidr: str = "10.20.0.0/16"
    sizes: dict[str, str] = field(default_factory=dict)  # optional machine type per tier
    zone: str = ""
    backup_retention_days: int = 14
    # The VM image, pinned: an AMI ID, a GCE image, or an Azure URN publisher:offer:sku:version.
    # Unset, each cloud takes Debian 12's current image when a VM is created and ignores newer
    # ones afterwards, so a new Debian image never replaces a running VM.
    image: str = ""

    def validate(self) -> None:
        problems = [p for p in (_check_cidrs("admin_cidrs", self.admin_cidrs),
                                _check_cidrs("peer_cidrs", self.peer_cidrs),
                                _check_cidrs("network_cidr", (self.network_cidr,)),
                                _check_sizes(self.sizes), _check_key(self.ssh_public_key)) if p]
        if self.role not in ROLE_SIZES:
            problems.append(f"role: {self.role!r} is not one of: {', '.join(ROLE_SIZES)}")
        if self.image and self.cloud == "azure" and len(self.image.split(":")) != 4:
            problems.append(f"image: {self.image!r} is not an Azure URN publisher:offer:sku:version")
        if self.backup_retention_days < 1:
            problems.append(f"backup_retention_days: must be at least 1, got {self.backup_retention_days}")
        if problems:
            raise ValueError(f"site {self.site!r} ({self.cloud}): " + "; ".join(problems))


def _check_cidrs(name: str, cidrs: tuple[str, ...]) -> str:
    bad = []
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            bad.append(repr(cidr))
    return f"{name}: not CIDRs such as 198.51.100.0/24: {', '.join(bad)}" if bad else ""


def _check_sizes(sizes: dict[str, str]) -> str:
    unknown = [tier for tier in sizes if tier not in TIERS]
    return f"sizes: unknown tiers {unknown}; valid tiers: {', '.join(TIERS)}" if unknown else ""


def _check_key(key: str) -> str:
    if key and not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) \S+", key):
        return f"ssh_public_key: not an OpenSSH public key: {key[:20]!r}..."
    return ""


def name(args: SiteArgs, part: str) -> str:
    """Child resource names: `<site>-<part>`, so two sites never collide in one account."""
    return f"{args.site}-{part}"


@dataclass(frozen=True)
class Subnets:
    app: str  # public: the app VMs, reachable on HTTP(S)
    db: str  # the database: no automatic public IPs, only its own static address


def subnets(network_cidr: str) -> Subnets:
    """The first two /24s (or the next 8 bits) of the site's network."""
    network = ipaddress.ip_network(network_cidr)
    first, second = list(network.subnets(new_prefix=min(network.prefixlen + 8, 28)))[:2]
    return Subnets(app=str(first), db=str(second))


def capacity(role: str, app: App) -> dict[str, int]:
    """Machines per tier: every VM for primary and warm; for pilot-light, the database VM alone
    (it receives the primary's WAL stream onto its data disk)."""
    if role == "pilot-light":
        return {"app": 0, "db": 1}
    return {"app": app.replicas, "db": 1}


def machine_type(args: SiteArgs, tier: str) -> str:
    """The stack's override for a tier, else the role's size class on this cloud."""
    return args.sizes.get(tier) or MACHINE_TYPES[args.cloud][ROLE_SIZES[args.role][tier]]


@dataclass(frozen=True)
class Rule:
    """One inbound allow rule: TCP ports to the VMs of a tier, from source CIDRs."""

    name: str
    tier: str
    port: int
    sources: tuple[pulumi.Input[str], ...]  # CIDRs; a peer's is an Output read from its stack
    description: str


def firewall_rules(args: SiteArgs) -> list[Rule]:
    """HTTP(S) from anywhere, SSH from admins, PostgreSQL from peers and the own app subnet.

    Rules without sources are dropped: an empty source list means "anywhere" on some clouds.
    """
    app_subnet = subnets(args.network_cidr).app
    rules = [Rule(f"web-{port}", "app", port, (WORLD,), "HTTP(S) from anywhere") for port in WEB_PORTS]
    rules += [Rule(f"ssh-{tier}", tier, SSH_PORT, args.admin_cidrs, "SSH from admin CIDRs") for tier in TIERS]
    rules.append(Rule("postgres-peers", "db", args.database.port, (*args.peer_hosts, *args.peer_cidrs),
                      "PostgreSQL (TLS) from the other sites, for replication"))
    rules.append(Rule("postgres-app", "db", args.database.port, (app_subnet,), "PostgreSQL from the app subnet"))
    return [rule for rule in rules if rule.sources]


def cloud_init(args: SiteArgs, tier: str, host_key: str, data_device: str = "") -> str:
    """The VM's user-data for a tier, embedding the one bootstrap file and the site's host key
    (`host_key`, its OpenSSH private key); `data_device` is the cloud's hint for the data disk.
    Nothing in it changes on a live site: not the peers, not pg_hba, not the role (all the
    engine's job, over SSH), and the host key only when the operator makes a new one, so a
    routine `pulumi up` or a role change leaves every VM's user-data as it was (a change would
    stop and start an AWS VM, and Azure cannot change customData at all)."""
    values = {
        "site": args.site, "tier": tier, "ssh_user": args.ssh_user,
        "ssh_public_key": args.ssh_public_key or "# no key configured", "app_image": args.app.image,
        "app_port": str(args.app.port), "db_port": str(args.database.port),
        "db_version": str(args.database.version), "data_device": data_device,
        "ssh_host_key": _indent(host_key, 4), "ssh_host_public_key": hostkey.public_key(host_key, args.site),
        "bootstrap": _indent(BOOTSTRAP.read_text(), 6),
    }
    return render(CLOUD_INIT.read_text(), values)


def host_cidr(address: str, where: str) -> str:
    """A peer's db_host as the one-address CIDR a firewall takes (/32, or /128 for IPv6)."""
    try:
        return str(ipaddress.ip_network(address))
    except ValueError:
        raise ValueError(f"{where}: db_host {address!r} is not an IP address; the PostgreSQL rule "
                         "allows addresses only") from None


def _indent(text: str, spaces: int) -> str:
    """`text` as the body of a YAML block scalar at that indentation (blank lines stay blank)."""
    return "\n".join(" " * spaces + line if line else "" for line in text.rstrip("\n").split("\n"))


def render(template: str, values: dict[str, str]) -> str:
    """Fills `{{name}}`; a name without a value is an error, never an empty string."""
    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"{CLOUD_INIT.name}: no value for {{{{{key}}}}}")
        return values[key]
    return re.sub(r"\{\{(\w+)\}\}", fill, template)


class SiteComponent(pulumi.ComponentResource):
    """Base of every cloud's site: declares the outputs all clouds share, in SiteOutputs' shape.

    Implementors build their resources parented to `self`, then call `finish()` once with:
    public (app) addresses, the database address, the backup repository as pgBackRest options
    (without `repoN-`), the media bucket as an rclone remote, and the append-only writer
    credentials (made secret here).
    """

    public_addresses: pulumi.Output
    ssh_hosts: pulumi.Output
    ssh_user: pulumi.Output
    db_host: pulumi.Output
    db_port: pulumi.Output
    repository: pulumi.Output
    media_remote: pulumi.Output
    writer_credentials: pulumi.Output
    ssh_host_public_key: pulumi.Output  # not part of SiteOutputs: pulled into known_hosts

    def __init__(self, type_: str, resource_name: str, args: SiteArgs, opts: pulumi.ResourceOptions | None):
        args.validate()
        super().__init__(type_, resource_name, None, opts)
        self.args = args

    def child(self, protect: bool = False, **extra) -> pulumi.ResourceOptions:
        """Options for a child: parented to this site; data holders are protected from deletion."""
        return pulumi.ResourceOptions(parent=self, protect=protect or None, **extra)

    def user_data(self, tier: str, data_device: str = "") -> pulumi.Output[str]:
        """`cloud_init()` for a tier with the site's host key, as a secret (it holds the private key)."""
        key = pulumi.Output.from_input(self.args.ssh_host_key)
        return pulumi.Output.secret(key.apply(lambda k: cloud_init(self.args, tier, k, data_device)))

    def finish(self, app_addresses, db_address, repository, media_remote, writer_credentials) -> None:
        self.public_addresses = pulumi.Output.all(*app_addresses)
        self.ssh_hosts = pulumi.Output.all(*app_addresses, db_address)
        self.ssh_user = pulumi.Output.from_input(self.args.ssh_user)
        self.db_host = pulumi.Output.from_input(db_address)
        self.db_port = pulumi.Output.from_input(self.args.database.port)
        self.repository = pulumi.Output.from_input(repository)
        self.media_remote = pulumi.Output.from_input(media_remote)
        self.writer_credentials = pulumi.Output.secret(writer_credentials)
        # The public half only, derived from the secret config and deliberately not secret.
        self.ssh_host_public_key = pulumi.Output.unsecret(pulumi.Output.from_input(self.args.ssh_host_key).apply(
            lambda k: hostkey.public_key(k, self.args.site)))
        self.register_outputs(self.outputs())

    def outputs(self) -> dict[str, pulumi.Output]:
        keys = ("public_addresses", "ssh_hosts", "ssh_user", "db_host", "db_port",
                "repository", "media_remote", "writer_credentials", hostkey.OUTPUT)
        return {key: getattr(self, key) for key in keys}


PGBACKREST_PATH = stores.PGBACKREST_PATH
