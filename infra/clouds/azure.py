"""The site on Azure: VNet, NSGs, VMs + managed data disk, static public IPs, two storage accounts
(media; backups with version-level immutability), and append-only SAS tokens.

Azure encrypts managed disks and blobs at rest with platform keys; it is set explicitly here so
the policy pack can check it. Each "bucket" is a storage account with one container, because
the immutability default applies per account and must not lock media for as long as backups.
"""
from __future__ import annotations

import base64
from datetime import date

import pulumi
import pulumi_azure_native.compute as compute
import pulumi_azure_native.network as network
import pulumi_azure_native.resources as resources
import pulumi_azure_native.storage as storage

from infra.clouds import base, permissions, stores
from infra.clouds.base import SiteArgs, name

DEBIAN_IMAGE: compute.ImageReferenceArgsDict = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                                                "version": "latest"}
DATA_DEVICE = "/dev/disk/azure/scsi1/lun0"
PLATFORM_KEY: compute.EncryptionArgsDict = {"type": compute.EncryptionType.ENCRYPTION_AT_REST_WITH_PLATFORM_KEY}
DENY_ALL_PRIORITY = 4000  # above our rules, below Azure's defaults that allow the whole VNet


class SasCredential(pulumi.ComponentResource):
    """A service SAS for one container. A component so CrossGuard sees its permissions."""

    def __init__(self, resource_name: str, account, group, container: str, permissions: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("failover:azure:SasCredential", resource_name,
                         {"permissions": permissions, "container": container}, opts)
        # Rotated yearly: `pulumi up` after New Year issues new tokens (a SAS cannot be revoked alone).
        expiry = f"{date.today().year + 1}-12-31T00:00:00Z"
        sas = storage.list_storage_account_service_sas_output(
            account_name=account.name, resource_group_name=group.name,
            canonicalized_resource=pulumi.Output.concat("/blob/", account.name, "/", container),
            resource="c", permissions=permissions, protocols=storage.HttpProtocol.HTTPS,
            shared_access_expiry_time=expiry,
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.token = pulumi.Output.secret(sas.service_sas_token)
        self.register_outputs({"permissions": permissions})


class AzureSite(base.SiteComponent):
    def __init__(self, resource_name: str, args: SiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("failover:clouds:AzureSite", resource_name, args, opts)
        self.group = resources.ResourceGroup(name(args, "rg"), location=args.region, opts=self.child())
        subnet_ids = self._network()
        app_ips = [self._address(f"app-{i}") for i in range(args.app.replicas)]
        db_ip = self._address("db")
        disk = compute.Disk(name(args, "pgdata"), resource_group_name=self.group.name, location=args.region,
                            disk_size_gb=args.database.disk_gb, creation_data={"create_option": "Empty"},
                            sku={"name": "Premium_LRS"}, encryption=PLATFORM_KEY, opts=self.child(protect=True))
        self._machines(subnet_ids, app_ips, db_ip, disk)
        media, backups = self._bucket("media"), self._bucket("backups", immutable=True)
        credentials = self._writer(media, backups)
        self.finish([ip.ip_address for ip in app_ips], db_ip.ip_address,
                    *stores.azure(backups.name, "backups", media.name, "media"), credentials)

    def _network(self) -> dict:
        args, group = self.args, self.group
        ranges = base.subnets(args.network_cidr)
        vnet = network.VirtualNetwork(name(args, "vnet"), resource_group_name=group.name, location=args.region,
                                      address_space={"address_prefixes": [args.network_cidr]}, opts=self.child())
        subnet_ids = {}
        for tier in base.TIERS:
            nsg = network.NetworkSecurityGroup(name(args, f"{tier}-nsg"), resource_group_name=group.name,
                                               location=args.region, security_rules=security_rules(args, tier),
                                               opts=self.child())
            subnet_ids[tier] = network.Subnet(
                name(args, f"{tier}-subnet"), resource_group_name=group.name, virtual_network_name=vnet.name,
                address_prefix=getattr(ranges, tier), network_security_group={"id": nsg.id},
                opts=self.child()).id
        return subnet_ids

    def _address(self, part: str) -> network.PublicIPAddress:
        return network.PublicIPAddress(name(self.args, f"{part}-ip"), resource_group_name=self.group.name,
                                       location=self.args.region, public_ip_allocation_method="Static",
                                       sku={"name": "Standard"}, opts=self.child())

    def _machines(self, subnet_ids, app_ips, db_ip, disk) -> None:
        count = base.capacity(self.args.role, self.args.app)
        for i in range(count["app"]):
            self._vm(f"app-{i}", "app", subnet_ids, app_ips[i], [])
        if count["db"]:
            self._vm("db", "db", subnet_ids, db_ip,
                     [{"lun": 0, "create_option": "Attach", "managed_disk": {"id": disk.id}}])

    def _vm(self, part: str, tier: str, subnet_ids, address, disks) -> compute.VirtualMachine:
        args = self.args
        nic = network.NetworkInterface(
            name(args, f"{part}-nic"), resource_group_name=self.group.name, location=args.region,
            ip_configurations=[{"name": "primary", "subnet": {"id": subnet_ids[tier]},
                                "public_ip_address": {"id": address.id}}], opts=self.child())
        custom_data = self.user_data(tier, DATA_DEVICE).apply(lambda data: base64.b64encode(data.encode()).decode())
        return compute.VirtualMachine(
            name(args, part), resource_group_name=self.group.name, location=args.region,
            hardware_profile={"vm_size": base.machine_type(args, tier)},
            network_profile={"network_interfaces": [{"id": nic.id, "primary": True}]},
            storage_profile={"image_reference": image_reference(args.image), "data_disks": disks,
                             "os_disk": {"create_option": "FromImage", "disk_size_gb": 30,
                                         "managed_disk": {"storage_account_type": "Premium_LRS"}}},
            os_profile={"computer_name": name(args, part), "admin_username": args.ssh_user,
                        "custom_data": custom_data, "linux_configuration": {
                            "disable_password_authentication": True,
                            "ssh": {"public_keys": [{"path": f"/home/{args.ssh_user}/.ssh/authorized_keys",
                                                     "key_data": args.ssh_public_key}]}}},
            opts=self.child())

    def _bucket(self, part: str, immutable: bool = False) -> storage.StorageAccount:
        args = self.args
        lock: storage.ImmutableStorageAccountArgsDict | None = {"enabled": True, "immutability_policy": {
            "immutability_period_since_creation_in_days": args.backup_retention_days,
            "state": "Unlocked", "allow_protected_append_writes": False}} if immutable else None
        account = storage.StorageAccount(
            f"{args.site}{part}".replace("-", ""), resource_group_name=self.group.name, location=args.region,
            kind="StorageV2", sku={"name": "Standard_LRS"}, allow_blob_public_access=False,
            enable_https_traffic_only=True, minimum_tls_version="TLS1_2",
            encryption={"key_source": "Microsoft.Storage", "services": {"blob": {"enabled": True, "key_type": "Account"}}},
            immutable_storage_with_versioning=lock, opts=self.child(protect=True))
        storage.BlobServiceProperties(
            name(args, part), account_name=account.name, resource_group_name=self.group.name,
            blob_services_name="default", is_versioning_enabled=True,
            delete_retention_policy={"enabled": True, "days": args.backup_retention_days},
            container_delete_retention_policy={"enabled": True, "days": args.backup_retention_days},
            opts=self.child())
        # The owner's cleanup: a previous version goes once it is older than the retention.
        storage.ManagementPolicy(
            name(args, part), account_name=account.name, resource_group_name=self.group.name,
            management_policy_name="default",
            policy={"rules": [{"name": "expire-earlier-versions", "type": "Lifecycle", "enabled": True,
                               "definition": {"filters": {"blob_types": ["blockBlob"]}, "actions": {"version": {
                                   "delete": {"days_after_creation_greater_than": args.backup_retention_days}}}}}]},
            opts=self.child())
        storage.BlobContainer(name(args, part), account_name=account.name, resource_group_name=self.group.name,
                              container_name=part, public_access=storage.PublicAccess.NONE, opts=self.child())
        return account

    def _writer(self, media, backups) -> pulumi.Output:
        tokens = {part: SasCredential(name(self.args, f"{part}-writer"), account, self.group, part,
                                      permissions.AZURE_SAS_PERMISSIONS, opts=self.child()).token
                  for part, account in (("media", media), ("backups", backups))}
        # azure-key is pgBackRest's option for the backups SAS; rclone's azureblob takes media-sas.
        return pulumi.Output.all(tokens["backups"], tokens["media"]).apply(
            lambda t: {"azure-key": t[0], "media-sas": t[1]})


def image_reference(urn: str) -> compute.ImageReferenceArgsDict:
    """failover:image as an Azure URN publisher:offer:sku:version, else Debian 12's `latest`
    (resolved when the VM is created; the input stays `latest`, so a newer image changes nothing)."""
    if not urn:
        return DEBIAN_IMAGE
    publisher, offer, sku, version = urn.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def security_rules(args: SiteArgs, tier: str) -> list[network.SecurityRuleArgsDict]:
    """The tier's allow rules from the shared plan, then a deny-all so nothing else gets in."""
    rules: list[network.SecurityRuleArgsDict] = [{"name": rule.name, "priority": 100 + i * 10, "direction": "Inbound", "access": "Allow",
              "protocol": "Tcp", "source_address_prefixes": list(rule.sources), "source_port_range": "*",
              "destination_address_prefix": "*", "destination_port_range": str(rule.port),
              "description": rule.description}
             for i, rule in enumerate(r for r in base.firewall_rules(args) if r.tier == tier)]
    rules.append({"name": "deny-other-inbound", "priority": DENY_ALL_PRIORITY, "direction": "Inbound",
                  "access": "Deny", "protocol": "*", "source_address_prefix": "*", "source_port_range": "*",
                  "destination_address_prefix": "*", "destination_port_range": "*"})
    return rules
