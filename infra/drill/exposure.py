"""The exposure window, sampled: a thread that asks the new primary over SSH, a few times a
second, how far it has flushed its WAL and how far the other sites have (pg_stat_replication),
from the failover's start until another site has caught up (infra.drill.measure.exposure)."""
from __future__ import annotations

import threading
import time

from infra.drill import measure
from infra.sites.site import Site

INTERVAL = 0.1
SQL = ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_flush_lsn()::text END, "
       "coalesce((SELECT max(flush_lsn)::text FROM pg_stat_replication), ''), "
       "coalesce((SELECT max(write_lsn)::text FROM pg_stat_replication), '')")


def parse(line: str, at: float) -> measure.LsnSample | None:
    """psql's `t|0/3000148|0/3000100|0/3000148` as a sample; None for anything else."""
    fields = line.strip().split("|")
    if len(fields) != 4 or fields[0] not in ("t", "f"):
        return None
    recovery, current, flushed, written = fields
    return measure.LsnSample(at, recovery == "t", measure.lsn(current), measure.lsn(flushed), measure.lsn(written))


class ExposureSampler:
    """Samples `site` (its own SSH connection: a Site of a Fleet of its own) on a thread."""

    def __init__(self, site: Site, interval: float = INTERVAL):
        self.site, self.interval = site, interval
        self.samples: list[measure.LsnSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ExposureSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.time()
            try:
                result = self.site.psql(SQL, warn=True, timeout=10)
                sample = parse(result.stdout, at) if result.ok else None
            except Exception:  # noqa: BLE001 - a site that does not answer yet is a missing sample
                sample = None
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self.interval)

    def closed(self) -> bool:
        return measure.exposure(list(self.samples)).seconds is not None

    def stop(self) -> list[measure.LsnSample]:
        self._stop.set()
        self._thread.join(15)
        return list(self.samples)
