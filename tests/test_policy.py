"""The CrossGuard policies, called directly on the resources recorded by the real program under mocks."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "pulumi"))
from mock_run import run_stacks  # noqa: E402

from infra import policy  # noqa: E402
from infra.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(ROOT / "Pulumi.yaml")
STACKS = [site.name for site in SPEC.sites]
# The deliberately unsafe config: the database port open to the whole internet.
UNSAFE = {"failover:peer_cidrs": ["0.0.0.0/0"]}


@pytest.fixture(scope="module")
def runs():
    variants = {name: (name, {}) for name in STACKS}
    variants |= {f"{name}-unsafe": (name, UNSAFE) for name in STACKS}
    return run_stacks(variants)


def recorded(run: dict) -> list[tuple[str, str, dict]]:
    return [(r["type"], r["name"], r["state"]) for r in run["resources"]]


@pytest.mark.parametrize("stack", STACKS)
def test_every_policy_passes_on_the_real_stacks(runs, stack):
    found = policy.violations(recorded(runs[stack]))
    assert set(found) == {"no-database-port-open-to-world", "disks-encrypted",
                          "backups-not-deletable-by-writers", "buckets-versioned"}
    assert found == {name: [] for name in found}


@pytest.mark.parametrize("stack", STACKS)
def test_database_open_to_the_world_fails_on_every_cloud(runs, stack):
    found = policy.violations(recorded(runs[f"{stack}-unsafe"]))
    port = str(SPEC.database.port)
    assert found["no-database-port-open-to-world"], found
    assert all(port in message for message in found["no-database-port-open-to-world"])


def test_pulumi_policy_wrappers_report_through_report_violation(runs):
    """The pulumi-policy objects call the same checks (as `pulumi preview --policy-pack` would)."""
    by_name = {p.name: p for p in policy.policies()}
    rule = next(r for r in runs["aws-unsafe"]["resources"]
                if r["type"].endswith("SecurityGroupIngressRule") and r["state"]["cidrIpv4"] == "0.0.0.0/0"
                and r["state"]["fromPort"] not in (80, 443))
    reported = []
    args = SimpleNamespace(resource_type=rule["type"], props=rule["state"])
    by_name["no-database-port-open-to-world"].validate(args, reported.append)
    assert reported
    stack_args = SimpleNamespace(resources=[SimpleNamespace(resource_type=t, name=n, props=p)
                                            for t, n, p in recorded(runs["aws"]) if t != "aws:s3/bucketVersioning:BucketVersioning"])
    reported = []
    by_name["buckets-versioned"].validate(stack_args, reported.append)
    assert len(reported) == 2


def test_a_violation_is_reported_during_a_preview_with_unknown_values():
    """At preview, values computed by the cloud (a new security group's ID, tags from an output)
    are unknown; pulumi-policy raises when one is read. The wrapper still reports the violation
    from the values that are known, and an unknown port counts as the whole range."""
    from pulumi_policy.proxy import (UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE, UnknownValueError,
                                     unknown_checking_proxy)

    by_name = {p.name: p for p in policy.policies()}
    props = unknown_checking_proxy({"securityGroupId": UNKNOWN_STRING_VALUE, "cidrIpv4": "0.0.0.0/0",
                                    "ipProtocol": "tcp", "fromPort": 5432, "toPort": 5432,
                                    "tags": {"site": UNKNOWN_STRING_VALUE, "role": "primary"}})
    with pytest.raises(UnknownValueError) as error:
        dict(props)  # what the wrapper used to do
    assert "can't be known during preview" in error.value.message
    reported = []
    by_name["no-database-port-open-to-world"].validate(
        SimpleNamespace(resource_type="aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", props=props),
        reported.append)
    assert reported == ["ports 5432 open to the world"]
    unknown_port = unknown_checking_proxy({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp",
                                           "fromPort": UNKNOWN_NUMBER_VALUE, "toPort": UNKNOWN_NUMBER_VALUE})
    reported = []
    by_name["no-database-port-open-to-world"].validate(
        SimpleNamespace(resource_type="aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                        props=unknown_port), reported.append)
    assert reported == ["ports 0-65535 open to the world"]
    fine = unknown_checking_proxy({"cidrIpv4": UNKNOWN_STRING_VALUE, "fromPort": 5432, "toPort": 5432})
    reported = []
    by_name["no-database-port-open-to-world"].validate(
        SimpleNamespace(resource_type="aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", props=fine),
        reported.append)
    assert reported == []  # a source not known yet is not the world
    disk = unknown_checking_proxy({"encrypted": False, "availabilityZone": UNKNOWN_STRING_VALUE})
    reported = []
    by_name["disks-encrypted"].validate(SimpleNamespace(resource_type="aws:ebs/volume:Volume", props=disk),
                                        reported.append)
    assert reported == ["EBS volume is not encrypted"]


@pytest.mark.parametrize("type_, props", [
    ("aws:ebs/volume:Volume", {"encrypted": False}),
    ("aws:ec2/instance:Instance", {"rootBlockDevice": {}}),
    ("azure-native:compute:Disk", {}),
])
def test_unencrypted_disks_fail(type_, props):
    assert policy.unencrypted_disks(type_, props)


@pytest.mark.parametrize("type_, props", [
    ("aws:iam/userPolicy:UserPolicy", {"policy": '{"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'}),
    ("aws:iam/userPolicy:UserPolicy", {"policy": '{"Statement": [{"Effect": "Allow", "Action": ["s3:DeleteObjectVersion"], "Resource": "*"}]}'}),
    ("gcp:storage/bucketIAMMember:BucketIAMMember", {"role": "roles/storage.objectAdmin", "member": "serviceAccount:w"}),
    ("failover:azure:SasCredential", {"permissions": "rcwdxl"}),
    ("aws:iam/userPolicy:UserPolicy", {"policy": '{"Statement": [{"Effect": "Allow", "Action": ["s3:BypassGovernanceRetention"], "Resource": "*"}]}'}),
    ("aws:s3/bucket:Bucket", {"forceDestroy": True}),
])
def test_deleting_writers_fail(type_, props):
    assert policy.deleting_writers(type_, props)


def test_gcp_versioning_off_and_azure_unversioned_fail():
    problems = policy.unversioned_buckets([
        ("gcp:storage/bucket:Bucket", "media", {"versioning": {"enabled": False}}),
        ("azure-native:storage:StorageAccount", "acct", {"name": "acct"}),
    ])
    assert len(problems) == 2


@pytest.mark.parametrize("type_, props, bad", [
    ("gcp:compute/firewall:Firewall", {"allows": [{"protocol": "tcp", "ports": ["5432"]}]}, True),  # no sources = anywhere
    ("gcp:compute/firewall:Firewall", {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["443"]}]}, False),
    ("azure-native:network:SecurityRule", {"direction": "Inbound", "access": "Allow", "sourceAddressPrefix": "*",
                                           "destinationPortRange": "*"}, True),
    ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", {"cidrIpv4": "0.0.0.0/0", "ipProtocol": "-1"}, True),
    ("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", {"cidrIpv4": "10.0.0.0/8", "fromPort": 5432, "toPort": 5432}, False),
])
def test_world_open_edge_cases(type_, props, bad):
    assert bool(policy.world_open_ports(type_, props)) is bad
