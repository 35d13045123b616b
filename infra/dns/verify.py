"""Ask each provider's authoritative server(s) directly until they serve the desired records.

The servers are the ones the provider entry names (see providers.authority), else the ones the
zone is delegated to: a resolver (config.dns.resolvers, else /etc/resolv.conf) is asked for the
zone's NS set, the NS names that are this provider's are picked (providers.owned_ns) and
resolved to addresses. Only those lookups use a resolver; the records themselves are asked of
the authoritative servers directly (no caches) and polled until every owned record set answers
with the desired values and TTL, or until the timeout.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from infra import secrets
from infra.dns.providers import Authority, authority, authority_port, owned_ns
from infra.dns.records import RecordSet
from infra.spec import DnsProvider, resolver_address

POLL_SECONDS = 0.01
QUERY_TIMEOUT = 0.5
RESOLVE_LIFETIME = 3.0  # per lookup, over all resolvers
NO_AUTHORITY = "no authoritative server to ask"  # site.py reports these as "not verified"


@dataclass(frozen=True)
class Verification:
    name: str
    ok: bool
    seconds: float | None
    error: str = ""


def served(address: str, port: int, fqdn: str, rtype: str) -> tuple[int, frozenset[str]] | str:
    """(ttl, values) the server answers for fqdn/rtype, or why it did not answer."""
    try:
        reply = dns.query.udp(dns.message.make_query(fqdn, rtype), address, port=port, timeout=QUERY_TIMEOUT)
    except (OSError, dns.exception.DNSException) as error:
        return f"{address}:{port} did not answer ({type(error).__name__}: {error})"
    if reply.rcode() != dns.rcode.NOERROR:
        return f"{address}:{port} answered {dns.rcode.to_text(reply.rcode())} for {fqdn} {rtype}"
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rtype):
            return rrset.ttl, frozenset(r.to_text() for r in rrset)
    return 0, frozenset()


def mismatch(address: str, port: int, zone: str, records: list[RecordSet]) -> str:
    """'' when the server serves every record set as desired, else the first difference."""
    for record in records:
        answer = served(address, port, record.fqdn(zone), record.type)
        if isinstance(answer, str):
            return answer
        ttl, values = answer
        if values != frozenset(record.values) or ttl != record.ttl:
            shown = ",".join(sorted(values)) or "nothing"
            return (f"{address}:{port} serves {record.fqdn(zone)} {record.type} {shown} ttl {ttl}, "
                    f"want {','.join(record.values)} ttl {record.ttl}")
    return ""


def stub_resolver(resolvers: tuple[str, ...]) -> dns.resolver.Resolver:
    """A resolver (without a cache) asking `resolvers`, or the system's if there are none."""
    if not resolvers:
        resolver = dns.resolver.Resolver()  # /etc/resolv.conf
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*resolver_address(r)) for r in resolvers]
    resolver.lifetime = RESOLVE_LIFETIME
    return resolver


def lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> list[str]:
    """The values of name/rtype, [] if there are none; raises DNSException if no resolver answers."""
    try:
        return [r.to_text() for r in resolver.resolve(name, rtype, search=False)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []


def _addresses(resolver, entry: DnsProvider, zone: str, ns_names: list[str], asked: str) -> list[str] | str:
    # IPv4 where a name has it: providers serve the same on both, and IPv6 may not be routed here.
    found = []
    for name in ns_names:
        addresses = lookup(resolver, name, "A") or lookup(resolver, name, "AAAA")
        if not addresses:
            return (f"dns provider {entry.name}: NS {name} of {zone} does not resolve (no A or AAAA at {asked}); "
                    f"fix its address records at the provider, or set args.dns_address")
        found += addresses
    return list(dict.fromkeys(found))


def delegated(entry: DnsProvider, zone: str, alone: bool) -> Authority | str:
    """The provider's servers found through the zone's NS records, or why they cannot be found."""
    asked = ", ".join(entry.resolvers) or "the system's resolvers (/etc/resolv.conf)"
    try:
        resolver = stub_resolver(entry.resolvers)
        ns_names = lookup(resolver, zone, "NS")
        if not ns_names:
            return (f"dns provider {entry.name}: {asked} know no NS records for {zone}; delegate the zone at the "
                    f"registrar, set config.dns.resolvers to resolvers that see it, or set args.dns_address")
        mine = owned_ns(entry, sorted(ns_names), alone)
        found = mine if isinstance(mine, str) else _addresses(resolver, entry, zone, mine, asked)
    except (OSError, dns.exception.DNSException) as error:
        return secrets.redact(
            f"dns provider {entry.name}: could not ask {asked} for the NS of {zone} ({type(error).__name__}: "
            f"{error}); check they are reachable, or set config.dns.resolvers or args.dns_address")
    return found if isinstance(found, str) else Authority(tuple(found), authority_port(entry))


def find_authority(entry: DnsProvider, zone: str, alone: bool) -> Authority | str:
    """The servers the entry names (the first choice), else those the zone is delegated to."""
    return authority(entry) or delegated(entry, zone, alone)


def verify_one(entry: DnsProvider, zone: str, records: list[RecordSet], timeout: float,
               alone: bool = False) -> Verification:
    """Polls the provider's servers; `alone`: it is the zone's only provider (all NS are its own)."""
    where = find_authority(entry, zone, alone)
    if isinstance(where, str):
        return Verification(entry.name, False, None, f"{NO_AUTHORITY}: {where}")
    start = time.monotonic()
    while True:
        problems = [p for p in (mismatch(a, where.port, zone, records) for a in where.addresses) if p]
        elapsed = time.monotonic() - start
        if not problems:
            return Verification(entry.name, True, round(elapsed, 4))
        if elapsed > timeout:
            return Verification(entry.name, False, None, f"after {timeout:g}s: {problems[0]}")
        time.sleep(POLL_SECONDS)


def verify(entries: list[DnsProvider], zone: str, records: list[RecordSet], timeout: float = 30.0) -> list[Verification]:
    """All providers at once; the seconds each took to serve the records, in the providers' order."""
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=len(entries)) as pool:
        return list(pool.map(lambda e: verify_one(e, zone, records, timeout, len(entries) == 1), entries))
