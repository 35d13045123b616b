"""The engine needs nothing but SSH and the stores: `status`, `snapshot`, `run` and `back` as an
unprivileged OS user (127.0.82.x).

Root plays the providers: it brings the VM cloud up and cuts a site off (`local drop`) or gives
it back (`local restore-site`). The operator is uid OPERATOR_UID, not in /etc/passwd, with no
capabilities. It holds only:
- the toolkit's SSH key and known_hosts (copies it owns, mode 600);
- the Inventory and the DNS providers' config with their TSIG keys (in its own work directory);
- the stores' credential, which for these posix stores (an NFS stand-in) is the group that owns
  them;
- the backup and media encryption keys, in its environment.
It has no read access to any VM's files, no CA and no replication password: the runbook
re-protects with what the sites already hold. It runs the system python3 with the venv's
packages on PYTHONPATH (the venv's interpreter lives under /root).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.appclient import health, post
from tests.conftest import ENCRYPTION_KEYS, ROOT, failover, remove_unmounted, service_dir

PREFIX = "127.0.82"
AWS, GCP = f"{PREFIX}.1", f"{PREFIX}.2"
OPERATOR_UID = 60123
SITE_PACKAGES = ROOT / ".venv/lib/python3.11/site-packages"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                                 reason="needs root (the VMs) and the system python3")]


@pytest.fixture(scope="module")
def cloud():
    workdir = service_dir("operator")
    try:
        failover("local", "up", "--seed-mb", "5", "--prefix", PREFIX, workdir=workdir, timeout=900)
        yield workdir
    finally:
        failover("local", "down", workdir=workdir, check=False)
        remove_unmounted(workdir)


@pytest.fixture(scope="module")
def operator(cloud):
    """The operator's home: its key, known_hosts, Inventory and DNS config, nothing else."""
    home = service_dir("operator-home")
    gid = (cloud / "vms" / "stores" / "aws" / "media").stat().st_gid  # the stores' group: their credential
    work, ssh = home / "work", home / "ssh"
    (work / "dns").mkdir(parents=True)
    ssh.mkdir()
    shutil.copy(cloud / "vms" / "ssh" / "id_ed25519", ssh / "id_ed25519")
    shutil.copy(cloud / "vms" / "ssh" / "known_hosts", ssh / "known_hosts")
    shutil.copy(cloud / "inventory.json", work / "inventory.json")
    shutil.copy(cloud / "dns.json", work / "dns.json")  # the local cloud's DNS providers, chosen explicitly
    for item in (cloud / "dns").iterdir():
        if item.name == "providers.yaml" or item.suffix == ".tsig":
            shutil.copy(item, work / "dns" / item.name)
    for path in [home, *home.rglob("*")]:
        os.chown(path, OPERATOR_UID, gid)
    (ssh / "id_ed25519").chmod(0o600)
    home.chmod(0o700)
    try:
        yield home, gid
    finally:
        shutil.rmtree(home, ignore_errors=True)


def as_operator(operator, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    home, gid = operator
    env = {"HOME": str(home), "USER": "operator", "LOGNAME": "operator", "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SITE_PACKAGES}:{ROOT}",
           "PYTHONDONTWRITEBYTECODE": "1", "FAILOVER_WORKDIR": str(home / "work"),
           "FAILOVER_SSH_KEY": str(home / "ssh" / "id_ed25519"),
           "FAILOVER_SSH_KNOWN_HOSTS": str(home / "ssh" / "known_hosts"),
           # The backup and media keys, which an operator holds (password manager) like the SSH key.
           **{name: os.environ[name] for name in ENCRYPTION_KEYS}}
    argv = ["setpriv", f"--reuid={OPERATOR_UID}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "/usr/bin/python3", "-m", "infra.cli", *args]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"operator: failover {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stderr[-3000:]}\n{result.stdout[-2000:]}")
    return result


def test_the_operator_cannot_read_any_vms_files(cloud, operator):
    home, gid = operator
    for site in ("aws", "gcp", "azure"):
        probe = ["setpriv", f"--reuid={OPERATOR_UID}", f"--regid={gid}", "--clear-groups",
                 "test", "-r", str(cloud / "vms" / site / "root" / "etc" / "hostname")]
        assert subprocess.run(probe).returncode != 0, f"the operator reads {site}'s VM files"
        assert subprocess.run(["test", "-r", str(cloud / "vms" / site / "root" / "etc" / "hostname")]).returncode == 0
    secrets = ["setpriv", f"--reuid={OPERATOR_UID}", f"--regid={gid}", "--clear-groups",
               "test", "-r", str(cloud / "vms" / "secrets.env")]
    assert subprocess.run(secrets).returncode != 0


def test_status_and_snapshot_as_the_operator(cloud, operator):
    status = json.loads(as_operator(operator, "status", "--json").stdout)
    assert status["active"] == "aws"
    assert {s["name"]: s["reachable"] for s in status["sites"]} == {"aws": True, "gcp": True, "azure": True}
    gcp = next(s for s in status["sites"] if s["name"] == "gcp")
    assert gcp["replica_lag_bytes"] is not None
    assert all(r["last_backup"] for s in status["sites"] for r in s["repositories"]), status
    snapshot = json.loads(as_operator(operator, "snapshot", "--json").stdout)
    assert snapshot["ok"] and len([r for r in snapshot["results"] if r["repo"].startswith("repo")]) >= 3
    manifest = cloud / "vms" / "stores" / "gcp" / "media" / ".failover" / "checksums.json"
    assert manifest.stat().st_uid == OPERATOR_UID  # written by the operator, through the store


def test_run_and_back_as_the_operator(cloud, operator):
    assert post(AWS, 1)[0] == 201
    failover("local", "drop", "--site", "aws", workdir=cloud)  # the provider, not the operator
    as_operator(operator, "run", "--to", "gcp", "--yes")
    state = health(GCP)
    assert state["writable"] and state["epoch"] == 2
    assert post(GCP, 2)[0] == 201
    inventory = json.loads((operator[0] / "work" / "inventory.json").read_text())
    assert inventory["active"] == "gcp" and inventory["epoch"] == 2
    copy = json.loads((cloud / "vms" / "stores" / "azure" / "media" / ".failover" / "inventory.json").read_text())
    assert copy["active"] == "gcp" and copy["epoch"] == 2

    failover("local", "restore-site", "--site", "aws", "--sshd-only", workdir=cloud)  # failback re-seeds it
    as_operator(operator, "back", "--to", "aws", "--yes")
    state = health(AWS)
    assert state["writable"] and state["epoch"] == 3
    status, body = post(AWS, 3)
    assert status == 201 and body["site"] == "aws"
    journal = json.loads(as_operator(operator, "journal", "--json").stdout)
    assert journal["kind"] == "failback" and journal["complete"]
