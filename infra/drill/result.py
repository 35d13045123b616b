"""A drill scenario's result, typed: what run_scenario measured and what the report shows.

`to_dict()` is the scenario's entry in report.json (the same keys, in the same order, as
before this was a dataclass); `summary()` leaves out the raw canary records, which report.json
keeps apart under "canary".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from infra.drill.canary import Write
from infra.drill.measure import Targets

RAW = ("canary", "cut_off_ts", "command_started_ts")


@dataclass
class ScenarioResult:
    name: str
    description: str
    source: str
    target: str
    dns_ttl: int
    targets: Targets
    rto_limit_seconds: float  # in report.json under targets, beside the targets it follows from
    cut_off: str | None
    command_started: str | None
    command_ended: str | None
    command_seconds: float
    rto_seconds: float | None  # from the cut-off to the first write acknowledged by the target
    rto_from_command_seconds: float | None
    rpo_seconds: float
    archive_lag_seconds: float | None  # a restore only: a promoted replica had every commit streamed
    recovered_to: str | None
    newest_segment_age_seconds: float | None
    writes_acked: int
    writes_lost: int
    lost_seqs: list[int]
    writes_failed_after_cut_off: int
    writes_attempted: int
    passed: bool
    missed: list[str]
    error: str | None
    epoch: int | None
    steps: list[dict]  # the journal's timings (infra.runbook.journal.Journal.timings)
    integrity: dict
    # From take_writes until another site had flushed (written) the new primary's WAL: the time
    # acknowledged writes lived at one site only (infra.drill.measure.exposure); None: never closed.
    exposure_seconds: float | None = None
    exposure_written_seconds: float | None = None
    canary: list[Write] = field(default_factory=list)
    cut_off_ts: float = 0.0
    command_started_ts: float = 0.0
    # What the old primary's lease cost (infra/data/lease.py): take_writes' wait for it to run
    # out, 0 when the fence step reached the old primary and fenced it directly.
    lease_wait_seconds: float | None = None
    fenced_directly: bool | None = None

    def to_dict(self) -> dict:
        entry = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rto_limit_seconds"}
        entry["targets"] = {**self.targets.to_dict(), "rto_limit_seconds": self.rto_limit_seconds}
        entry["canary"] = [asdict(w) for w in self.canary]
        return entry

    def summary(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in RAW}

    @property
    def acked_by_site(self) -> dict[str, list[float]]:
        """When each site acknowledged canary writes (answered times), for the timeline."""
        sites = sorted({w.site for w in self.canary if w.site})
        return {site: [w.answered for w in self.canary if w.acked and w.site == site] for site in sites}
