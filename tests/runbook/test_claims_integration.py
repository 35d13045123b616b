"""Claimed epochs in the runbook, on the local cloud's VMs (127.0.104.x): two failovers started
together after the primary is dropped, each from its own operator's work directory (two
operators, or an operator and a pipeline); the clock check of preflight over SSH; the fence
receipt of a live old primary.

Each race runs on a fresh cloud (`local down` + `local up` between rounds): the race's winner
is a new primary, and going back would need `failover back` to the old one, which a known
pg_receivewal bug (another branch) trips after a failover to the pilot-light. Both orders are
raced (gcp's run started first, then azure's); FAILOVER_CLAIMS_RACE_ROUNDS repeats each (1 by
default: each round costs a cloud, about a minute).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infra.errors import FailoverError
from infra.runbook import steps
from infra.sites.fleet import Fleet
from infra.spec import load_spec
from tests.appclient import APP_PORT, health, post, resolve
from tests.conftest import FAILOVER, ROOT, failover, loopback_prefix, remove_unmounted, service_dir

PREFIX = loopback_prefix("127.0.104")
ADDRESS = {"aws": f"{PREFIX}.1", "gcp": f"{PREFIX}.2", "azure": f"{PREFIX}.3"}
ROUNDS = int(os.environ.get("FAILOVER_CLAIMS_RACE_ROUNDS", "1"))
LOSER = re.compile(r"this run (\w+) \(target (\w+), host ([^)]+)\) stops before changing anything")
WINNER = re.compile(r"epoch (\d+) belongs to run (\w+) \(target (\w+), host ([^)]+)\)")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the VMs' mounts and chroots)")]


@dataclass
class Cloud:
    workdir: Path
    used: bool = False  # a round changed it: the next one rebuilds it
    winner: dict = field(default_factory=dict)  # the last round's winner: its site and work directory
    operators: list[Path] = field(default_factory=list)  # their work directories, removed at the end

    def up(self) -> None:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, workdir=self.workdir, timeout=900)

    def down(self) -> None:
        failover("local", "down", workdir=self.workdir, check=False)

    def fresh(self) -> None:
        if self.used:
            self.down()
            self.up()
        self.used = True


@pytest.fixture(scope="module")
def cloud():
    workdir = service_dir("claims")
    state = Cloud(workdir)
    try:
        state.up()
        yield state
    finally:
        state.down()
        for home in state.operators:
            shutil.rmtree(home, ignore_errors=True)
        remove_unmounted(workdir)


def operator(cloud: Cloud) -> Path:
    """An operator's own work directory: the Inventory, the DNS providers' config and TSIG keys,
    the SSH key and known_hosts, copied from the cloud's (as in tests/sites/test_operator.py)."""
    home = service_dir("claims-op")
    cloud.operators.append(home)
    (home / "dns").mkdir()
    (home / "vms" / "ssh").mkdir(parents=True)
    for name in ("id_ed25519", "known_hosts"):
        shutil.copy(cloud.workdir / "vms" / "ssh" / name, home / "vms" / "ssh" / name)
    for name in ("inventory.json", "dns.json"):
        shutil.copy(cloud.workdir / name, home / name)
    for item in (cloud.workdir / "dns").iterdir():
        if item.name == "providers.yaml" or item.suffix == ".tsig":
            shutil.copy(item, home / "dns" / item.name)
    secrets = cloud.workdir / "vms" / "secrets.env"  # absent when this process's environment had them (a Fleet loads it)
    if secrets.exists():
        shutil.copy(secrets, home / "secrets.env")
    return home


def start(home: Path, target: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*FAILOVER, "run", "--to", target, "--yes", *extra], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "FAILOVER_WORKDIR": str(home), **(env or {})})


def flat(text: str) -> str:
    """Output as one line: rich wraps long lines at the console's width."""
    return " ".join(text.split())


def writable(site: str) -> bool:
    try:
        return bool(health(ADDRESS[site])["writable"])
    except OSError:
        return False  # nothing listening: dropped, or a pilot-light site without its app


def claim_holders(cloud: Cloud, epoch: int) -> dict[str, str]:
    """run id per store that holds epoch's claim object (read from the stores' directories)."""
    found = {}
    for site in ADDRESS:
        path = cloud.workdir / "vms" / "stores" / site / "media" / ".failover" / "claims" / f"epoch-{epoch:06d}.json"
        if path.exists():
            found[site] = json.loads(path.read_text())["run_id"]
    return found


