"""The real infra/__main__.py, run under Pulumi mocks with each real file in stacks/.

Each stack runs in its own subprocess (tests/fixtures/pulumi/mock_run.py), all in parallel.
"""
from __future__ import annotations

import base64

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "pulumi"))
from mock_run import run_stacks  # noqa: E402

from infra.clouds import base, hostkey  # noqa: E402
from infra.sites.contract import EXPORTED_KEYS, SiteOutputs  # noqa: E402
from infra.spec import load_spec  # noqa: E402
from tests.witnesses import WITNESSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "Pulumi.yaml")
STACKS = [site.name for site in SPEC.sites]
EXPECTED_TYPES = {
    "aws": {"aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/securityGroup:SecurityGroup",
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "aws:ec2/eip:Eip",
            "aws:ebs/volume:Volume", "aws:ec2/instance:Instance", "aws:ec2/volumeAttachment:VolumeAttachment",
            "aws:s3/bucket:Bucket", "aws:s3/bucketVersioning:BucketVersioning",
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration",
            "aws:iam/user:User", "aws:iam/userPolicy:UserPolicy", "aws:iam/accessKey:AccessKey"},
    "gcp": {"gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork", "gcp:compute/firewall:Firewall",
            "gcp:compute/address:Address", "gcp:compute/disk:Disk", "gcp:compute/instance:Instance",
            "gcp:storage/bucket:Bucket", "gcp:serviceaccount/account:Account", "gcp:serviceaccount/key:Key",
            "gcp:storage/bucketIAMMember:BucketIAMMember"},
    "azure": {"azure-native:resources:ResourceGroup", "azure-native:network:VirtualNetwork",
              "azure-native:network:Subnet", "azure-native:network:NetworkSecurityGroup",
              "azure-native:network:PublicIPAddress", "azure-native:compute:Disk",
              "azure-native:storage:StorageAccount", "azure-native:storage:BlobServiceProperties",
              "azure-native:storage:BlobContainer", "failover:azure:SasCredential"},
}
VM_TYPES = {"aws": "aws:ec2/instance:Instance", "gcp": "gcp:compute/instance:Instance",
            "azure": "azure-native:compute:VirtualMachine"}
DISK_TYPES = {"aws": ("aws:ebs/volume:Volume", "size"), "gcp": ("gcp:compute/disk:Disk", "size"),
              "azure": ("azure-native:compute:Disk", "diskSizeGB")}
PILOT_AS_PRIMARY = {"failover:site": {**{"cloud": "azure", "region": "northeurope", "storage": "azure",
                                         "admin_cidrs": ["198.51.100.0/24"]}, "role": "primary"}}


def _as(stack: str, role: str) -> dict:
    return {"failover:site": {**yaml_config(stack)["failover:site"], "role": role}}


PINNED = {"aws": "ami-0123456789abcdef0", "gcp": "debian-cloud/debian-12-bookworm-v20261110",
          "azure": "Debian:debian-12:12-gen2:0.20261110.1234"}
# Variants that must leave every VM's user-data as it was: a role change, other peers.
CHANGED = {"aws-as-warm": ("aws", lambda: _as("aws", "warm")),
           "aws-other-peers": ("aws", lambda: {"failover:peer_cidrs": ["192.0.2.7/32", "192.0.2.8/32"]}),
           "aws-other-peer-stacks": ("aws", lambda: {"failover:peer_stacks": ["gcp"]}),
           "gcp-peer-moved": ("gcp", lambda: {"mock:stack_outputs": {
               "example-org/failover/aws": {"db_host": "198.51.100.77"},
               "example-org/failover/azure": {"db_host": "198.51.100.78"}}}),
           "azure-first-deploy": ("azure", lambda: {"failover:first_deploy": True}),
           "gcp-as-primary": ("gcp", lambda: _as("gcp", "primary")),
           "azure-as-warm": ("azure", lambda: _as("azure", "warm")),
           "azure-as-primary": ("azure", lambda: PILOT_AS_PRIMARY)}  # the pilot-light's failover


