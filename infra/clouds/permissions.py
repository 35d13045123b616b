"""What another site's writer credentials may do in our buckets, per cloud, and why.

pgBackRest must write, overwrite its info files (archive.info, backup.info and their .copy
files, rewritten by every backup and `expire`) and expire old backups and WAL, which deletes
objects. So on every cloud the writer may delete the *current* version of an object, and the
bucket keeps whatever an overwrite or a delete replaced: versioning everywhere, plus
- AWS: Object Lock (GOVERNANCE) on the backups bucket, so a locked version cannot be deleted
  before its retention ends, and the writer is denied DeleteObjectVersion, the bypass and every
  bucket-level change;
- GCS: soft delete (7-90 days) on top of versioning; the writer's role (objectUser) can delete
  a noncurrent generation too, but a deleted generation stays restorable by the bucket's owner
  for the soft-delete period, and the writer cannot change the bucket or its IAM;
- Azure: version-level immutability on the backups account and blob soft delete; the SAS grants
  d (delete the current blob, which keeps it as a previous version) but never x (delete a
  version), y (permanent delete) or i (immutability).
A lifecycle rule per bucket, the owner's, removes earlier versions once they are older than the
retention days, so backups do not grow without bound. The trade-off, per cloud, is in
docs/pulumi.md ("Writer credentials and what they can do").

Plain data, no SDK: the programs, the policy pack and the emulators share it.
"""
from __future__ import annotations

S3_ALLOWED = ["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:DeleteObject"]
S3_DENIED = ["s3:DeleteObjectVersion", "s3:PutLifecycleConfiguration", "s3:PutBucketVersioning",
             "s3:PutBucketPolicy", "s3:PutBucketObjectLockConfiguration", "s3:PutObjectRetention",
             "s3:BypassGovernanceRetention", "s3:DeleteBucket"]
GCS_WRITER_ROLES = ("roles/storage.objectUser",)
# Read, create, write (a new version), delete the current blob, list.
AZURE_SAS_PERMISSIONS = "rcwdl"


def s3_writer_policy(bucket_arns: list[str]) -> dict:
    """The writer's IAM policy on the buckets and their objects."""
    resources = [*bucket_arns, *[f"{arn}/*" for arn in bucket_arns]]
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": S3_ALLOWED, "Resource": resources},
        {"Effect": "Deny", "Action": S3_DENIED, "Resource": resources},
    ]}