def state_of(site: str, cloud: Cloud) -> dict:
    """What a failover to `site` would have changed there: its role in recovery and its app."""
    fleet = Fleet(cloud.workdir, app_port=APP_PORT)
    try:
        host = fleet.site(site)
        return {"in_recovery": host.recovery_state(), "app_epoch": host.app_config().get("epoch"),
                "writable": writable(site)}
    finally:
        fleet.close()


# ---------------------------------------------------------------- the clock check, over SSH

def test_preflight_measures_every_hosts_clock_and_refuses_one_that_is_off(cloud):
    """The VMs share this machine's kernel clock: offsets are about 0, bounded by the round-trip.
    A `date` that runs 5 s ahead on gcp's host (the clock preflight reads) is refused, named."""
    fleet = Fleet(cloud.workdir, app_port=APP_PORT)
    run = steps.Run(fleet, load_spec(ROOT / "Pulumi.yaml"), ROOT / "Pulumi.yaml", "aws", "gcp", 2, None)
    gcp = fleet.site("gcp")
    try:
        offsets = steps.check_clocks(run)
        assert set(offsets) == {"aws", "gcp", "azure"}
        for measured in offsets.values():
            assert abs(measured["offset"]) <= measured["error"] + 0.05, offsets  # the same clock, within the RTT
            assert measured["error"] < 0.5, offsets
        ahead = ('#!/bin/sh\n# a clock 5 s ahead (test_claims_integration)\n'
                 'exec /usr/bin/date -d "@$(/usr/bin/date +%s.%N | awk \'{printf "%.9f", $1 + 5}\')" "$@"\n')
        gcp.write("/usr/local/bin/date", ahead, owner="root", mode="755")
        try:
            with pytest.raises(FailoverError) as refused:
                steps.check_clocks(run)
        finally:
            gcp.root().run("rm -f /usr/local/bin/date")
        message = flat(str(refused.value))
        found = re.search(r"site gcp: host (\S+)'s clock is ([\d.]+) s ahead of this machine's", message)
        assert found and found.group(1) == gcp.db_host and 4.8 < float(found.group(2)) < 5.2, message
        assert "within 1 s of the operator's" in message and "timedatectl" in message
        assert "site aws" not in message and "site azure" not in message
        assert set(steps.check_clocks(run)) == {"aws", "gcp", "azure"}  # the wrapper is gone
    finally:
        fleet.close()


# ---------------------------------------------------------------- two runs at once

RACES = [(first, n) for n in range(ROUNDS) for first in ("gcp", "azure")]


