"""Rejoin without an operator and re-protection first (issue 15 items 2 and 6), on the local
cloud's Debian VMs (127.0.108.x): aws primary, gcp warm, azure pilot-light.

In order, on one cloud: the dropped warm site, given back (its VM boots), streams again with
lag < 1 s within 3 minutes while writes go on, with no command run; a warm failover to gcp,
with the exposure window sampled on gcp (the pilot-light's WAL receiver follows gcp before any
backup); then aws, the old primary dropped while the failover moved the primary away (its
timeline diverged), given back, rewinds (or re-clones) and streams from gcp by itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from infra.drill import measure
from infra.drill.exposure import ExposureSampler
from infra.sites.fleet import Fleet
from infra.sites.layout import LOG_DIR, REJOIN_PROGRAM
from tests.appclient import APP_PORT, post
from tests.conftest import FAILOVER, ROOT, remove_unmounted

PREFIX = "127.0.108"
AWS, GCP, AZURE = f"{PREFIX}.1", f"{PREFIX}.2", f"{PREFIX}.3"
RETURN_SECONDS = 180  # the bound: streaming again within 3 minutes of being given back

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


def failover(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*FAILOVER, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "FAILOVER_WORKDIR": str(workdir)}, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"failover {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="failover-rejoin-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        failover(workdir, "local", "up", "--seed-mb", "5", "--prefix", PREFIX)
        yield workdir
    finally:
        failover(workdir, "local", "down", check=False)
        remove_unmounted(workdir)


class Writer:
    """Posts to one site's app on a thread (the canary's job, without DNS): acknowledged seqs."""

    def __init__(self, address: str, first: int):
        self.address, self.seq, self.acked = address, first, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seq += 1
            try:
                if post(self.address, self.seq)[0] == 201:
                    self.acked.append(self.seq)
            except OSError:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(15)


def has_seq(fleet: Fleet, site: str, seq: int) -> bool:
    result = fleet.site(site).psql(f"SELECT count(*) FROM posts WHERE canary_seq = {seq}", db="social", warn=True)
    return result.ok and result.stdout.strip() == "1"


def streams(fleet: Fleet, primary: str, follower: str) -> bool:
    result = fleet.site(primary).psql(f"SELECT state FROM pg_stat_replication WHERE application_name = '{follower}'",
                                      warn=True)
    return result.ok and result.stdout.strip() == "streaming"


def replication_lag(fleet: Fleet, primary: str, address: str, follower: str, seq: int) -> float:
    """Seconds from a write acknowledged by the primary's app until the follower has replayed it."""
    status, _ = post(address, seq)
    assert status == 201, f"the primary {primary} did not take write {seq}"
    acked = time.monotonic()
    while not has_seq(fleet, follower, seq):
        assert time.monotonic() - acked < 30, f"{follower} never replayed write {seq}"
        time.sleep(0.05)
    return time.monotonic() - acked


def wait_until(check, seconds: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds:.0f} s: {what}"
        time.sleep(1)
    return time.monotonic() - started


def agent_log(fleet: Fleet, site: str) -> str:
    return fleet.site(site).root().run(f"cat {LOG_DIR}/{REJOIN_PROGRAM}.log", warn=True).stdout


