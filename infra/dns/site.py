"""DNS for one site: what the failover runbook calls to point the app's names at a site.

`dns_config` finds the zone, names, TTL and providers (the local cloud's Knot servers when
it has them, else the spec's providers). `plan_site`, `apply_site` and `verify_site` take the
Inventory and a site name, so a failover needs neither Pulumi nor the dropped provider.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.dns import sync, ttl as ttl_mod, verify
from infra.dns.local import local_providers, local_zone
from infra.dns.records import RecordSet, desired_records
from infra.sites.contract import Inventory
from infra.spec import DnsProvider, load_spec

VERIFY_TIMEOUT = 30.0


@dataclass(frozen=True)
class DnsConfig:
    zone: str
    names: tuple[str, ...]
    ttl: int
    providers: tuple[DnsProvider, ...]
    source: str  # where the providers came from, for messages


def dns_config(workdir: Path, project_file: Path) -> DnsConfig:
    """Names and TTL from the spec; providers from the local cloud's DNS if it exists."""
    dns = load_spec(project_file).dns
    local = local_providers(workdir)
    if local is not None:
        source = str(Path(workdir) / "dns" / "providers.yaml")
        return DnsConfig(local_zone(workdir), dns.names, dns.ttl, tuple(local), source)
    return DnsConfig(dns.zone, dns.names, dns.ttl, dns.providers, f"{project_file}: config.dns.providers")


def site_records(inventory: Inventory, site_name: str, names, ttl: int) -> list[RecordSet]:
    return desired_records(inventory.site(site_name), names, ttl)


def plan_site(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
              force: bool = False) -> list[sync.ProviderResult]:
    """Per provider: `pending` with its changes, `unchanged`, or `failed` with the error."""
    records = site_records(inventory, site_name, names, ttl)
    return sync.sync(list(providers), zone, names, sync.fixed(records), apply=False, force=force)


def apply_site(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
               force: bool = False, verify_timeout: float | None = VERIFY_TIMEOUT) -> list[sync.ProviderResult]:
    """Applies at every provider independently, then (unless verify_timeout is None) waits
    until each provider's authoritative server serves the records; `propagation_seconds` is
    how long that took. A provider that applied but never served them is `failed`."""
    records = site_records(inventory, site_name, names, ttl)
    results = sync.sync(list(providers), zone, names, sync.fixed(records), apply=True, force=force)
    if verify_timeout is not None:
        _attach_verification(results, list(providers), zone, records, verify_timeout)
    return results


def _attach_verification(results, providers, zone, records, timeout) -> None:
    by_name = {p.name: p for p in providers}
    live = [r for r in results if r.status != sync.FAILED]
    checks = verify.verify([by_name[r.name] for r in live], zone, records, timeout)
    for result, check in zip(live, checks):
        result.propagation_seconds = check.seconds
        if check.seconds is None and check.error.startswith("no authoritative server"):
            result.error = f"not verified: {check.error}"
        elif not check.ok:
            result.status, result.error = sync.FAILED, f"applied, but not served: {check.error}"


def verify_site(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
                timeout: float = VERIFY_TIMEOUT) -> list[verify.Verification]:
    records = site_records(inventory, site_name, names, ttl)
    return verify.verify(list(providers), zone, records, timeout)


def set_ttl(providers, zone: str, names, seconds: int, force: bool = False) -> list[sync.ProviderResult]:
    """Sets the TTL of the owned records at every provider, keeping their values."""
    return ttl_mod.set_ttl(list(providers), zone, names, seconds, apply=True, force=force)


def failed(results) -> list[str]:
    return [r.name for r in results if r.status == sync.FAILED]