@pytest.fixture(scope="module")
def runs():
    variants = {name: (name, {}) for name in STACKS} | {"azure-scaled": ("azure", PILOT_AS_PRIMARY)}
    variants |= {label: (stack, make()) for label, (stack, make) in CHANGED.items()}
    variants |= {f"{stack}-pinned": (stack, {**(PILOT_AS_PRIMARY if stack == "azure" else {}), "failover:image": image})
                 for stack, image in PINNED.items()}  # azure as primary: its pilot-light runs no VM yet
    variants |= {f"{stack}-with-witnesses": (stack, {"failover:witnesses": WITNESSES}) for stack in STACKS}
    return run_stacks(variants)


def of(run: dict, type_: str) -> list[dict]:
    return [r for r in run["resources"] if r["type"] == type_]


def test_the_stacks_are_one_per_cloud_with_every_role():
    assert {s.cloud: s.role for s in SPEC.sites} == {"aws": "primary", "gcp": "warm", "azure": "pilot-light"}


@pytest.mark.parametrize("stack", STACKS)
def test_each_cloud_declares_its_resource_types(runs, stack):
    types = {r["type"] for r in runs[stack]["resources"]}
    assert EXPECTED_TYPES[stack] <= types
    assert not {t for t in types if "V2" in t.split(":")[-1]}, "deprecated *V2 classes used"


@pytest.mark.parametrize("stack", STACKS + ["azure-scaled"])
def test_every_resource_that_takes_tags_or_labels_has_site_role_and_managed_by(runs, stack):
    """GCP's `tags` are network tags, so GCP resources carry `labels`; AWS and Azure carry `tags`.
    What a resource takes is read from its SDK class in the mock run, not from the program."""
    site = stack.split("-")[0]
    role = "primary" if stack == "azure-scaled" else {s.name: s.role for s in SPEC.sites}[site]
    field = "labels" if site == "gcp" else "tags"
    taggable = [r for r in runs[stack]["resources"] if field in r["takes"]]
    assert len(taggable) >= 5, [r["type"] for r in runs[stack]["resources"]]
    for resource in taggable:
        assert resource["inputs"].get(field) == {"site": site, "role": role, "managed-by": "failover"}, \
            (resource["type"], resource["name"], resource["inputs"].get(field))
    kinds = {r["type"].split(":")[-1] for r in taggable}
    assert {"Disk", "Volume", "Bucket", "StorageAccount"} & kinds  # the data disk and the stores


def test_exports_are_the_contract_keys_on_every_cloud(runs):
    keys = {stack: tuple(runs[stack]["outputs"]) for stack in STACKS}
    # The public host key is exported beside SiteOutputs; the Inventory reads the contract keys only.
    assert all(set(k) == set(EXPORTED_KEYS) | {hostkey.OUTPUT} for k in keys.values()), keys
    for stack in STACKS:
        outputs = SiteOutputs.from_dict(runs[stack]["outputs"], where=stack)
        assert outputs.site == stack and outputs.db_port == SPEC.database.port
        assert runs[stack]["secrets"] == ["writer_credentials"]
        assert outputs.writer_credentials and all(outputs.writer_credentials.values())
        assert outputs.repository.options["path"] == base.PGBACKREST_PATH


@pytest.mark.parametrize("stack", STACKS)
def test_vm_count_follows_role_and_disk_is_kept(runs, stack):
    site = SPEC.site(stack)
    vms = of(runs[stack], VM_TYPES[stack])
    # A pilot-light site runs its database VM alone (the WAL receiver), at the small size.
    expected = 1 if site.role == "pilot-light" else SPEC.app.replicas + 1
    assert len(vms) == expected
    assert any(vm["name"] == f"{stack}-db" for vm in vms)
    if site.role == "pilot-light":
        assert vms[0]["inputs"]["hardwareProfile"]["vmSize"] == base.MACHINE_TYPES["azure"]["small"]
        assert vms[0]["inputs"]["storageProfile"]["dataDisks"][0]["createOption"] == "Attach"
    disk_type, size_key = DISK_TYPES[stack]
    disks = of(runs[stack], disk_type)
    assert [d["inputs"][size_key] for d in disks] == [SPEC.database.disk_gb]
    assert all(d["protect"] for d in disks), "the database disk must be protected from deletion"
    # Static addresses exist even at size 0, so the inventory and DNS plan are complete.
    assert len(runs[stack]["outputs"]["ssh_hosts"]) == SPEC.app.replicas + 1


