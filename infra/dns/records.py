"""The records the toolkit owns, computed from the active site's SiteOutputs (pure, no I/O).

The toolkit owns exactly the A and AAAA record sets at the app's names (spec `dns.names`).
Every other record in the zone (MX, TXT, NS, other names) belongs to someone else and must
never be changed or deleted; `is_owned` is the single test for that rule.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from infra.sites.contract import SiteOutputs

# Owning the whole type at a name (not just the values) means a stale AAAA left by an
# earlier site is removed when the new site has only IPv4 addresses.
OWNED_TYPES = ("A", "AAAA")


@dataclass(frozen=True)
class RecordSet:
    """One record set, named relative to the zone ('' is the apex); values as rdata text."""

    name: str
    type: str
    ttl: int
    values: tuple[str, ...]

    def fqdn(self, zone: str) -> str:
        return f"{self.name}.{zone}" if self.name else zone

    def zone_file_lines(self) -> list[str]:
        owner = self.name or "@"
        return [f"{owner} {self.ttl} IN {self.type} {value}" for value in self.values]


def is_owned(name: str, rtype: str, names: tuple[str, ...] | list[str]) -> bool:
    return rtype in OWNED_TYPES and name in names


def split_addresses(addresses: tuple[str, ...] | list[str], where: str) -> dict[str, tuple[str, ...]]:
    """{'A': v4 addresses, 'AAAA': v6 addresses}, sorted, each checked to be an IP address."""
    by_type: dict[str, list[str]] = {"A": [], "AAAA": []}
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{where}: public address {text!r} is not an IP address") from None
        by_type["A" if address.version == 4 else "AAAA"].append(str(address))
    return {rtype: tuple(sorted(set(values))) for rtype, values in by_type.items() if values}


def desired_records(site: SiteOutputs, names: tuple[str, ...] | list[str], ttl: int) -> list[RecordSet]:
    """A (and AAAA) record sets pointing every app name at the site's public addresses."""
    if not site.public_addresses:
        raise ValueError(f"site {site.site!r}: SiteOutputs.public_addresses is empty; nothing to point DNS at")
    if not 0 < ttl <= 86400:
        raise ValueError(f"dns ttl must be between 1 and 86400 seconds, got {ttl}")
    by_type = split_addresses(site.public_addresses, f"site {site.site!r}")
    return [RecordSet(name, rtype, ttl, values)
            for name in names for rtype, values in by_type.items()]


def with_ttl(records: list[RecordSet], ttl: int) -> list[RecordSet]:
    """The same record sets with another TTL (for `failover dns ttl`)."""
    return [RecordSet(r.name, r.type, ttl, r.values) for r in records]
