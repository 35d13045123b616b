"""RTO and RPO from the canary's records: pure functions over data, tested with data.

- RTO: from the cut-off (and from the failover command's start) to the first write
  acknowledged by the new site through the DNS name.
- RPO: acknowledged writes missing from the new primary afterwards: how many, and the time
  window they span (from the first lost ack to the last).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from infra.data import walstream


@dataclass(frozen=True)
class Ack:
    """What measurement needs from a canary write."""

    seq: int
    sent: float
    answered: float
    acked: bool
    site: str | None


@dataclass(frozen=True)
class Rpo:
    lost: int
    lost_seqs: tuple[int, ...]
    window_seconds: float
    first_lost_at: float | None
    last_lost_at: float | None


@dataclass(frozen=True)
class Targets:
    """Pass/fail limits; `rto_seconds=None` means DNS TTL + rto_margin_seconds."""

    rto_seconds: float | None = None
    rto_margin_seconds: float = 5.0
    max_writes_lost: int | None = 0
    rpo_window_seconds: float | None = None
    # Restores replay archived WAL only: the RPO window must fit inside the archive lag measured.
    rpo_within_archive_lag: bool = False
    # Issue 15 item 6: after the promotion, another site holds the new primary's WAL within this.
    exposure_seconds: float | None = 2.0

    def rto_limit(self, ttl: int) -> float:
        return self.rto_seconds if self.rto_seconds is not None else ttl + self.rto_margin_seconds

    def to_dict(self) -> dict:
        return asdict(self)


def first_ack_on(writes: list[Ack], site: str, after: float) -> Ack | None:
    """The first write acknowledged by `site` that was answered after `after`."""
    acked = [w for w in writes if w.acked and w.site == site and w.answered >= after]
    return min(acked, key=lambda w: w.answered) if acked else None


def rto(writes: list[Ack], site: str, since: float) -> float | None:
    """Seconds from `since` to the first ack on `site`; None if it never took a write."""
    first = first_ack_on(writes, site, since)
    return None if first is None else round(first.answered - since, 3)


def rpo(writes: list[Ack], present: set[int]) -> Rpo:
    """Acknowledged writes whose sequence number the new primary does not hold."""
    lost = sorted((w for w in writes if w.acked and w.seq not in present), key=lambda w: w.answered)
    if not lost:
        return Rpo(0, (), 0.0, None, None)
    return Rpo(len(lost), tuple(w.seq for w in lost), round(lost[-1].answered - lost[0].answered, 3),
               lost[0].answered, lost[-1].answered)


def archive_lag(writes: list[Ack], source: str, cut_off: float, recovered_to: float | None) -> float | None:
    """Seconds between the last write the old primary acknowledged before the cut-off and the
    commit time of the last transaction the restore replayed from the archive.

    Every acknowledged write committed after `recovered_to` is lost, and each was acknowledged
    no later than the last ack, so the RPO window can never exceed this lag. None when either
    end is unknown; 0 when the archive held everything acknowledged.
    """
    acked = [w.answered for w in writes if w.acked and w.site == source and w.answered <= cut_off]
    if recovered_to is None or not acked:
        return None
    return round(max(0.0, max(acked) - recovered_to), 3)


def outage(writes: list[Ack], since: float) -> tuple[int, int]:
    """(failed attempts, acknowledged writes) after `since`."""
    after = [w for w in writes if w.sent >= since]
    return sum(not w.acked for w in after), sum(w.acked for w in after)


def judge(targets: Targets, ttl: int, rto_cutoff: float | None, lost: Rpo,
          lag: float | None = None) -> list[str]:
    """Every missed target, as a sentence; empty means the scenario passed."""
    missed = []
    limit = targets.rto_limit(ttl)
    if rto_cutoff is None:
        missed.append("the new site never acknowledged a write through DNS")
    elif rto_cutoff > limit:
        missed.append(f"RTO {rto_cutoff:.1f}s from cut-off exceeds {limit:.1f}s (TTL {ttl}s + margin)")
    if targets.max_writes_lost is not None and lost.lost > targets.max_writes_lost:
        missed.append(f"{lost.lost} acknowledged writes lost (target: at most {targets.max_writes_lost})")
    if targets.rpo_window_seconds is not None and lost.window_seconds > targets.rpo_window_seconds:
        missed.append(f"RPO window {lost.window_seconds:.2f}s exceeds {targets.rpo_window_seconds:.2f}s")
    if targets.rpo_within_archive_lag:
        if lag is None:
            missed.append("the WAL archive lag at cut-off could not be measured")
        elif lost.window_seconds > lag:
            missed.append(f"RPO window {lost.window_seconds:.2f}s exceeds the WAL archive lag {lag:.2f}s")
    return missed


# ---------------------------------------------------------------- the exposure window

def judge_exposure(targets: Targets, window: "Exposure") -> list[str]:
    """The exposure window's target, as a sentence when missed; a window that never closed while
    the drill sampled misses it too."""
    if targets.exposure_seconds is None:
        return []
    if window.seconds is None:
        return [f"the exposure window never closed: no other site flushed the new primary's WAL while sampled "
                f"(target {targets.exposure_seconds:.1f}s)"]
    if window.seconds > targets.exposure_seconds:
        return [f"exposure window {window.seconds:.2f}s exceeds {targets.exposure_seconds:.2f}s (acknowledged "
                f"writes at the new primary only; sampled every {window.interval_seconds:.2f}s at most)"]
    return []


@dataclass(frozen=True)
class LsnSample:
    """One look at the new primary: when, whether it was still in recovery, how far it has
    flushed its own WAL (an acknowledged commit is at most there) and the furthest position
    another site has flushed, and written, by pg_stat_replication; LSNs as integers."""

    at: float
    in_recovery: bool
    current: int | None
    flushed: int | None
    written: int | None = None


@dataclass(frozen=True)
class Exposure:
    """From the new primary's first moment as a primary to the first sample at which another
    site had flushed everything written up to the sample before: while it lasts, acknowledged
    writes live at one site only. `seconds` is None when no site caught up while sampled."""

    started_at: float | None
    ended_at: float | None
    seconds: float | None
    interval_seconds: float


def lsn(text: str) -> int | None:
    """'16/B374D848' -> its byte position; None for an empty field."""
    return walstream.lsn(text) if text else None


def exposure(samples: list[LsnSample], written: bool = False) -> Exposure:
    """The exposure window from the samples (in time order), opened by the last sample still in
    recovery before the first one out of it (no write is acknowledged before the promotion). `written`: measured on what
    another site has received (written, maybe not yet fsynced) instead of flushed."""
    primary = [s for s in samples if not s.in_recovery and s.current is not None]
    gaps = [b.at - a.at for a, b in zip(samples, samples[1:])]
    interval = round(max(gaps), 3) if gaps else 0.0
    if not primary:
        return Exposure(None, None, None, interval)
    # The promotion came after the last look that found it in recovery: the window opens there
    # (an upper bound, by at most one sampling interval).
    before = [s.at for s in samples if s.in_recovery and s.at < primary[0].at]
    start = before[-1] if before else primary[0].at
    for before, sample in zip(primary, primary[1:]):
        reached = sample.written if written else sample.flushed
        if reached is not None and reached >= before.current:
            return Exposure(start, sample.at, round(sample.at - start, 3), interval)
    return Exposure(start, None, None, interval)
