"""Each storage type's store in the shape SiteOutputs holds it: a repository (pgBackRest options
without `repoN-`) and a media remote (rclone backend, options, path), as plain dicts.

The cloud programs export these shapes for their sites' buckets (whose names are Outputs
there); `failover inventory pull` builds a witness store's from the spec (config.witnesses,
infra/spec.py) with the same functions, so a witness at a further provider looks to the engine
exactly like a site's store of its type. Nothing here imports a cloud SDK.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the programs pass Outputs; the engine passes strings
    import pulumi

    from infra.spec import Witness

PGBACKREST_PATH = "/pgbackrest"
Shape = tuple[dict[str, Any], dict[str, Any]]  # (repository, media_remote)


def s3(backups: pulumi.Input[str], media: pulumi.Input[str], region: str, endpoint: str = "") -> Shape:
    """S3 at AWS (`endpoint` "": the region's), or an S3-compatible store at `endpoint` (host[:port])."""
    host, port = split_endpoint(endpoint or f"s3.{region}.amazonaws.com")
    options = {"s3-bucket": backups, "s3-endpoint": host, "s3-region": region, "path": PGBACKREST_PATH}
    remote = {"provider": "AWS", "region": region}
    if endpoint:  # rclone's "Other" provider takes the endpoint as a URL
        options |= {"storage-port": port} if port else {}
        remote = {"provider": "Other", "endpoint": f"https://{endpoint}", "region": region}
    return {"type": "s3", "options": options}, {"type": "s3", "options": remote, "path": media}


def gcs(backups: pulumi.Input[str], media: pulumi.Input[str], endpoint: str = "") -> Shape:
    """Google Cloud Storage, its key a service account's (gcs-key-json-base64 among the credentials)."""
    options = {"gcs-bucket": backups, "gcs-key-type": "service", "path": PGBACKREST_PATH}
    remote = {"bucket_policy_only": "true"}
    if endpoint:
        options |= {"gcs-endpoint": endpoint}
        remote |= {"endpoint": f"https://{endpoint}/storage/v1/"}
    return {"type": "gcs", "options": options}, {"type": "google cloud storage", "options": remote, "path": media}


def azure(backups_account: pulumi.Input[str], backups_container: str, media_account: pulumi.Input[str],
          media_container: str, endpoint: str = "") -> Shape:
    """Azure Blob Storage through SAS tokens (azure-key, media-sas or media-sas-url among the credentials)."""
    options = {"azure-account": backups_account, "azure-container": backups_container, "azure-key-type": "sas",
               "path": PGBACKREST_PATH}
    if endpoint:
        host, port = split_endpoint(endpoint)
        options |= {"azure-endpoint": host, "azure-uri-style": "path"} | ({"storage-port": port} if port else {})
    return ({"type": "azure", "options": options},
            {"type": "azureblob", "options": {"account": media_account}, "path": media_container})


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """`host[:port]` -> (host, port or ""): pgBackRest takes the port as storage-port."""
    host, _, port = endpoint.partition(":")
    return host, port


def witness(spec: Witness) -> Shape:
    """A witness store's shape: one bucket (or container) for its objects, at its provider."""
    if spec.storage == "s3":
        repository, remote = s3(spec.bucket, spec.bucket, spec.region, spec.endpoint)
        if spec.uri_style:
            repository["options"]["s3-uri-style"] = spec.uri_style
            remote["options"]["force_path_style"] = str(spec.uri_style == "path").lower()
    elif spec.storage == "gcs":
        repository, remote = gcs(spec.bucket, spec.bucket, spec.endpoint)
    else:
        repository, remote = azure(spec.account, spec.bucket, spec.account, spec.bucket, spec.endpoint)
    if spec.ca_file:  # pgBackRest, the HTTP API and rclone (ObjectStore.ca_flags) read it here
        repository["options"]["storage-ca-file"] = spec.ca_file
    return repository, remote
