"""Lease rounds through rclone against the S3, GCS and Azure emulators: the round times the lease
length is chosen from (docs/lease.md), and a store that stops answering costs one store.

The emulators listen on 127.0.106.11-13 (one address per site). Each round is what a host does:
`rclone rcat` of the lease object and `rclone lsf` of the claims, per store, in parallel.
"""
from __future__ import annotations

import shutil
import statistics

import pytest

from infra.data import claims, lease
from infra.data import objectstores  # noqa: F401  (registers s3, gcs, azure)
from infra.data.storage import Store
from infra.sites import emulators
from infra.sites.contract import SiteOutputs
from infra.sites.processes import ProcessTable
from tests.conftest import service_dir
from tests.data.emulated import free_block, require_tools

pytestmark = pytest.mark.integration
SITES = [(0, "aws"), (1, "gcp"), (2, "azure")]
HOSTS = [f"127.0.106.{11 + i}" for i, _ in SITES]
ROUNDS = 20


@pytest.fixture(scope="module")
def stores():
    require_tools()
    workdir = service_dir("lease-emulated")
    base = free_block(HOSTS, 19100, 19700)
    try:
        made = []
        for (index, site), host in zip(SITES, HOSTS):
            repository, media, credentials = emulators.start_emulated(workdir, index, site, base, host)
            made.append(Store(SiteOutputs(site, "emulated", "loopback", "warm", (host,), (host,), "failover", host, 5432,
                                          repository, media, credentials)))
        yield workdir, base, made
    finally:
        table = ProcessTable(workdir)
        for name in table.names():
            table.stop(name)
        shutil.rmtree(workdir, ignore_errors=True)


def test_rounds_through_rclone_hold_and_their_times_are_well_inside_the_lease(stores):
    _, _, made = stores
    holder = lease.Holder("aws", 1, made, lambda v: "not fenced", log=lambda m: None)
    times = []
    for _ in range(ROUNDS):
        result = holder.renew_once()
        assert result.holds(1), result.describe()
        times.append(holder.state.rounds[-1])
    per_store = {a.site: a.seconds for a in result.answers}
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"\nlease rounds through rclone (S3, GCS, Azure emulators): n={len(times)} "
          f"p50={statistics.median(times) * 1000:.0f} ms p99={p99 * 1000:.0f} ms max={times[-1] * 1000:.0f} ms; "
          f"last round per store: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per_store.items()))
    assert times[-1] < lease.ROUND_TIMEOUT
    seen = lease.read(made)
    assert all(s.lease and s.lease.seq == holder.state.seq for s in seen), seen


def test_a_claim_in_one_emulated_store_is_seen_and_a_stopped_emulator_costs_one_store(stores):
    workdir, base, made = stores
    holder = lease.Holder("aws", 1, made, lambda v: "stopped", log=lambda m: None)
    assert holder.renew_once().holds(1)
    emulators.emulator(workdir, 2, "azure", base, HOSTS[2]).stop()
    result = holder.renew_once()
    assert result.holds(1) and result.renewed == ["aws", "gcp"], result.describe()
    made[1].create(claims.key(2), b'{"test": "a later run"}')
    result = holder.renew_once()
    assert result.higher_claim(1).site == "gcp" and holder.decide().why == "claim"
