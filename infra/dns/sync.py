"""Plan, then apply, at each DNS provider on its own, touching only the records the toolkit owns.

Each provider is planned and applied independently (one thread each), so a provider that is
down, refuses the key, or fails validation is reported as `failed` while the others are
updated. octoDNS's Manager is not used because one unreachable target makes its whole sync
fail before anything is applied.

Ownership is enforced twice: the desired zone holds only owned record sets, and the
OwnedRecords processor hides every other record in the provider's existing zone, so a plan
can never update or delete an MX, TXT, NS or a name outside `dns.names`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

from octodns.processor.base import BaseProcessor
from octodns.record import Record
from octodns.zone import Zone

from infra import secrets
from infra.dns import providers as provider_mod
from infra.dns.records import RecordSet, is_owned
from infra.spec import DnsProvider

UPDATED, UNCHANGED, FAILED, PENDING = "updated", "unchanged", "failed", "pending"


@dataclass
class ProviderResult:
    """What happened at one provider. `status` is updated|unchanged|failed (pending in a plan)."""

    name: str
    status: str
    error: str = ""
    changes: list[str] = field(default_factory=list)
    propagation_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class OwnedRecords(BaseProcessor):
    """Hides records the toolkit does not own from the provider's existing zone before planning."""

    def __init__(self, names: tuple[str, ...] | list[str]):
        super().__init__("toolkit-owned-records")
        self.names = tuple(names)

    def process_target_zone(self, existing, target, lenient=False):
        for record in list(existing.records):
            if not is_owned(record.name, record._type, self.names):
                existing.remove_record(record)
        return existing


def desired_zone(zone: str, records: list[RecordSet]) -> Zone:
    desired = Zone(zone, [])
    for r in records:
        data = {"type": r.type, "ttl": r.ttl, "values": list(r.values)}
        desired.add_record(Record.new(desired, r.name, data))
    return desired


def describe(change) -> str:
    """One line per change, e.g. 'Update www.example. A 192.0.2.1 -> 198.51.100.7 ttl 30'."""
    def values(record):
        return ",".join(str(v) for v in record.values) if record else "-"
    kind = type(change).__name__
    record = change.new or change.existing
    before = f"{values(change.existing)} -> " if change.existing and change.new else ""
    after = values(change.new) if change.new else f"{values(change.existing)} (deleted)"
    return f"{kind} {record.fqdn} {record._type} {before}{after} ttl {record.ttl}"


# Records for one provider: fixed for a failover, read from the provider itself for `ttl`.
RecordsFor = Callable[[object], list[RecordSet]]


@dataclass
class ProviderPlan:
    """One provider's reviewed plan: `result` says what it would change (pending, unchanged or
    failed); `apply_plans` applies exactly this octoDNS plan, never a new one."""

    result: ProviderResult
    target: object = None
    plan: object = None


def plan_one(entry: DnsProvider, zone: str, names, records_for: RecordsFor, force: bool = False) -> ProviderPlan:
    """Plans one provider; every failure becomes a failed result, never an exception."""
    try:
        target = provider_mod.build(entry)
        plan = target.plan(desired_zone(zone, records_for(target)), processors=[OwnedRecords(names)])
        if plan is None:
            return ProviderPlan(ProviderResult(entry.name, UNCHANGED))
        changes = [describe(c) for c in plan.changes]
        if not force:
            plan.raise_if_unsafe()  # octoDNS's own guard against wide changes
        return ProviderPlan(ProviderResult(entry.name, PENDING, changes=changes), target, plan)
    except Exception as error:  # noqa: BLE001 - one provider's failure must not stop the others
        return ProviderPlan(ProviderResult(entry.name, FAILED, error=explain(entry, error)))


def apply_one(entry: DnsProvider, planned: ProviderPlan) -> ProviderResult:
    """Applies a pending plan; an unchanged or failed one is returned as it was."""
    if planned.plan is None:
        return planned.result
    try:
        planned.target.apply(planned.plan)
        return ProviderResult(entry.name, UPDATED, changes=planned.result.changes)
    except Exception as error:  # noqa: BLE001 - one provider's failure must not stop the others
        return ProviderResult(entry.name, FAILED, error=explain(entry, error))


def plan_all(entries: list[DnsProvider], zone: str, names, records_for: RecordsFor,
             force: bool = False) -> list[ProviderPlan]:
    """Every provider planned at once and independently; plans in the providers' order."""
    return _each(entries, lambda e: plan_one(e, zone, names, records_for, force))


def apply_plans(entries: list[DnsProvider], plans: list[ProviderPlan]) -> list[ProviderResult]:
    """Applies the plans `plan_all` made for `entries` (same order), each provider on its own."""
    by_name = {p.result.name: p for p in plans}
    return _each(entries, lambda e: apply_one(e, by_name[e.name]))


def sync(entries: list[DnsProvider], zone: str, names, records_for: RecordsFor,
         apply: bool, force: bool = False) -> list[ProviderResult]:
    """Plans every provider, then (with apply) applies those plans; results in the providers' order."""
    plans = plan_all(entries, zone, names, records_for, force)
    return apply_plans(entries, plans) if apply else [p.result for p in plans]


def _each(entries: list[DnsProvider], fn) -> list:
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=len(entries)) as pool:
        return list(pool.map(fn, entries))


def fixed(records: list[RecordSet]) -> RecordsFor:
    return lambda _target: records


# Words in octoDNS/dnspython/requests errors, and what the operator should check.
HINTS = (
    (("NOTAUTH", "BADSIG", "BADKEY", "PeerBad", "didn't like the signature", "REFUSED"),
     "the server refused the request: check the TSIG key_name/key_secret and the server's ACL for this zone"),
    (("401", "403", "unauthorized", "Unauthorized"), "the API refused the credentials: check api_key"),
    (("Connection refused", "ConnectionRefused", "timed out", "Timeout", "Max retries"),
     "the provider's server is not reachable: is it running, and are host/port right?"),
    (("force required",), "the plan changes more than octoDNS allows without force: review it, then apply with --force"),
)


def explain(entry: DnsProvider, error: Exception) -> str:
    """'<ErrorType>: <message> (<hint>)', secrets scrubbed; the provider name is in the result."""
    text = f"{type(error).__name__}: {error}"
    hint = next((h for words, h in HINTS if any(w in text for w in words)), "")
    return secrets.redact(f"{text} ({hint})" if hint else text)
