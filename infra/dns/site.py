"""DNS for one site: what the failover runbook calls to point the app's names at a site.

`dns_config` finds the zone, names, TTL and providers: the spec's (Pulumi.yaml
config.dns.providers), unless the local cloud's Knot servers are chosen explicitly, by
`failover local up` (which records the choice in WORKDIR/dns.json) or by
FAILOVER_DNS_PROVIDERS=local|spec. A providers file that merely exists is never used. `plan_site`, `apply_site` and `verify_site` take the
Inventory and a site name, so a failover needs neither Pulumi nor the dropped provider.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from infra.dns import sync, ttl as ttl_mod, verify
from infra.dns.local import dns_dir, local_providers, local_zone
from infra.errors import FailoverError
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


CHOICE_FILE = "dns.json"  # in the work directory: {"providers": "local" | "spec"}
CHOICE_ENV = "FAILOVER_DNS_PROVIDERS"
CHOICES = ("local", "spec")


def choose_providers(workdir: Path, choice: str) -> None:
    """Records which providers the engine moves for this work directory (`local up` says local)."""
    if choice not in CHOICES:
        raise ValueError(f"DNS providers must be one of {CHOICES}, got {choice!r}")
    (Path(workdir) / CHOICE_FILE).write_text(json.dumps({"providers": choice}) + "\n")


def chosen_providers(workdir: Path) -> tuple[str, str]:
    """(choice, where it was made): the environment, else WORKDIR/dns.json, else the spec."""
    if os.environ.get(CHOICE_ENV):
        choice, where = os.environ[CHOICE_ENV], CHOICE_ENV
    else:
        path = Path(workdir) / CHOICE_FILE
        try:
            choice, where = json.loads(path.read_text())["providers"], str(path)
        except FileNotFoundError:
            return "spec", "the default"
        except (ValueError, KeyError, TypeError):
            raise FailoverError(f"{path}: expected {{\"providers\": \"local\"|\"spec\"}}; fix or delete it") from None
    if choice not in CHOICES:
        raise FailoverError(f"{where}: DNS providers must be local or spec, got {choice!r}")
    return choice, where


def dns_config(workdir: Path, project_file: Path) -> DnsConfig:
    """Names and TTL from the spec; the providers chosen for the work directory (`chosen_providers`)."""
    dns = load_spec(project_file).dns
    choice, where = chosen_providers(workdir)
    if choice == "spec":
        return DnsConfig(dns.zone, dns.names, dns.ttl, dns.providers, f"{project_file}: config.dns.providers")
    local = local_providers(workdir)
    source = str(dns_dir(workdir) / "providers.yaml")
    if local is None:
        raise FailoverError(f"{where} chooses the local cloud's DNS providers, but {source} does not exist: run "
                            f"`failover local up`, or set {CHOICE_ENV}=spec to use the spec's providers")
    return DnsConfig(local_zone(workdir), dns.names, dns.ttl, tuple(local), source)


def site_records(inventory: Inventory, site_name: str, names, ttl: int) -> list[RecordSet]:
    return desired_records(inventory.site(site_name), names, ttl)


@dataclass
class SitePlan:
    """The reviewed DNS change for pointing the names at a site (or for a TTL): `apply` applies
    these plans, so what is applied is what was shown."""

    providers: tuple[DnsProvider, ...]
    zone: str
    records: list[RecordSet] | None  # None for a TTL change: each provider keeps its own values
    plans: list[sync.ProviderPlan]

    @property
    def results(self) -> list[sync.ProviderResult]:
        return [p.result for p in self.plans]

    def apply(self, verify_timeout: float | None = VERIFY_TIMEOUT) -> list[sync.ProviderResult]:
        """Applies at every provider independently, then (unless verify_timeout is None, or for a
        TTL change) waits until each provider's authoritative server serves the records;
        `propagation_seconds` is how long that took. A provider that applied but never served
        them is `failed`."""
        results = sync.apply_plans(list(self.providers), self.plans)
        if verify_timeout is not None and self.records is not None:
            _attach_verification(results, list(self.providers), self.zone, self.records, verify_timeout)
        return results


def plan_move(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
              force: bool = False) -> SitePlan:
    """The change at every provider that points the names at the site; nothing applied."""
    records = site_records(inventory, site_name, names, ttl)
    return SitePlan(tuple(providers), zone, records,
                    sync.plan_all(list(providers), zone, names, sync.fixed(records), force=force))


def plan_ttl(providers, zone: str, names, seconds: int, force: bool = False) -> SitePlan:
    """The change at every provider that sets the owned records' TTL, keeping their values."""
    return SitePlan(tuple(providers), zone, None,
                    sync.plan_all(list(providers), zone, names, ttl_mod.retimed(zone, names, seconds), force=force))


def plan_site(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
              force: bool = False) -> list[sync.ProviderResult]:
    """Per provider: `pending` with its changes, `unchanged`, or `failed` with the error."""
    return plan_move(inventory, site_name, providers, zone, names, ttl, force).results


def apply_site(inventory: Inventory, site_name: str, providers, zone: str, names, ttl: int,
               force: bool = False, verify_timeout: float | None = VERIFY_TIMEOUT) -> list[sync.ProviderResult]:
    """Plans and applies in one call (the runbook's shift, bring-up): see SitePlan.apply."""
    return plan_move(inventory, site_name, providers, zone, names, ttl, force).apply(verify_timeout)


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
    return plan_ttl(providers, zone, names, seconds, force).apply()


def failed(results) -> list[str]:
    return [r.name for r in results if r.status == sync.FAILED]
