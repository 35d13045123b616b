"""The site on AWS: VPC, security groups, EC2 + EBS, Elastic IPs, S3 buckets, an append-only IAM user.

Uses pulumi-aws 7's split S3 resources (Bucket + BucketVersioning + encryption + object lock),
never the deprecated `*V2` classes.
"""
from __future__ import annotations

import json

import pulumi
import pulumi_aws.ebs as ebs
import pulumi_aws.ec2 as ec2
import pulumi_aws.iam as iam
import pulumi_aws.s3 as s3
import pulumi_aws.vpc as vpc

from infra.clouds import base, permissions, stores
from infra.clouds.base import SiteArgs, name

DEBIAN_OWNER = "136693071363"  # Debian's official AWS account
DEBIAN_IMAGE = "debian-12-amd64-*"
DATA_DEVICE = "/dev/sdf"  # shows up as an NVMe disk on Nitro; cloud-init then finds it by shape

class AwsSite(base.SiteComponent):
    def __init__(self, resource_name: str, args: SiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("failover:clouds:AwsSite", resource_name, args, opts)
        self.zone = args.zone or f"{args.region}a"
        groups, subnet_ids = self._network()
        app_ips = [self._address(f"app-{i}") for i in range(args.app.replicas)]
        db_ip = self._address("db")
        disk = ebs.Volume(name(args, "pgdata"), availability_zone=self.zone, size=args.database.disk_gb,
                          type="gp3", encrypted=True, opts=self.child(protect=True))
        self._machines(groups, subnet_ids, app_ips, db_ip, disk)
        media, backups = self._bucket("media"), self._bucket("backups", lock=True)
        credentials = self._writer([media, backups])
        self.finish([ip.public_ip for ip in app_ips], db_ip.public_ip,
                    *stores.s3(backups.bucket, media.bucket, args.region), credentials)

    def _network(self):
        args = self.args
        ranges = base.subnets(args.network_cidr)
        network = ec2.Vpc(name(args, "vpc"), cidr_block=args.network_cidr, enable_dns_hostnames=True,
                          opts=self.child())
        gateway = ec2.InternetGateway(name(args, "igw"), vpc_id=network.id, opts=self.child())
        routes = ec2.RouteTable(name(args, "routes"), vpc_id=network.id,
                                routes=[{"cidr_block": base.WORLD, "gateway_id": gateway.id}], opts=self.child())
        subnet_ids = {}
        for tier in base.TIERS:
            # Only the app subnet hands out public IPs; the database gets its one static address.
            subnet = ec2.Subnet(name(args, f"{tier}-subnet"), vpc_id=network.id, cidr_block=getattr(ranges, tier),
                                availability_zone=self.zone, map_public_ip_on_launch=tier == "app",
                                opts=self.child())
            ec2.RouteTableAssociation(name(args, f"{tier}-routes"), subnet_id=subnet.id,
                                      route_table_id=routes.id, opts=self.child())
            subnet_ids[tier] = subnet.id
        return self._firewall(network), subnet_ids

    def _firewall(self, network: ec2.Vpc) -> dict[str, ec2.SecurityGroup]:
        args = self.args
        groups = {tier: ec2.SecurityGroup(name(args, f"{tier}-sg"), vpc_id=network.id,
                                          description=f"{args.site} {tier} VMs", opts=self.child())
                  for tier in base.TIERS}
        for rule in base.firewall_rules(args):
            for i, source in enumerate(rule.sources):
                vpc.SecurityGroupIngressRule(
                    name(args, f"{rule.name}-{i}"), security_group_id=groups[rule.tier].id,
                    ip_protocol="tcp", from_port=rule.port, to_port=rule.port, cidr_ipv4=source,
                    description=rule.description, opts=self.child())
        for tier, group in groups.items():
            # Outbound is open: packages, images, and backups pushed to the other clouds.
            vpc.SecurityGroupEgressRule(name(args, f"{tier}-egress"), security_group_id=group.id,
                                        ip_protocol="-1", cidr_ipv4=base.WORLD, opts=self.child())
        return groups

    def _address(self, part: str) -> ec2.Eip:
        return ec2.Eip(name(self.args, f"{part}-ip"), domain="vpc", opts=self.child())

    def _machines(self, groups, subnet_ids, app_ips, db_ip, disk) -> None:
        args = self.args
        count = base.capacity(args.role, args.app)
        image = args.image or ec2.get_ami_output(most_recent=True, owners=[DEBIAN_OWNER],
                                                 filters=[{"name": "name", "values": [DEBIAN_IMAGE]}]).id
        for i in range(count["app"]):
            vm = self._vm(f"app-{i}", "app", image, groups, subnet_ids)
            ec2.EipAssociation(name(args, f"app-{i}-ip"), instance_id=vm.id,
                               allocation_id=app_ips[i].allocation_id, opts=self.child())
        if count["db"]:
            vm = self._vm("db", "db", image, groups, subnet_ids)
            ec2.EipAssociation(name(args, "db-ip"), instance_id=vm.id, allocation_id=db_ip.allocation_id,
                               opts=self.child())
            ec2.VolumeAttachment(name(args, "pgdata"), instance_id=vm.id, volume_id=disk.id,
                                 device_name=DATA_DEVICE, opts=self.child())

    def _vm(self, part: str, tier: str, image_id, groups, subnet_ids) -> ec2.Instance:
        args = self.args
        return ec2.Instance(
            name(args, part), ami=image_id, instance_type=base.machine_type(args, tier),
            subnet_id=subnet_ids[tier], vpc_security_group_ids=[groups[tier].id],
            availability_zone=self.zone, user_data=self.user_data(tier),
            root_block_device={"encrypted": True, "volume_size": 20, "volume_type": "gp3"},
            metadata_options={"http_tokens": "required"},
            # The looked-up AMI moves with every Debian release; a pinned one (failover:image) is the change.
            opts=self.child(ignore_changes=None if args.image else ["ami"]))

    def _bucket(self, part: str, lock: bool = False) -> s3.Bucket:
        args = self.args
        bucket = s3.Bucket(name(args, part), force_destroy=False, object_lock_enabled=lock or None,
                           opts=self.child(protect=True))
        s3.BucketVersioning(name(args, part), bucket=bucket.bucket,
                            versioning_configuration={"status": "Enabled"}, opts=self.child())
        s3.BucketServerSideEncryptionConfiguration(
            name(args, part), bucket=bucket.bucket,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"},
                    "bucket_key_enabled": True}], opts=self.child())
        s3.BucketPublicAccessBlock(name(args, part), bucket=bucket.bucket, block_public_acls=True,
                                   block_public_policy=True, ignore_public_acls=True,
                                   restrict_public_buckets=True, opts=self.child())
        # The owner's cleanup: an overwritten or deleted version goes once it is older than the
        # retention (and its lock); delete markers left alone go too.
        s3.BucketLifecycleConfiguration(
            name(args, part), bucket=bucket.bucket,
            rules=[{"id": "expire-earlier-versions", "status": "Enabled", "filter": {"prefix": ""},
                    "noncurrent_version_expiration": {"noncurrent_days": args.backup_retention_days},
                    "expiration": {"expired_object_delete_marker": True},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}],
            opts=self.child())
        if lock:
            # Overwrites make new versions; locked versions cannot be deleted before they expire.
            s3.BucketObjectLockConfiguration(
                name(args, part), bucket=bucket.bucket,
                rule={"default_retention": {"mode": "GOVERNANCE", "days": args.backup_retention_days}},
                opts=self.child())
        return bucket

    def _writer(self, buckets: list[s3.Bucket]) -> pulumi.Output:
        args = self.args
        user = iam.User(name(args, "writer"), opts=self.child())
        arns = [b.arn for b in buckets]
        policy = pulumi.Output.all(*arns).apply(lambda arns: json.dumps(permissions.s3_writer_policy(arns)))
        iam.UserPolicy(name(args, "writer"), user=user.name, policy=policy, opts=self.child())
        key = iam.AccessKey(name(args, "writer"), user=user.name, opts=self.child())
        # pgBackRest option names, so a repository plus its credentials is a complete repoN config.
        return pulumi.Output.all(key.id, key.secret).apply(
            lambda k: {"s3-key": k[0], "s3-key-secret": k[1]})
