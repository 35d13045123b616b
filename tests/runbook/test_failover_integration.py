"""A warm failover on the local cloud's Debian VMs (127.0.74.x), reached only over SSH.

One cloud for the module: aws (primary), gcp (warm), azure (pilot-light), each a VM with its own
sshd, PostgreSQL, pgBackRest and the app under supervisor; Knot DNS on the host. The tests run in
order: bad inputs change nothing; a failover killed with SIGKILL after each step in turn resumes
every time without repeating a step and loses no acknowledged write; the result takes writes
through DNS at a raised epoch; the old primary, restarted, is fenced.

How fencing is guaranteed (see infra/runbook/steps.py):
- the epoch is raised in the inventory, the new primary's failover.epoch and its app.json; the
  app inserts only while its config's epoch equals its database's, in one statement;
- the old site is fenced (app config `fenced`, PostgreSQL stopped if primary) wherever it can be
  reached: during the failover, and, for a site that was unreachable then and comes back, by
  `failover fence` (which every `failover run` also does first);
- DNS no longer names the old site, so clients that respect the TTL stop reaching it.
"""
from __future__ import annotations

import json
import time
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infra.data import lease
from infra.runbook import steps as steps_mod
from infra.sites.contract import Inventory
from tests.appclient import APP_PORT, dns, health, post, resolve
from tests.conftest import FAILOVER, loopback_prefix, remove_unmounted

ROOT = Path(__file__).resolve().parents[2]
PREFIX = loopback_prefix("127.0.74")
GCP, AWS, AZURE = f"{PREFIX}.2", f"{PREFIX}.1", f"{PREFIX}.3"
PORT = APP_PORT

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]

