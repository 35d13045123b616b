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

from infra.clouds import hostkey, tags  # noqa: E402
from infra.clouds.base import SiteArgs, host_cidr  # noqa: E402
from infra.sites.contract import EXPORTED_KEYS  # noqa: E402
from infra.spec import Spec, SpecError, spec_from_config  # noqa: E402

PROJECT_KEYS = ("app", "database", "media", "dns")
# Imported lazily, so a stack loads only its own cloud's SDK (all of azure-native costs 9 s).
COMPONENTS = {"aws": ("infra.clouds.aws", "AwsSite"), "gcp": ("infra.clouds.gcp", "GcpSite"),
              "azure": ("infra.clouds.azure", "AzureSite")}
NATIVE_STORAGE = {"aws": "s3", "gcp": "gcs", "azure": "azure"}
# Exported beside SiteOutputs but not in the Inventory: `failover inventory pull` writes it to known_hosts.
EXTRA_EXPORTS = (hostkey.OUTPUT,)


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


def site_args(spec: Spec, config: pulumi.Config, stack: str) -> SiteArgs:
    """The component's args: the spec, the site's host key and peers, and the optional per-stack keys."""
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
                    ssh_host_key=host_key(config, stack), peer_hosts=peer_hosts(config, stack),
                    **{key: value for key, value in optional.items() if value is not None})


def host_key(config: pulumi.Config, stack: str) -> pulumi.Output[str]:
    """failover:ssh_host_key, the secret every VM of the site boots with as its SSH host key."""
    key = config.get_secret(hostkey.CONFIG_KEY)
    if key is None:
        raise SpecError([f"stacks/Pulumi.{stack}.yaml: config.failover:{hostkey.CONFIG_KEY} is not set on stack "
                         f"{stack}: the site's SSH host key, which the engine must know before it first connects. "
                         f"Run `failover inventory hostkeys --stacks {stack} --doit` (it makes the key and sets it "
                         "as a secret), then `pulumi up` again"])
    return key


def qualified(name: str) -> str:
    """A stack name as a StackReference takes it: a bare `gcp` is this project's, in this organization."""
    parts = name.split("/")
    prefix = [pulumi.get_organization(), pulumi.get_project()][:3 - len(parts)] if len(parts) < 3 else []
    return "/".join(prefix + parts)


def peer_hosts(config: pulumi.Config, stack: str) -> tuple[pulumi.Output[str], ...]:
    """The other sites' db_host, as /32 CIDRs, from the stacks in failover:peer_stacks.

    A StackReference to a stack that does not exist fails the whole preview or update, so a
    stack deployed before its peers sets failover:first_deploy (docs/pulumi.md, "Peers")."""
    where = f"stacks/Pulumi.{stack}.yaml: config.failover:peer_stacks"
    names = config.get_object("peer_stacks") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise SpecError([f"{where}: a list of stack names such as [org/failover/gcp], got {names!r}"])
    names = [qualified(name) for name in names]
    if qualified(stack) in names or len(set(names)) != len(names):
        raise SpecError([f"{where}: names this stack or a stack twice: {names!r}"])
    if config.get_bool("first_deploy"):
        pulumi.log.warn(f"failover:first_deploy is set: the peers {', '.join(names) or '(none)'} are not read, so "
                        "PostgreSQL admits only failover:peer_cidrs; remove the key once those stacks exist, and "
                        "`pulumi up` again")
        return ()
    return tuple(pulumi.StackReference(name).require_output("db_host").apply(
        lambda host, name=name: host_cidr(str(host), f"stack {name}")) for name in names)


def main() -> None:
    config = pulumi.Config("failover")
    spec = read_spec(config, pulumi.get_stack())
    site = spec.sites[0]
    module, cls = COMPONENTS[site.cloud]
    tags.register(site.name, site.role)
    component = getattr(importlib.import_module(module), cls)(site.name, site_args(spec, config, pulumi.get_stack()))
    exports = {"site": site.name, "cloud": site.cloud, "region": site.region, "role": site.role,
               **component.outputs()}
    expected = set(EXPORTED_KEYS) | set(EXTRA_EXPORTS)  # the Inventory reads exactly EXPORTED_KEYS
    if set(exports) != expected:
        raise RuntimeError(f"exports drifted from SiteOutputs: {sorted(set(exports) ^ expected)}")
    for key, value in exports.items():
        pulumi.export(key, value)


main()
