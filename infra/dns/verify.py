"""Ask each provider's authoritative server(s) directly until they serve the desired records.

Verification does not go through any resolver (no caches, no other network): it queries the
addresses named by the provider entry (see providers.authority) and polls until every owned
record set answers with the desired values and TTL, or until the timeout.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from infra.dns.providers import authority
from infra.dns.records import RecordSet
from infra.spec import DnsProvider

POLL_SECONDS = 0.01
QUERY_TIMEOUT = 0.5


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


def verify_one(entry: DnsProvider, zone: str, records: list[RecordSet], timeout: float) -> Verification:
    where = authority(entry)
    if where is None:
        return Verification(entry.name, False, None,
                            "no authoritative server to ask: set args.dns_address (and dns_port) for this provider")
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
        return list(pool.map(lambda e: verify_one(e, zone, records, timeout), entries))