def app_status(address: str) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}:{APP_PORT}/healthz", timeout=3) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_the_dropped_warm_site_given_back_streams_again_with_no_command_run(cloud):
    fleet = Fleet(cloud, app_port=APP_PORT)
    try:
        assert streams(fleet, "aws", "gcp")
        with Writer(AWS, 1000) as writer:
            failover(cloud, "local", "drop", "--site", "gcp")
            time.sleep(3)
            failover(cloud, "local", "restore-site", "--site", "gcp")  # the VM boots; nothing else is run
            statuses = []  # its app's answers until it streams again
            took = wait_until(lambda: statuses.append(app_status(GCP)) or streams(fleet, "aws", "gcp"),
                              RETURN_SECONDS, "gcp streaming from aws again")
            wait_until(lambda: len(writer.acked) > 5, 60, "writes acknowledged by aws")
        lag = replication_lag(fleet, "aws", AWS, "gcp", 5000)
        print(f"gcp streams again {took:.1f} s after restore-site; replication lag {lag:.2f} s")
        assert lag < 1.0, f"lag {lag:.2f} s"
        assert writer.acked and all(has_seq(fleet, "gcp", seq) for seq in writer.acked[-3:])
        # Its app never served its stale data: no answer or 503 (rejoining) until it followed.
        assert 200 not in statuses[:-1], statuses
        wait_until(lambda: "follows the Inventory of epoch 1" in agent_log(fleet, "gcp"), 30, "gcp's agent to finish")
        log = agent_log(fleet, "gcp")
        assert "rejoins: following aws" in log and "only behind" in log, log  # no rewind, no clone needed
        wait_until(lambda: app_status(GCP) == 200, 30, "gcp's app to answer ready (a replica's reads)")
    finally:
        fleet.close()


def test_a_warm_failover_re_protects_first_and_reports_the_exposure_window(cloud):
    fleet = Fleet(cloud, app_port=APP_PORT)
    sampler = ExposureSampler(fleet.site("gcp"))
    try:
        failover(cloud, "local", "drop", "--site", "aws")
        with Writer(GCP, 2000):
            sampler.start()
            failover(cloud, "run", "--to", "gcp", "--yes")
            wait_until(sampler.closed, 60, "another site to flush gcp's WAL")
        samples = sampler.stop()
        flushed, written = measure.exposure(samples), measure.exposure(samples, written=True)
        journal = json.loads(failover(cloud, "journal", "--json").stdout)
        done = {e["step"]: e["detail"] for e in journal["events"] if e["status"] == "done"}
        follow, protect = done["follow"], done["protect"]
        print(f"exposure window after a warm failover: {flushed.seconds} s flushed, {written.seconds} s written "
              f"(sampled every {flushed.interval_seconds} s at most); follow step {follow['follow_seconds']} s, "
              f"then backups {protect['backup_seconds']}")
        assert "streaming over TLS" in follow["followed"]["azure"], follow  # it followed in `follow`, before protect
        assert "already streaming" in protect["followed"]["azure"], protect
        assert flushed.seconds is not None and written.seconds is not None
        assert written.seconds <= flushed.seconds
        assert streams(fleet, "gcp", "azure")
    finally:
        sampler.stop()
        fleet.close()


def test_the_old_primary_given_back_after_the_failover_rejoins_by_rewind_or_clone(cloud):
    """aws was dropped as the primary and gcp promoted (timeline 2): aws's timeline diverged.
    Given back, it must never serve its stale data; it rewinds onto gcp (or re-clones) and streams."""
    fleet = Fleet(cloud, app_port=APP_PORT)
    try:
        with Writer(GCP, 3000) as writer:
            failover(cloud, "local", "restore-site", "--site", "aws")
            took = wait_until(lambda: streams(fleet, "gcp", "aws"), RETURN_SECONDS, "aws streaming from gcp")
            wait_until(lambda: len(writer.acked) > 5, 60, "writes acknowledged by gcp")
        lag = replication_lag(fleet, "gcp", GCP, "aws", 6000)
        wait_until(lambda: "follows the Inventory of epoch 2" in agent_log(fleet, "aws"), 30, "aws's agent to finish")
        log = agent_log(fleet, "aws")
        print(f"aws streams from gcp {took:.1f} s after restore-site; lag {lag:.2f} s; agent: "
              + " / ".join(line for line in log.splitlines() if "rewind" in line or "cloned" in line))
        assert lag < 1.0, f"lag {lag:.2f} s"
        assert "rewound onto gcp" in log or "cloned from gcp" in log, log
        aws = fleet.site("aws")
        assert aws.recovery_state() is True  # a standby: its stale primary never came back
        assert all(has_seq(fleet, "aws", seq) for seq in writer.acked[-3:])
        assert post(AWS, 7000)[0] != 201  # never writable
    finally:
        fleet.close()