def failover(workdir: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*FAILOVER, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "FAILOVER_WORKDIR": str(workdir), **(env or {})}, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"failover {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def cloud():
    import tempfile

    # The service user must reach the sites below it: pytest's own tmp dirs are private (0700).
    workdir = Path(tempfile.mkdtemp(prefix="failover-it-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    try:
        failover(workdir, "local", "up", "--seed-mb", "5", "--prefix", PREFIX)
        yield workdir
    finally:
        failover(workdir, "local", "down", check=False)
        remove_unmounted(workdir)


def test_bad_inputs_fail_clearly_before_anything_changes(cloud):
    before = (cloud / "inventory.json").read_text()
    for args, message in ((["--to", "oracle"], "unknown site 'oracle'"),
                          (["--to", "aws"], "already the active primary")):
        result = failover(cloud, "run", *args, "--yes", check=False)
        assert result.returncode == 2 and message in result.stderr
    secret = cloud / "dns" / "knot-a.tsig"
    hidden = secret.with_suffix(".hidden")
    secret.rename(hidden)
    try:
        env = {k: "" for k in os.environ if k.startswith("FAILOVER_DNS_")}
        result = failover(cloud, "run", "--to", "gcp", "--yes", env={"FAILOVER_DNS_KNOT_A_TSIG": ""} | env,
                          check=False)
    finally:
        hidden.rename(secret)
    assert result.returncode == 2 and "DNS secrets missing" in result.stderr, result.stderr
    assert (cloud / "inventory.json").read_text() == before
    assert not (cloud / "journal" / "current.json").exists()
    assert post(AWS, 1)[0] == 201


STEPS = ["claim", "preflight", "fence", "capacity", "promote", "media", "start_app", "prepare_dns", "ready_followers",
         "shift_dns", "take_writes", "verify_dns", "follow", "verify_app", "protect"]
STAGE_OF = {name: index for index, stage in enumerate(steps_mod.FAILOVER_STAGES) for name, _ in stage}


def writable(address: str) -> bool:
    try:
        return bool(health(address)["writable"])
    except OSError:
        return False  # nothing listening (dropped, or no app on a pilot-light site)


def fleet(workdir: Path):
    from infra.sites.fleet import Fleet

    return Fleet(workdir, app_port=PORT)


def test_an_app_on_a_database_in_recovery_serves_reads_and_acknowledges_no_write(cloud):
    """Why DNS may move to a restored site while it still replays WAL (`shift_dns` comes before
    `take_writes`): its app answers reads and refuses every write. Shown on the warm replica,
    which is in recovery the same way (`local up` runs its app too)."""
    status, created = post(AWS, None)
    assert status == 201
    deadline, state = time.monotonic() + 15, None
    while state is None and time.monotonic() < deadline:
        try:
            state = health(GCP)
        except OSError:
            time.sleep(0.2)  # the app is starting
    assert state and state["in_recovery"] and not state["writable"], state
    read, deadline = None, time.monotonic() + 10
    while read is None and time.monotonic() < deadline:
        try:  # the replica has the commit on disk; replaying it can take a moment longer
            with urllib.request.urlopen(f"http://{GCP}:{PORT}/posts/{created['id']}", timeout=5) as reply:
                read = json.loads(reply.read())
        except urllib.error.HTTPError:
            time.sleep(0.1)
    assert read and read["id"] == created["id"]
    assert post(GCP, None)[0] in (409, 503)
    assert post(AWS, None)[0] == 201  # the primary is untouched


def test_sigkill_after_each_step_then_the_rerun_resumes_and_loses_nothing(cloud):
    """One failover killed with SIGKILL after every step in turn (one cloud, reused): each
    rerun resumes at the next step, never repeats one, and the last rerun completes. The
    canary writes through DNS the whole time; no acknowledged write is lost.

    Steps of one stage run at once: one may complete before the step the crash follows (it is
    then skipped), and one still running at the crash is started again by the rerun."""
    from infra.drill.canary import Canary, read_back

    canary = Canary("social.example.", PORT, dns(cloud)).start()
    try:
        deadline = time.monotonic() + 30
        while sum(w.acked for w in canary.writes) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        failover(cloud, "local", "drop", "--site", "aws")
        run_id, done = None, []
        for index, step in enumerate(STEPS):
            if step in done:
                continue  # it completed alongside an earlier step of its stage
            crashed = failover(cloud, "run", "--to", "gcp", "--yes", env={"FAILOVER_CRASH_AFTER": step}, check=False)
            assert crashed.returncode == -9, (step, crashed.returncode, crashed.stderr[-2000:])  # killed by SIGKILL
            journal = json.loads((cloud / "journal" / "current.json").read_text())
            assert run_id in (None, journal["run_id"])
            run_id = journal["run_id"]
            done = [e["step"] for e in journal["events"] if e["status"] == "done"]
            assert len(done) == len(set(done)), (step, done)  # none repeated
            stage_mates = {s for s in STEPS if STAGE_OF[s] == STAGE_OF[step]}
            assert set(STEPS[:index + 1]) <= set(done) <= set(STEPS[:index + 1]) | stage_mates, (step, done)
            if step == "take_writes":  # gcp takes writes from here, and holds its lease (long before protect)
                assert_lease_held_by(cloud, "gcp", 2)

        plan = failover(cloud, "run", "--to", "gcp", "--json")
        assert set(json.loads(plan.stdout)["plan"]["skip"]) == set(STEPS)
        failover(cloud, "run", "--to", "gcp", "--yes")
        deadline = time.monotonic() + 45  # clients keep the old answer for the TTL
        while not canary.acked_on("gcp") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    finally:
        writes = canary.stop()

    shown = json.loads(failover(cloud, "journal", "--json").stdout)
    assert shown["complete"] and shown["run_id"] == run_id
    assert all(step["status"] == "done" for step in shown["steps"]), shown["steps"]
    done_events = [e["step"] for e in shown["events"] if e["status"] == "done"]
    assert sorted(done_events) == sorted(STEPS)  # every step completed exactly once
    copy = json.loads((cloud / "vms" / "stores" / "gcp" / "media" / ".failover" / "journal.json").read_text())
    assert copy["run_id"] == run_id and copy["finished"]

    acked = [w for w in writes if w.acked]
    present = read_back(GCP, PORT)
    lost = [w.seq for w in acked if w.seq not in present]
    assert any(w.site == "aws" for w in acked) and any(w.site == "gcp" for w in acked)
    assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
    # Exactly one site takes writes: only gcp reports writable, and a write through DNS lands there.
    assert [a for a in (AWS, GCP, AZURE) if writable(a)] == [GCP]
    assert post(resolve(cloud), 5)[1].get("site") == "gcp"


def assert_lease_held_by(workdir: Path, site: str, epoch: int) -> None:
    """A majority of all the stores hold `site`'s lease at `epoch`, renewed after this call began."""
    began, inventory = time.time(), Inventory.load(workdir / "inventory.json")
    stores = lease.stores(inventory)
    deadline = time.monotonic() + 2 * lease.RENEW_EVERY + lease.ROUND_TIMEOUT
    while True:
        seen = lease.read(stores)
        held = [s.site for s in seen if s.lease and (s.lease.holder, s.lease.epoch, s.lease.state) ==
                (site, epoch, lease.HELD) and s.lease.renewed_at >= began]
        if len(held) >= lease.majority(len(stores)):
            return
        assert time.monotonic() < deadline, f"{site}'s lease at epoch {epoch} is not renewed at a majority: " + \
            "; ".join(f"{s.site}: {s.error or s.lease}" for s in seen)
        time.sleep(0.2)


def test_new_primary_takes_writes_through_dns_at_a_raised_epoch(cloud):
    assert resolve(cloud) == GCP
    status, body = post(resolve(cloud), 2)
    assert status == 201 and body["site"] == "gcp"
    state = health(GCP)
    assert state["writable"] and state["epoch"] == state["db_epoch"] == 2
    assert json.loads((cloud / "inventory.json").read_text())["epoch"] == 2
    assert json.loads((cloud / "inventory.json").read_text())["active"] == "gcp"


def test_the_synchronous_replica_was_promoted_without_archive_look_ups_and_the_archive_is_back(cloud):
    from infra.sites.site import PATHS

    gcp = fleet(cloud).site("gcp")
    log = gcp.service().run("cat /var/log/postgresql/postgresql-15-main.log").stdout
    promotion = log.split("received promote request", 1)[1].split("ready to accept connections", 1)[0]
    # Each archive look-up that finds nothing ends in the local fallback (cp), which says so.
    assert "timeline ID: 2" in promotion and "cp: cannot stat" not in promotion, promotion
    assert not gcp.service().run(f"test -e {PATHS.archive_off}", warn=True).ok


def test_restarted_old_primary_refuses_writes(cloud):
    """The provider gives aws back and it boots as it was: its PostgreSQL (a primary at epoch 1)
    and its app start behind the runbook's back. The app sees gcp's higher epoch and refuses
    writes before anything fences it; `failover fence` then stops its database over SSH."""
    from infra.sites import services

    failover(cloud, "local", "restore-site", "--site", "aws", "--sshd-only")
    aws = fleet(cloud).site("aws")
    aws.root().run("rm -f /etc/supervisor/conf.d/failover-rejoin.conf")  # a host without the rejoin agent
    aws.cluster("start")
    services.start_app(aws, aws.app_config())  # its old config (epoch 1), as it booted with
    status, deadline = None, time.monotonic() + 15
    while status is None and time.monotonic() < deadline:
        try:
            status = post(AWS, 3)[0]
        except urllib.error.URLError:
            time.sleep(0.2)  # connection refused while the app starts
    assert status == 409, status
    assert health(AWS)["superseded"] is True and health(AWS)["writable"] is False
    fenced = json.loads(failover(cloud, "fence", "--json").stdout)["fenced"]
    assert "PostgreSQL stopped" in fenced["aws"], fenced
    assert not aws.db_running()
    status, body = post(AWS, 3)
    assert status in (409, 503), body
    assert resolve(cloud) == GCP
    assert post(GCP, 4)[0] == 201


def test_a_dns_provider_that_is_down_does_not_block_the_failover(cloud):
    """A provider can belong to the cloud that dropped us: the runbook moves the others and names it."""
    from dns.resolver import Resolver

    from infra.sites.processes import ProcessTable

    assert ProcessTable(cloud).stop("dns-knot-b")
    result = failover(cloud, "run", "--to", "azure", "--yes", "--json")
    assert "provider knot-b failed" in result.stderr
    journal = json.loads(failover(cloud, "journal", "--json").stdout)
    assert journal["complete"]
    shift = next(e for e in journal["events"] if e["step"] == "shift_dns" and e["status"] == "done")
    assert list(shift["detail"]["failed"]) == ["knot-b"]
    (knot_a, port), _ = dns(cloud)
    resolver = Resolver(configure=False)
    resolver.nameservers, resolver.port = [knot_a], port
    assert [r.address for r in resolver.resolve("social.example.", "A")] == [AZURE]
    assert post(AZURE, 6)[1].get("site") == "azure"