@pytest.mark.parametrize("first,round_", RACES, ids=[f"{f}-first-{n}" for f, n in RACES])
def test_two_failovers_started_together_one_wins_the_other_changes_nothing(cloud, first, round_):
    """`run --to gcp` and `run --to azure`, from two work directories, started together after
    aws is dropped. In the first round both are killed right after their claim (only the
    winner gets that far: the loser stops at its claim), and the winner is then resumed."""
    cloud.fresh()
    crash = round_ == 0 and first == "gcp"
    assert post(ADDRESS["aws"], 1)[0] == 201
    failover("local", "drop", "--site", "aws", workdir=cloud.workdir)
    homes = {"gcp": operator(cloud), "azure": operator(cloud)}
    before = {site: (home / "inventory.json").read_text() for site, home in homes.items()}
    targets = {site: state_of(site, cloud) for site in homes}
    second = "azure" if first == "gcp" else "gcp"
    env = {"FAILOVER_CRASH_AFTER": "claim"} if crash else {}
    runs = {first: start(homes[first], first, env=env)}
    runs[second] = start(homes[second], second, env=env)
    results = {site: (proc.wait(timeout=600), *proc.communicate()) for site, proc in runs.items()}

    exits = {site: code for site, (code, _, _) in results.items()}
    winners = [site for site, code in exits.items() if code == (-9 if crash else 0)]
    assert len(winners) == 1 and sorted(exits.values()) == sorted([-9 if crash else 0, 2]), (
        exits, {s: r[2][-2000:] for s, r in results.items()})
    won = winners[0]
    lost = "azure" if won == "gcp" else "gcp"
    journal = json.loads((homes[won] / "journal" / "current.json").read_text()) if crash else json.loads(
        failover("journal", "--json", workdir=homes[won]).stdout)

    # The loser names the winner (target, run id, host) and changed nothing.
    message = flat(results[lost][2])
    named = WINNER.search(message)
    assert named, message
    assert (int(named.group(1)), named.group(2), named.group(3)) == (2, journal["run_id"], won), message
    me = LOSER.search(message)
    assert me and me.group(2) == lost and me.group(3) == named.group(4) == os.uname().nodename, message
    assert f"failover run --to {lost} --epoch 3 --yes" in message
    assert not (homes[lost] / "journal").exists()  # no journal of its own, not even a closed one
    assert (homes[lost] / "inventory.json").read_text() == before[lost]
    copies = [cloud.workdir / "vms" / "stores" / s / "media" / ".failover" / "journal.json" for s in ("gcp", "azure")]
    assert all(json.loads(c.read_text())["run_id"] == journal["run_id"] for c in copies if c.exists())
    holders = claim_holders(cloud, 2)
    assert list(holders.values()).count(journal["run_id"]) == 2, holders  # gcp's and azure's stores: 2 of 3
    assert claim_holders(cloud, 3) == {}
    assert journal["epoch"] == 2 and journal["events"][1]["step"] == "claim"
    assert journal["events"][1]["detail"]["held"] == ["azure", "gcp"]

    if crash:  # the winner, resumed from its work directory, recognises its own claim and finishes
        resumed = failover("run", "--to", won, "--yes", workdir=homes[won])
        assert "epoch 2 is still this run's own, held in azure, gcp (recognised by its run id)" in flat(resumed.stderr)
        done = json.loads(failover("journal", "--json", workdir=homes[won]).stdout)
        assert done["complete"] and done["run_id"] == journal["run_id"]
        assert [e["step"] for e in done["events"] if e["status"] == "done"].count("claim") == 1
        assert claim_holders(cloud, 2) == holders and claim_holders(cloud, 3) == {}

    # Exactly one site takes writes: the winner's target, through DNS too.
    assert [site for site in ADDRESS if writable(site)] == [won]
    assert post(resolve(cloud.workdir), 2)[1].get("site") == won
    left = state_of(lost, cloud)
    # Not promoted (the winner's `protect` may have re-cloned it as its replica since).
    assert targets[lost]["in_recovery"] is not False
    assert left["in_recovery"] is not False and not left["writable"], (targets[lost], left)
    inventory = json.loads((homes[won] / "inventory.json").read_text())
    assert inventory["active"] == won and inventory["epoch"] == 2
    cloud.winner = {"site": won, "home": homes[won], "other": lost}
    claimed = journal["events"][1]["detail"]
    print(f"round {round_}, {first}'s run started first: {won} won epoch 2 in {claimed['seconds']} s "
          f"({claimed['stores']}); {lost}'s run exited {exits[lost]}")


def test_a_live_old_primary_is_fenced_with_a_receipt_from_its_wal(cloud):
    """The last race's winner is a live primary: a failover away from it stops it, and its
    journal and output carry the receipt: its last commit, the fence point, no COMMIT after it."""
    won, home, other = cloud.winner["site"], cloud.winner["home"], cloud.winner["other"]
    status, _ = post(ADDRESS[won], 7)
    assert status == 201
    result = failover("run", "--to", other, "--yes", workdir=home)
    journal = json.loads(failover("journal", "--json", workdir=home).stdout)
    fence = next(e for e in journal["events"] if e["step"] == "fence" and e["status"] == "done")["detail"]
    receipt = fence["receipt"]
    assert receipt["site"] == won and receipt["state"] == "shut down", receipt
    assert receipt["fence_point"] == "shutdown checkpoint"
    assert receipt["records_after_fence"] == [f"{receipt['fence_lsn']} XLOG CHECKPOINT_SHUTDOWN"], receipt
    assert receipt["commits_after_fence"] == 0 and receipt["last_commit_lsn"], receipt
    high, low = (int(part, 16) for part in receipt["last_commit_lsn"].split("/"))
    fence_high, fence_low = (int(part, 16) for part in receipt["fence_lsn"].split("/"))
    assert (high, low) < (fence_high, fence_low)
    assert f"fence receipt: {won} fenced at LSN {receipt['fence_lsn']}" in flat(result.stdout)
    assert f"fence receipt: {won} (host " in flat(result.stderr)  # the progress line, while it ran
    assert journal["epoch"] == 3 and claim_holders(cloud, 3) and set(claim_holders(cloud, 3).values()) == {
        journal["run_id"]}
    assert [site for site in ADDRESS if writable(site)] == [other]
    cloud.used = True
