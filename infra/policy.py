"""CrossGuard policies for every site: nothing but web ports open to the world, buckets versioned,
disks encrypted, backups not deletable by the writer credentials.

Each check is a plain function over (resource type, props) returning violation messages, so tests
call them on resources recorded under mocks. `policies()` wraps them for pulumi-policy; the pack
itself (which starts a server and blocks) lives in policypack/__main__.py. Props use the engine's
camelCase names, as CrossGuard and the mocks both see them.
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterable

from infra.clouds.base import WEB_PORTS

Props = dict[str, Any]
# What a writer must never hold (infra/clouds/permissions.py says why a writer may delete the
# current version of an object: versioning, locks and soft delete keep what it replaced).
# GCS roles that can change a bucket, its IAM or its objects' ACLs and retention.
GCS_DELETING_ROLES = ("roles/storage.admin", "roles/storage.objectAdmin", "roles/storage.legacyBucketWriter",
                      "roles/storage.legacyBucketOwner", "roles/owner", "roles/editor")
SAS_DELETING = set("xyi")  # delete a version, permanent delete, set immutability policy
S3_DELETING = ("s3:*", "s3:deleteobjectversion", "s3:deletebucket", "s3:putlifecycleconfiguration",
               "s3:putbucketversioning", "s3:bypassgovernanceretention", "s3:putobjectretention",
               "s3:putbucketpolicy", "s3:putbucketobjectlockconfiguration")


# ---- no database port open to the world -------------------------------------------------------

def _is_world(source: Any) -> bool:
    if source in ("*", "Internet", "Any"):
        return True
    try:
        return ipaddress.ip_network(str(source)).prefixlen == 0
    except ValueError:
        return False


def _non_web(ports: Iterable[tuple[int, int]]) -> list[str]:
    return [f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ports
            if not (lo == hi and lo in WEB_PORTS)]


def _or(value: Any, default: int) -> Any:
    return default if value is None else value


def _port_range(text: Any) -> tuple[int, int]:
    text = str(text)
    if text in ("*", "", "None"):
        return 0, 65535
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def world_open_ports(type_: str, props: Props) -> list[str]:
    """Violations: anything but HTTP(S) reachable from 0.0.0.0/0 (so never PostgreSQL)."""
    if type_ == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        if _is_world(props.get("cidrIpv4")) or _is_world(props.get("cidrIpv6")):
            proto_all = str(props.get("ipProtocol")) == "-1"
            # A port unknown at preview counts as the whole range: fail safe.
            ports = [(0, 65535)] if proto_all else [(_or(props.get("fromPort"), 0), _or(props.get("toPort"), 65535))]
            return [f"ports {p} open to the world" for p in _non_web(ports)]
    if type_ == "aws:ec2/securityGroup:SecurityGroup":
        return [f"ports {p} open to the world" for rule in props.get("ingress") or []
                if any(_is_world(c) for c in (rule.get("cidrBlocks") or []) + (rule.get("ipv6CidrBlocks") or []))
                for p in _non_web([(_or(rule.get("fromPort"), 0), _or(rule.get("toPort"), 65535))])]
    if type_ == "gcp:compute/firewall:Firewall" and props.get("direction", "INGRESS") == "INGRESS":
        sources = props.get("sourceRanges") or []
        if (not sources and not props.get("sourceTags")) or any(_is_world(s) for s in sources):
            ports = [_port_range(p) for a in props.get("allows") or [] for p in (a.get("ports") or ["*"])]
            return [f"ports {p} open to the world" for p in _non_web(ports)]
    if type_ == "azure-native:network:NetworkSecurityGroup":
        return [v for rule in props.get("securityRules") or [] for v in _azure_rule(rule)]
    if type_ == "azure-native:network:SecurityRule":
        return _azure_rule(props)
    return []


def _azure_rule(rule: Props) -> list[str]:
    if rule.get("direction") != "Inbound" or rule.get("access") != "Allow":
        return []
    sources = [rule.get("sourceAddressPrefix")] + list(rule.get("sourceAddressPrefixes") or [])
    if not any(_is_world(s) for s in sources if s is not None):
        return []
    ranges = [rule.get("destinationPortRange")] + list(rule.get("destinationPortRanges") or [])
    ports = [_port_range(r) for r in ranges if r is not None]
    return [f"rule {rule.get('name')!r}: ports {p} open to the world" for p in _non_web(ports)]


# ---- buckets versioned (a stack check: AWS and Azure versioning are separate resources) ---------

def unversioned_buckets(resources: list[tuple[str, str, Props]]) -> list[str]:
    """Violations over (type, name, props) of a whole stack: each bucket needs versioning on."""
    versioned = {p.get("bucket") for t, _, p in resources if t == "aws:s3/bucketVersioning:BucketVersioning"
                 and (p.get("versioningConfiguration") or {}).get("status") == "Enabled"}
    versioned |= {p.get("accountName") for t, _, p in resources
                  if t == "azure-native:storage:BlobServiceProperties" and p.get("isVersioningEnabled")}
    problems = []
    for type_, name, props in resources:
        if type_ == "aws:s3/bucket:Bucket" and props.get("bucket") not in versioned:
            problems.append(f"S3 bucket {name} has no enabled BucketVersioning")
        if type_ == "gcp:storage/bucket:Bucket" and not (props.get("versioning") or {}).get("enabled"):
            problems.append(f"GCS bucket {name} has versioning off")
        if type_ == "azure-native:storage:StorageAccount" and props.get("name") not in versioned:
            problems.append(f"storage account {name} has no blob versioning")
    return problems


# ---- disks encrypted ----------------------------------------------------------------------------

def unencrypted_disks(type_: str, props: Props) -> list[str]:
    """AWS disks must set encryption; Azure must name it. GCP always encrypts and has no switch."""
    if type_ == "aws:ebs/volume:Volume" and not props.get("encrypted"):
        return ["EBS volume is not encrypted"]
    if type_ == "aws:ec2/instance:Instance" and not (props.get("rootBlockDevice") or {}).get("encrypted"):
        return ["EC2 root volume is not encrypted"]
    if type_ == "azure-native:compute:Disk" and not (props.get("encryption") or {}).get("type"):
        return ["managed disk has no encryption type"]
    return []


# ---- backups not deletable by the writer credentials --------------------------------------------

def deleting_writers(type_: str, props: Props) -> list[str]:
    """Writer credentials may add, read and delete current objects, never delete a version,
    shorten retention, unversion or change the bucket."""
    if type_ == "aws:iam/userPolicy:UserPolicy":
        return _s3_deletes(props.get("policy"))
    if type_ == "gcp:storage/bucketIAMMember:BucketIAMMember" and props.get("role") in GCS_DELETING_ROLES:
        return [f"{props.get('member')} gets {props.get('role')}, which can delete objects"]
    if type_ == "failover:azure:SasCredential" and SAS_DELETING & set(str(props.get("permissions", ""))):
        return [f"SAS permissions {props.get('permissions')!r} include deleting versions or immutability (x/y/i)"]
    if type_ in ("aws:s3/bucket:Bucket", "gcp:storage/bucket:Bucket") and props.get("forceDestroy"):
        return ["bucket has forceDestroy, so `pulumi destroy` deletes its objects"]
    return []


def _s3_deletes(policy: Any) -> list[str]:
    document = json.loads(policy) if isinstance(policy, str) else policy or {}
    problems = []
    for statement in document.get("Statement", []):
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if statement.get("Effect") == "Allow":
            problems += [f"writer policy allows {a}" for a in actions
                         if a == "*" or any(a.lower().startswith(d) for d in S3_DELETING)]
    return problems


RESOURCE_CHECKS: dict[str, tuple[str, Callable[[str, Props], list[str]]]] = {
    "no-database-port-open-to-world": ("Only HTTP(S) may be open to 0.0.0.0/0; never PostgreSQL.", world_open_ports),
    "disks-encrypted": ("Database and root disks are encrypted at rest.", unencrypted_disks),
    "backups-not-deletable-by-writers": ("Append-only writer credentials cannot delete backups.", deleting_writers),
}
STACK_CHECKS = {"buckets-versioned": ("Every bucket keeps object versions.", unversioned_buckets)}


def violations(resources: list[tuple[str, str, Props]]) -> dict[str, list[str]]:
    """Every policy over a stack's (type, name, props): {policy name: ['name: message', ...]}."""
    found = {policy: [f"{name}: {m}" for type_, name, props in resources for m in check(type_, props)]
             for policy, (_, check) in RESOURCE_CHECKS.items()}
    found.update({policy: check(resources) for policy, (_, check) in STACK_CHECKS.items()})
    return found


