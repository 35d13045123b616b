"""`failover restore --scratch`: a restore test that leaves the site, DNS and the inventory as they were.

It runs on the local cloud's standby sites, and over real SSH (Fabric to an sshd on loopback)
on a host laid out like a cloud VM, as the weekly drill runs it against the real standby cloud.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from infra.data import integrity, scratch
from infra.data.pgbackrest import HostPaths
from infra.sites.contract import Inventory
from infra.spec import load_spec
from tests.conftest import ROOT, failover, failover_json, local_cloud, service_dir

pytestmark = pytest.mark.integration
PREFIX = "127.0.24"
SPEC = load_spec(ROOT / "Pulumi.yaml")


@pytest.fixture(scope="module")
def cloud():
    with local_cloud("scratch", "--prefix", PREFIX, "--seed-mb", "5") as local:
        failover("snapshot", workdir=local.workdir)
        yield local


def postmaster_pid(site) -> str:
    return Path(site.paths.pgdata, "postmaster.pid").read_text().split()[0]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def replica_streams(cloud, name: str) -> bool:
    from invoke import Context

    from playbooks import postgres

    primary = cloud.site(cloud.inventory().active)
    return postgres.streaming(Context(), primary.address, 15432, name)


def test_scratch_restore_verifies_and_leaves_the_warm_site_as_it_was(cloud):
    gcp = cloud.site("gcp")
    pid, config = postmaster_pid(gcp), digest(gcp.paths.config)
    inventory = cloud.inventory_file.read_text()
    result = failover_json("restore", "--yes", "--site", "gcp", "--scratch", workdir=cloud.workdir)
    assert result["verified"] and result["removed"] and result["port"] == 15432 + scratch.PORT_OFFSET
    assert all(check["match"] and check["restored_rows"] > 0 for check in result["checks"].values()), result["checks"]
    assert not Path(result["scratch"]).exists() and not Path(f"{result['scratch']}.log").exists()
    assert postmaster_pid(gcp) == pid and replica_streams(cloud, "gcp")  # the replica never stopped
    assert digest(gcp.paths.config) == config and cloud.inventory_file.read_text() == inventory


def test_scratch_restore_runs_on_a_pilot_light_site_from_a_chosen_repository(cloud):
    result = failover_json("restore", "--yes", "--site", "azure", "--scratch", "--repo", "repo2", workdir=cloud.workdir)
    assert result["verified"] and (result["repo"], result["source_site"]) == ("repo2", "gcp")


def test_a_restore_that_differs_from_the_manifest_fails(cloud):
    """Proof that the check compares: a manifest that disagrees with the backup makes the test fail.

    The primary's copy is changed (the media replicator would put back any other), and read
    first because the restore comes from the primary's repository."""
    manifest = cloud.site("aws").media_dir / integrity.MANIFEST
    original = manifest.read_text()
    tampered = json.loads(original)
    tampered["tables"]["posts"]["md5"] = "0" * 32
    manifest.write_text(json.dumps(tampered))
    try:
        result = failover("restore", "--yes", "--site", "gcp", "--scratch", "--repo", "aws", "--json", workdir=cloud.workdir,
                          check=False)
    finally:
        manifest.write_text(original)
    assert result.returncode == 1
    checks = json.loads(result.stdout)["checks"]
    assert not checks["posts"]["match"] and checks["users"]["match"]
    assert not (Path(cloud.site("gcp").root) / "scratch-restore").exists()


def test_without_a_manifest_the_error_says_to_take_a_snapshot(cloud):
    manifests = [cloud.site(name).media_dir / integrity.MANIFEST for name in ("aws", "gcp", "azure")]
    for manifest in manifests:  # every copy, or the media replicator brings one back
        manifest.rename(manifest.with_suffix(".hidden"))
    try:
        result = failover("restore", "--yes", "--site", "gcp", "--scratch", "--repo", "gcp", workdir=cloud.workdir, check=False)
    finally:
        for manifest in manifests:
            manifest.with_suffix(".hidden").rename(manifest)
    assert result.returncode == 2
    assert "no checksum manifest" in result.stderr and "failover snapshot" in result.stderr


def test_ssh_needs_scratch(cloud):
    result = failover("restore", "--site", "gcp", "--ssh", workdir=cloud.workdir, check=False)
    assert result.returncode == 2 and "--ssh works only with --scratch" in result.stderr


def gcp_behind_ssh(cloud, port: int) -> Inventory:
    """The local cloud's inventory, with gcp's database host reached through the test's sshd as root."""
    local = cloud.inventory()
    vm = replace(local.site("gcp"), ssh_hosts=(f"127.0.0.1:{port}",), ssh_user="root")
    return Inventory([vm if s.site == "gcp" else s for s in local.sites], local.active, local.epoch)


def test_scratch_restore_over_ssh_on_a_host_laid_out_like_a_vm(cloud, sshd, monkeypatch):
    """Fabric to sshd on 127.0.0.1: configs rendered from the inventory into the host's own
    directory, the scratch cluster on the host's loopback, checksums taken there with psql."""
    from invoke import Context

    from playbooks.host import ensure_dir

    root, port = sshd
    monkeypatch.setenv(scratch.KNOWN_HOSTS_ENV, str(root / "known_hosts"))
    monkeypatch.setenv(scratch.KEY_ENV, str(root / "client"))
    inventory = gcp_behind_ssh(cloud, port)
    host = service_dir("vm")
    paths = HostPaths(pgdata=f"{host}/15/main", socket_dir=f"{host}/run", pgbackrest_dir=f"{host}/failover")
    for directory in (f"{host}/15", paths.socket_dir):
        ensure_dir(Context(), directory, "755")
    try:
        result = scratch.on_remote_site(inventory, SPEC, "gcp", None, paths=paths)
        assert result["verified"], result["checks"]
        assert oct(os.stat(paths.config).st_mode & 0o777) == "0o600"  # credentials stay with the service user
        assert sorted(os.listdir(f"{host}/15")) == []  # the scratch cluster and its log are gone
    finally:
        shutil.rmtree(host, ignore_errors=True)


def test_an_unknown_host_key_stops_the_ssh_restore(cloud, sshd, monkeypatch, tmp_path):
    from infra.errors import FailoverError

    root, port = sshd
    (tmp_path / "known_hosts").write_text("")
    monkeypatch.setenv(scratch.KNOWN_HOSTS_ENV, str(tmp_path / "known_hosts"))
    monkeypatch.setenv(scratch.KEY_ENV, str(root / "client"))
    inventory = gcp_behind_ssh(cloud, port)
    with pytest.raises(FailoverError, match=r"site gcp: cannot open SSH to its database host 127\.0\.0\.1:\d+ as root"):
        scratch.on_remote_site(inventory, SPEC, "gcp", None, paths=HostPaths("/nonexistent/pg", "/nonexistent", "/nonexistent"))
