"""The site on GCP: VPC, firewall rules, Compute Engine + persistent disk, static IPs, GCS buckets,
and an append-only service account (objectCreator + objectViewer).

GCP encrypts every disk and object at rest with Google-managed keys; there is no switch to
turn that on. A bucket retention lock would also forbid the overwrites pgBackRest makes to its
info files, so the backups bucket uses versioning plus soft delete instead.
"""
from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_gcp.compute as compute
import pulumi_gcp.serviceaccount as serviceaccount
import pulumi_gcp.storage as storage

from infra.clouds import base, permissions, stores
from infra.clouds.base import SiteArgs, name

DEBIAN_IMAGE = "debian-cloud/debian-12"
DATA_DEVICE = "/dev/disk/by-id/google-pgdata"
STARTUP = Path(__file__).with_name("gce-startup.sh")
# Create and read, never delete: GCS needs storage.objects.delete to overwrite or remove.


class GcpSite(base.SiteComponent):
    def __init__(self, resource_name: str, args: SiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("failover:clouds:GcpSite", resource_name, args, opts)
        self.zone = args.zone or f"{args.region}-b"
        network, subnet_ids = self._network()
        app_ips = [self._address(f"app-{i}") for i in range(args.app.replicas)]
        db_ip = self._address("db")
        disk = compute.Disk(name(args, "pgdata"), zone=self.zone, size=args.database.disk_gb,
                            type="pd-ssd", opts=self.child(protect=True))
        self._machines(subnet_ids, app_ips, db_ip, disk)
        media, backups = self._bucket("media"), self._bucket("backups")
        credentials = self._writer([media, backups])
        self.finish([ip.address for ip in app_ips], db_ip.address, *stores.gcs(backups.name, media.name), credentials)

    def _network(self):
        args = self.args
        ranges = base.subnets(args.network_cidr)
        network = compute.Network(name(args, "vpc"), auto_create_subnetworks=False, opts=self.child())
        subnet_ids = {tier: compute.Subnetwork(name(args, f"{tier}-subnet"), network=network.id,
                                               region=args.region, ip_cidr_range=getattr(ranges, tier),
                                               private_ip_google_access=True, opts=self.child()).id
                      for tier in base.TIERS}
        # A custom VPC denies all ingress by default, so these rules are the only ways in.
        for rule in base.firewall_rules(args):
            compute.Firewall(name(args, rule.name), network=network.id, direction="INGRESS",
                             allows=[{"protocol": "tcp", "ports": [str(rule.port)]}],
                             source_ranges=list(rule.sources), target_tags=[name(args, rule.tier)],
                             description=rule.description, opts=self.child())
        return network, subnet_ids

    def _address(self, part: str) -> compute.Address:
        return compute.Address(name(self.args, f"{part}-ip"), region=self.args.region,
                               address_type="EXTERNAL", opts=self.child())

    def _machines(self, subnet_ids, app_ips, db_ip, disk) -> None:
        count = base.capacity(self.args.role, self.args.app)
        for i in range(count["app"]):
            self._vm(f"app-{i}", "app", subnet_ids, app_ips[i], [])
        if count["db"]:
            self._vm("db", "db", subnet_ids, db_ip, [{"source": disk.self_link, "device_name": "pgdata"}])

    def _vm(self, part: str, tier: str, subnet_ids, address, disks) -> compute.Instance:
        args = self.args
        return compute.Instance(
            name(args, part), zone=self.zone, machine_type=base.machine_type(args, tier),
            boot_disk={"initialize_params": {"image": args.image or DEBIAN_IMAGE, "size": 20}},
            attached_disks=disks, tags=[name(args, tier)],
            network_interfaces=[{"subnetwork": subnet_ids[tier], "access_configs": [{"nat_ip": address.address}]}],
            # Debian's GCE image has no cloud-init: the startup-script installs it, and it reads user-data.
            metadata={"user-data": self.user_data(tier, DATA_DEVICE), "startup-script": STARTUP.read_text()},
            shielded_instance_config={"enable_secure_boot": True, "enable_vtpm": True},
            # A role change resizes the VM (machine_type), which GCE allows only when stopped.
            allow_stopping_for_update=True,
            # The family resolves to Debian's newest image at creation; a pinned one is the change.
            opts=self.child(ignore_changes=None if args.image else ["bootDisk.initializeParams.image"]))

    def _bucket(self, part: str) -> storage.Bucket:
        args = self.args
        # Soft delete keeps deleted or overwritten objects restorable (GCS allows 7 to 90 days).
        keep_days = min(max(args.backup_retention_days, 7), 90)
        return storage.Bucket(
            name(args, part), location=args.region.upper(), force_destroy=False,
            versioning={"enabled": True}, uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            soft_delete_policy={"retention_duration_seconds": keep_days * 86400},
            # The owner's cleanup: a noncurrent generation goes once it is older than the retention.
            lifecycle_rules=[{"action": {"type": "Delete"},
                              "condition": {"days_since_noncurrent_time": args.backup_retention_days,
                                            "with_state": "ARCHIVED"}}],
            opts=self.child(protect=True))

    def _writer(self, buckets: list[storage.Bucket]) -> pulumi.Output:
        args = self.args
        account = serviceaccount.Account(name(args, "writer"), account_id=f"{args.site}-backup-writer",
                                         display_name=f"append-only writer into {args.site}'s buckets",
                                         opts=self.child())
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        for bucket, part in zip(buckets, ("media", "backups")):
            for role in permissions.GCS_WRITER_ROLES:
                storage.BucketIAMMember(name(args, f"{part}-{role.rsplit('.', 1)[1].lower()}"),
                                        bucket=bucket.name, role=role, member=member, opts=self.child())
        key = serviceaccount.Key(name(args, "writer"), service_account_id=account.name, opts=self.child())
        # The base64 JSON key; pgBackRest's gcs-key and rclone's service_account_file want it in a file.
        return key.private_key.apply(lambda k: {"gcs-key-json-base64": k})
