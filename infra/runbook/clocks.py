"""Preflight's clock check: each reachable host's clock offset from the operator's, over SSH.

The claim needs no clock, but the lease that a primary renews in the stores does: the primary
and the failover judge its expiry with different clocks, and docs/claims.md ("Clocks") states
the bound that protocol assumes between them, BOUND seconds. A host beyond it has lost its time
sync, so the runbook refuses to go on rather than trust a lease judged with it.

The offset is measured as NTP does, over the host's long-lived SSH shell: the operator's clock
before sending (t0) and after the answer (t1), the host's clock in between (h). The host read
its clock somewhere in [t0, t1], so its offset is h - (t0 + t1) / 2 within ± (t1 - t0) / 2: the
error is bounded by half the round-trip. Of several samples the one with the shortest
round-trip is kept (the tightest bound). A host passes only when its offset is within the bound
even at the worst end of that error.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

BOUND = 1.0  # seconds between any host's clock and the operator's (docs/claims.md, Clocks)
SAMPLES = 5
READ_CLOCK = "date +%s.%N"  # GNU date: seconds since the epoch, to the nanosecond


@dataclass(frozen=True)
class Offset:
    """One host's clock against the operator's: `offset` seconds ahead (negative: behind),
    known within ± `error` seconds (half the round-trip of the best sample)."""

    site: str
    host: str
    offset: float
    error: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate(site: str, host: str, samples: list[tuple[float, float, float]]) -> Offset:
    """The offset from samples of (operator's clock before, host's clock, operator's clock after)."""
    if not samples:
        raise ValueError(f"site {site}: no clock samples from host {host}")
    sent, read, received = min(samples, key=lambda s: s[2] - s[0])
    return Offset(site, host, read - (sent + received) / 2, (received - sent) / 2)


def problems(offsets: list[Offset], bound: float = BOUND) -> list[str]:
    """One message per host whose clock is not provably within `bound` of the operator's."""
    found = []
    for o in offsets:
        if abs(o.offset) + o.error <= bound:
            continue
        way = "ahead of" if o.offset > 0 else "behind"
        measured = (f"site {o.site}: host {o.host}'s clock is {abs(o.offset):.3f} s {way} this machine's "
                    f"(± {o.error:.3f} s, measured over SSH)")
        if abs(o.offset) - o.error <= bound:  # within the bound at one end of the error, beyond it at the other
            measured += (f", which cannot be shown to be within {bound:g} s: the SSH round-trip took "
                         f"{2 * o.error:.3f} s; run again when the link is faster")
        found.append(measured)
    return found


def refusal(found: list[str], bound: float = BOUND) -> str:
    return ("; ".join(found) + f". The failover protocol assumes every host's clock within {bound:g} s of the "
            "operator's (docs/claims.md, Clocks): a lease is judged by both sides' clocks. Fix time sync on that "
            "host or on this machine (`timedatectl status`, `chronyc tracking`: NTP on, synchronised), then run "
            "the same command again (it resumes)")


def measure(site: str, host: str, run: Callable[[str], str], clock: Callable[[], float] = time.time,
            samples: int = SAMPLES) -> Offset:
    """Samples the host's clock through `run` (a command on the host, returning its stdout)."""
    run("true")  # opens the shell (and sudo) first: that costs far more than a round-trip
    taken = []
    for _ in range(samples):
        sent = clock()
        text = run(READ_CLOCK)
        received = clock()
        taken.append((sent, float(text.strip()), received))
    return estimate(site, host, taken)