def known(value: Any) -> Any:
    """Props as plain dicts and lists in which a value unknown at preview (pulumi-policy raises
    UnknownValueError when it is read) is None: a check treats it as not set, and every other
    value is still checked. Reading the props whole (`dict(args.props)`) raised at the first
    unknown value, so a preview that also created, say, a security group got "can't run policy
    during preview" instead of the violation."""
    from pulumi_policy.proxy import UnknownValueError

    def read(container, key):
        try:
            return known(container[key])
        except UnknownValueError:
            return None

    if isinstance(value, Mapping):
        return {key: read(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [read(value, i) for i in range(len(value))]
    return value


def policies() -> list:
    """The checks as pulumi-policy objects, mandatory: a violation stops `pulumi up`."""
    from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

    def resource_policy(name, description, check):
        def validate(args, report_violation):
            for message in check(args.resource_type, known(args.props)):
                report_violation(message)
        return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                        enforcement_level=EnforcementLevel.MANDATORY)

    def stack_policy(name, description, check):
        def validate(args, report_violation):
            for message in check([(r.resource_type, r.name, known(r.props)) for r in args.resources]):
                report_violation(message)
        return StackValidationPolicy(name=name, description=description, validate=validate,
                                     enforcement_level=EnforcementLevel.MANDATORY)

    return ([resource_policy(n, d, c) for n, (d, c) in RESOURCE_CHECKS.items()]
            + [stack_policy(n, d, c) for n, (d, c) in STACK_CHECKS.items()])