def test_pilot_light_scales_up_with_one_config_change(runs):
    scaled = runs["azure-scaled"]
    vms = of(scaled, VM_TYPES["azure"])
    assert len(vms) == SPEC.app.replicas + 1
    db = next(v for v in vms if v["name"] == "azure-db")
    assert db["inputs"]["hardwareProfile"]["vmSize"] == base.MACHINE_TYPES["azure"]["large"]
    assert db["inputs"]["storageProfile"]["dataDisks"][0]["createOption"] == "Attach"
    pilot_types = {r["type"] for r in runs["azure"]["resources"]} | {VM_TYPES["azure"],
                                                                     "azure-native:network:NetworkInterface"}
    assert {r["type"] for r in scaled["resources"]} == pilot_types, "scaling must not change the shape"


def test_machine_sizes_by_role(runs):
    aws_db = next(r for r in of(runs["aws"], VM_TYPES["aws"]) if r["name"] == "aws-db")
    gcp_app = next(r for r in of(runs["gcp"], VM_TYPES["gcp"]) if r["name"] == "gcp-app-0")
    assert aws_db["inputs"]["instanceType"] == "m6i.large"
    assert gcp_app["inputs"]["machineType"] == "e2-small"  # warm: small app, full-size database


def test_aws_encryption_versioning_and_lock(runs):
    run = runs["aws"]
    assert all(v["inputs"]["encrypted"] for v in of(run, "aws:ebs/volume:Volume"))
    assert all(i["inputs"]["rootBlockDevice"]["encrypted"] for i in of(run, VM_TYPES["aws"]))
    buckets = of(run, "aws:s3/bucket:Bucket")
    assert len(buckets) == 2 and all(b["protect"] and not b["inputs"].get("forceDestroy") for b in buckets)
    assert {v["inputs"]["versioningConfiguration"]["status"] for v in of(run, "aws:s3/bucketVersioning:BucketVersioning")} == {"Enabled"}
    assert len(of(run, "aws:s3/bucketVersioning:BucketVersioning")) == 2
    lock = of(run, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration")
    assert [lk["inputs"]["bucket"] for lk in lock] == [run["outputs"]["repository"]["options"]["s3-bucket"]]
    policy = json.loads(of(run, "aws:iam/userPolicy:UserPolicy")[0]["inputs"]["policy"])
    allowed = [a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]]
    denied = [a for s in policy["Statement"] if s["Effect"] == "Deny" for a in s["Action"]]
    # pgBackRest overwrites its info files and expires: the current version may go, no version may.
    assert {"s3:PutObject", "s3:DeleteObject"} <= set(allowed) and "s3:DeleteObjectVersion" not in allowed
    assert {"s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutLifecycleConfiguration"} <= set(denied)
    cleanup = of(run, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert sorted(c["inputs"]["bucket"] for c in cleanup) == sorted(b["inputs"].get("bucket") or b["state"]["bucket"]
                                                                    for b in buckets)
    retention = lock[0]["inputs"]["rule"]["defaultRetention"]["days"]
    assert all(c["inputs"]["rules"][0]["noncurrentVersionExpiration"]["noncurrentDays"] >= retention for c in cleanup)


def test_gcp_buckets_and_writer_roles(runs):
    run = runs["gcp"]
    buckets = of(run, "gcp:storage/bucket:Bucket")
    assert len(buckets) == 2 and all(b["inputs"]["versioning"]["enabled"] and b["protect"] for b in buckets)
    roles = {m["inputs"]["role"] for m in of(run, "gcp:storage/bucketIAMMember:BucketIAMMember")}
    # objectCreator cannot overwrite pgBackRest's info files; objectUser can, and soft delete keeps
    # what it deletes or replaces restorable by the owner.
    assert roles == {"roles/storage.objectUser"}
    for bucket in buckets:
        assert bucket["inputs"]["softDeletePolicy"]["retentionDurationSeconds"] >= 7 * 86400
        rule = bucket["inputs"]["lifecycleRules"][0]
        assert rule["action"]["type"] == "Delete" and rule["condition"]["withState"] == "ARCHIVED"


def test_azure_storage_versioned_immutable_and_sas_append_only(runs):
    run = runs["azure"]
    assert all(p["inputs"]["isVersioningEnabled"] for p in of(run, "azure-native:storage:BlobServiceProperties"))
    accounts = {a["name"]: a["inputs"] for a in of(run, "azure-native:storage:StorageAccount")}
    assert accounts["azurebackups"]["immutableStorageWithVersioning"]["enabled"] is True
    assert "immutableStorageWithVersioning" not in accounts["azuremedia"]
    # d deletes the current blob (kept as a previous version); never x, y or i.
    assert {s["inputs"]["permissions"] for s in of(run, "failover:azure:SasCredential")} == {"rcwdl"}
    cleanup = of(run, "azure-native:storage:ManagementPolicy")
    assert len(cleanup) == 2 and all(c["inputs"]["policy"]["rules"][0]["definition"]["actions"]["version"]["delete"]
                                     for c in cleanup)
    assert all(d["inputs"]["encryption"]["type"] for d in of(run, "azure-native:compute:Disk"))


def _world_sources(run: dict, stack: str) -> dict[int, set[str]]:
    """Every inbound port of the stack -> its sources, read from the cloud's own resources."""
    found: dict[int, set[str]] = {}
    if stack == "aws":
        for r in of(run, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
            found.setdefault(r["inputs"]["fromPort"], set()).add(r["inputs"]["cidrIpv4"])
    if stack == "gcp":
        for r in of(run, "gcp:compute/firewall:Firewall"):
            for allow in r["inputs"]["allows"]:
                for port in allow["ports"]:
                    found.setdefault(int(port), set()).update(r["inputs"]["sourceRanges"])
    if stack == "azure":
        for nsg in of(run, "azure-native:network:NetworkSecurityGroup"):
            for rule in nsg["inputs"]["securityRules"]:
                if rule["access"] == "Allow":
                    found.setdefault(int(rule["destinationPortRange"]), set()).update(rule["sourceAddressPrefixes"])
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_firewall_sources(runs, stack):
    stack_file = yaml_config(stack)
    ports = _world_sources(runs[stack], stack)
    app_subnet = base.subnets(stack_file["failover:network_cidr"]).app
    assert ports[80] == ports[443] == {"0.0.0.0/0"}
    assert ports[22] == set(stack_file["failover:site"]["admin_cidrs"])
    peers = {f"{recorded_db_host(peer)}/32" for peer in stack_file["failover:peer_stacks"]}
    assert peers and stack not in stack_file["failover:peer_stacks"]
    assert ports[SPEC.database.port] == peers | set(stack_file.get("failover:peer_cidrs", ())) | {app_subnet}
    assert set(ports) == {22, 80, 443, SPEC.database.port}, "nothing else may be open"


def recorded_db_host(stack: str) -> str:
    """What the mocks' StackReference to `stack` reads: its recorded outputs."""
    return json.loads((ROOT / "tests" / "fixtures" / "pulumi" / "outputs" / f"{stack}.json").read_text())["db_host"]


def yaml_config(stack: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def user_data(stack: str, vm: dict) -> str:
    inputs = vm["inputs"]
    if stack == "azure":
        return base64.b64decode(inputs["osProfile"]["customData"]).decode()
    return inputs["userData"] if stack == "aws" else inputs["metadata"]["user-data"]


@pytest.mark.parametrize("label", CHANGED)
def test_a_role_or_peer_change_leaves_every_vms_user_data_byte_identical(runs, label):
    """A user-data change stops and starts an AWS VM, and Azure cannot change customData: the
    role and the peers are the engine's (`sites protect`), never the VM's boot data."""
    stack = CHANGED[label][0]
    before, after = runs[stack], runs[label]
    vms_before = {vm["name"]: user_data(stack, vm) for vm in of(before, VM_TYPES[stack])}
    vms_after = {vm["name"]: user_data(stack, vm) for vm in of(after, VM_TYPES[stack])}
    assert vms_before and vms_after
    for name in vms_before.keys() & vms_after.keys():  # a role change may add or remove app VMs
        assert vms_after[name] == vms_before[name], f"{label}: {name}'s user-data changed"
    assert f"{stack}-db" in vms_before.keys() & vms_after.keys()


def test_gcp_vms_run_the_startup_script_that_brings_cloud_init_to_debian():
    """GCE's Debian image has no cloud-init: without the startup-script the user-data would never run."""
    runs = run_stacks({"gcp": ("gcp", {}), "gcp-as-primary": ("gcp", _as("gcp", "primary"))})
    script = (ROOT / "infra" / "clouds" / "gce-startup.sh").read_text()
    for run in runs.values():
        vms = of(run, VM_TYPES["gcp"])
        assert vms and all(vm["inputs"]["metadata"]["startup-script"] == script for vm in vms)
        assert all(vm["inputs"]["metadata"]["user-data"].startswith("#cloud-config") for vm in vms)
    assert "apt-get install -y -q cloud-init" in script and "cloud-init modules --mode=final" in script


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_pinned_in_config_or_never_replace_a_running_vm(runs, stack):
    vms = [vm for vm in of(runs["azure-scaled" if stack == "azure" else stack], VM_TYPES[stack])]
    pinned = of(runs[f"{stack}-pinned"], VM_TYPES[stack])
    if stack == "aws":
        assert all(vm["ignore_changes"] == ["ami"] for vm in vms)  # Debian's newest AMI at creation only
        assert all(vm["inputs"]["ami"] == PINNED["aws"] and not vm["ignore_changes"] for vm in pinned)
    elif stack == "gcp":
        assert all(vm["ignore_changes"] == ["bootDisk.initializeParams.image"] for vm in vms)
        assert all(vm["inputs"]["bootDisk"]["initializeParams"]["image"] == PINNED["gcp"] for vm in pinned)
        # A role change resizes the VM, which GCE applies only to a stopped instance.
        assert all(vm["inputs"]["allowStoppingForUpdate"] is True for vm in vms + pinned)
    else:
        assert all(vm["inputs"]["storageProfile"]["imageReference"]["version"] == "latest" for vm in vms)
        assert pinned and all(vm["inputs"]["storageProfile"]["imageReference"] == {
            "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "0.20261110.1234"} for vm in pinned)
    assert vms


@pytest.mark.parametrize("stack", STACKS)
def test_cloud_init_is_the_same_file_everywhere(runs, stack):
    scaled = runs["azure-scaled"] if stack == "azure" else runs[stack]
    vm = next(r for r in of(scaled, VM_TYPES[stack]) if r["name"].endswith("-db"))
    data = user_data(stack, vm)
    assert data.startswith("#cloud-config") and "pgbackrest" in data and "rclone" in data
    assert f"postgresql-{SPEC.database.version}" in data and "FAILOVER_TIERS=db" in data
    assert "{{" not in data


@pytest.mark.parametrize("stack", STACKS)
def test_witness_stores_in_the_spec_leave_every_sites_stack_as_it_was(runs, stack, tmp_path):
    """Witnesses are buckets at further providers: no site's stack creates, reads or exports them,
    and the spec that declares them still loads with the real stack files."""
    plain, witnessed = runs[stack], runs[f"{stack}-with-witnesses"]
    def shape(run: dict) -> list[tuple[str, str, str]]:  # in any order: Pulumi registers concurrently
        return sorted((r["type"], r["name"], json.dumps(r["inputs"], sort_keys=True)) for r in run["resources"])

    assert shape(witnessed) == shape(plain)
    assert witnessed["outputs"] == plain["outputs"] and witnessed["secrets"] == plain["secrets"]
    assert not witnessed["warnings"] or witnessed["warnings"] == plain["warnings"]
    data = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    data["config"]["witnesses"] = {"value": WITNESSES}
    (tmp_path / "Pulumi.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "Pulumi.yaml", ROOT / "stacks")
    assert [w.name for w in spec.witnesses] == sorted(WITNESSES) and spec.sites == SPEC.sites
