"""Lower (before a drill or switchover) or restore the TTL of the records the toolkit owns.

The values stay what each provider serves now; only the TTL changes, so this never moves the
app. Providers are handled independently, exactly as in a failover (sync.sync).
"""
from __future__ import annotations

from octodns.zone import Zone

from infra.dns import sync
from infra.dns.records import RecordSet, is_owned
from infra.spec import DnsProvider


def current_owned(target, zone: str, names) -> list[RecordSet]:
    """The owned record sets a provider holds now, read through octoDNS."""
    existing = Zone(zone, [])
    target.populate(existing, target=True, lenient=True)
    return [RecordSet(r.name, r._type, r.ttl, tuple(str(v) for v in r.values))
            for r in existing.records if is_owned(r.name, r._type, names)]


def retimed(zone: str, names, seconds: int) -> sync.RecordsFor:
    if not 0 < seconds <= 86400:
        raise ValueError(f"--seconds must be between 1 and 86400, got {seconds}")

    def records_for(target) -> list[RecordSet]:
        return [RecordSet(r.name, r.type, seconds, r.values) for r in current_owned(target, zone, names)]
    return records_for


def set_ttl(entries: list[DnsProvider], zone: str, names, seconds: int,
            apply: bool = True, force: bool = False) -> list[sync.ProviderResult]:
    return sync.sync(entries, zone, names, retimed(zone, names, seconds), apply=apply, force=force)
