"""The Pulumi program: stack config -> Spec -> the site's cloud component -> exported SiteOutputs.

The program is the same for every stack; only stacks/Pulumi.<site>.yaml differs. Project config
(app, database, media, dns) comes from Pulumi.yaml, the site from `failover:site`, and a few
optional per-stack keys (see docs/pulumi.md) tune the site without changing its shape.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pulumi

if __package__ in (None, ""):  # `pulumi up` runs this directory as a script, not as infra.__main__
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.clouds import tags  # noqa: E402
from infra.clouds.base import SiteArgs  # noqa: E402
from infra.sites.contract import EXPORTED_KEYS  # noqa: E402
from infra.spec import Spec, SpecError, spec_from_config  # noqa: E402

PROJECT_KEYS = ("app", "database", "media", "dns")
# Imported lazily, so a stack loads only its own cloud's SDK (all of azure-native costs 9 s).
COMPONENTS = {"aws": ("infra.clouds.aws", "AwsSite"), "gcp": ("infra.clouds.gcp", "GcpSite"),
              "azure": ("infra.clouds.azure", "AzureSite")}
NATIVE_STORAGE = {"aws": "s3", "gcp": "gcs", "azure": "azure"}


def read_spec(config: pulumi.Config, stack: str) -> Spec:
    where = f"stacks/Pulumi.{stack}.yaml"
    project = {key: value for key in PROJECT_KEYS if (value := config.get_object(key)) is not None}
    spec = spec_from_config(project, stack, config.get_object("site") or {}, where)
    site = spec.sites[0]
    if site.cloud not in COMPONENTS:
        raise SpecError([f"{where}: config.failover:site.cloud: {site.cloud!r} has no Pulumi component; "
                         f"use one of: {', '.join(COMPONENTS)}"])
    if site.storage != NATIVE_STORAGE[site.cloud]:
        raise SpecError([f"{where}: config.failover:site.storage: a {site.cloud} site stores in "
                         f"{NATIVE_STORAGE[site.cloud]!r}, got {site.storage!r}"])
    return spec


def site_args(spec: Spec, config: pulumi.Config) -> SiteArgs:
    """The component's args: the spec plus the optional per-stack keys."""
    site = spec.sites[0]
    optional = {
        "peer_cidrs": tuple(config.get_object("peer_cidrs") or ()),
        "ssh_public_key": config.get("ssh_public_key") or "",
        "sizes": dict(config.get_object("sizes") or {}),
        "network_cidr": config.get("network_cidr"),
        "zone": config.get("zone"),
        "backup_retention_days": config.get_int("backup_retention_days"),
        "image": config.get("image"),
    }
    return SiteArgs(site=site.name, cloud=site.cloud, region=site.region, role=site.role, app=spec.app,
                    database=spec.database, media_bucket=spec.media.bucket, admin_cidrs=site.admin_cidrs,
                    **{key: value for key, value in optional.items() if value is not None})


def main() -> None:
    config = pulumi.Config("failover")
    spec = read_spec(config, pulumi.get_stack())
    site = spec.sites[0]
    module, cls = COMPONENTS[site.cloud]
    tags.register(site.name, site.role)
    component = getattr(importlib.import_module(module), cls)(site.name, site_args(spec, config))
    exports = {"site": site.name, "cloud": site.cloud, "region": site.region, "role": site.role,
               **component.outputs()}
    if set(exports) != set(EXPORTED_KEYS):  # the Inventory reads exactly these keys
        raise RuntimeError(f"exports drifted from SiteOutputs: {sorted(set(exports) ^ set(EXPORTED_KEYS))}")
    for key, value in exports.items():
        pulumi.export(key, value)


main()
