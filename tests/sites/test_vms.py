"""The local cloud's Debian VMs and `sites protect`, reached only over SSH (real sshd, PostgreSQL,
pgBackRest, pg_receivewal in chroot VMs on 127.0.56.x)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from infra import secrets
from infra.sites.contract import Inventory
from infra.sites.localvms import LocalVms
from infra.sites.protect import PASSFILE, SETTINGS_FILE, TLS_DIR, protect
from infra.sites.site import APP_CONFIG, CONF_DIR, PROTECTOR_PROGRAM, Site, SiteError, SshSettings
from infra.sites.tls import CertificateAuthority
from infra.sites.vm import _mounts_under
from infra.spec import load_spec
from tests.conftest import failover_json, remove_unmounted

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "127.0.56"
PASSWORD = "vm-test-replication-pw"


@pytest.fixture(scope="module")
def cloud():
    os.environ["FAILOVER_REPLICATION_PASSWORD"] = PASSWORD
    directory = Path(tempfile.mkdtemp(prefix="failover-vms-"))
    vms = LocalVms(directory / "vms")
    spec = load_spec(ROOT / "Pulumi.yaml")
    try:
        inventory = vms.up(spec, 3, PREFIX)
        yield vms, inventory, spec
    finally:
        try:
            vms.down()
        finally:
            remove_unmounted(directory)


def sites_of(vms: LocalVms, inventory: Inventory) -> dict[str, Site]:
    ssh = SshSettings(vms.identity.known_hosts, vms.identity.key)
    return {o.site: Site(o, ssh, load_spec(ROOT / "Pulumi.yaml").app.port) for o in inventory.sites}


@pytest.fixture(scope="module")
def protected(cloud):
    vms, inventory, spec = cloud
    sites = sites_of(vms, inventory)
    report = protect(inventory, sites, spec, CertificateAuthority.ensure(vms.directory / "ca"))
    return sites, report


def test_a_vm_is_debian_reached_as_a_non_root_sudo_user(cloud):
    vms, inventory, _ = cloud
    site = sites_of(vms, inventory)["aws"]
    conn = site.connection()
    assert conn.user == "failover" and conn.run("id -u", hide=True, in_stream=False).stdout.strip() != "0"
    assert site.root().run("id -u").stdout.strip() == "0"  # through sudo -n
    assert site.service().run("id -un").stdout.strip() == "postgres"
    clusters = site.service().run("pg_lsclusters -h").stdout.split()
    assert clusters[:4] == ["15", "main", str(inventory.site("aws").db_port), "online"]
    assert "/var/lib/postgresql/15/main" in clusters
    # Every VM shares the host's network: PostgreSQL listens on the site's own address only.
    listen = site.psql("SHOW listen_addresses").stdout.strip()
    assert listen == inventory.site("aws").db_host


def test_protect_streams_over_tls_backs_up_everywhere_and_repeats_safely(cloud, protected):
    vms, inventory, spec = cloud
    sites, report = protected
    primary = sites["aws"]
    streams = primary.psql("SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s "
                           "USING (pid) ORDER BY 1").stdout.split()
    assert streams == ["azure|t", "gcp|t"]
    for index in (1, 2, 3):
        info = primary.service().run(f"pgbackrest --config=/var/lib/postgresql/failover/pgbackrest.conf "
                                     f"--stanza=social --repo={index} info").stdout
        assert "full backup" in info, f"repo{index} has no full backup"
    assert sites["gcp"].psql("SELECT pg_is_in_recovery()").stdout.strip() == "t"
    for site in sites.values():
        hba = site.service().run(f"cat {CONF_DIR}/pg_hba.conf").stdout
        assert "trust" not in hba and "hostssl replication replicator" in hba
    again = protect(inventory, sites, spec, CertificateAuthority.ensure(vms.directory / "ca"))
    assert again.sites["gcp"] == ["replica: already streaming"]
    assert again.sites["azure"] == ["WAL stream: already streaming",
                                    f"prestaged: already at {report.sites['azure'][-1].split('(')[1].split(')')[0]}"]
    assert not any("full backup" in d for d in again.sites["aws"])


def test_sites_protect_command_also_configures_and_starts_the_apps_and_the_protector(cloud, protected):
    """`failover sites protect` from the Inventory alone: after protect's own work (done again:
    it is idempotent), the toolkit is on every host, the primary's app takes writes at the
    Inventory's epoch, the warm site's app runs (it refuses writes), and the protector runs on
    the primary only."""
    vms, inventory, _ = cloud
    sites, _ = protected
    assert sites["aws"].healthz() is None and not sites["aws"].program_running(PROTECTOR_PROGRAM)
    result = failover_json("sites", "protect", "--workdir", str(vms.directory.parent), workdir=vms.directory.parent)
    assert result["sites"]["gcp"][0] == "replica: already streaming"
    primary, warm = sites["aws"].healthz(), sites["gcp"].healthz()
    assert primary["writable"] and primary["epoch"] == inventory.epoch, primary
    assert warm is not None and not warm["writable"], warm
    assert sites["aws"].program_running(PROTECTOR_PROGRAM)
    assert not sites["gcp"].program_running(PROTECTOR_PROGRAM)
    assert sites["azure"].healthz() is None  # the pilot-light runs no app until a failover
    config = json.loads(sites["aws"].root().run(f"cat {APP_CONFIG}").stdout)
    assert config["dsn"].startswith("host=/var/run/postgresql") and "password" not in config["dsn"]


def _connect_from(site: Site, primary: Site, options: str):
    """psql from another site's VM to the primary's replication endpoint."""
    target = f"host={primary.outputs.db_host} port={primary.outputs.db_port} user=replicator dbname=postgres"
    return site.service().run(f"psql -X -At '{target} {options}' -c 'SELECT 1'", warn=True)


def test_replication_refused_without_tls_or_with_a_wrong_password(protected, tmp_path):
    sites, _ = protected
    primary, peer = sites["aws"], sites["gcp"]
    ok = _connect_from(peer, primary, f"passfile={PASSFILE} sslmode=verify-full sslrootcert={TLS_DIR}/ca.crt")
    assert ok.ok, ok.stderr
    plain = _connect_from(peer, primary, f"passfile={PASSFILE} sslmode=disable")
    assert not plain.ok and "no pg_hba.conf entry" in plain.stderr and "no encryption" in plain.stderr
    wrong = _connect_from(peer, primary, f"password=not-the-password sslmode=verify-full sslrootcert={TLS_DIR}/ca.crt")
    assert not wrong.ok and "password authentication failed" in wrong.stderr
    untrusted = _connect_from(peer, primary, f"passfile={PASSFILE} sslmode=verify-full "
                                             "sslrootcert=/etc/ssl/certs/ca-certificates.crt")
    assert not untrusted.ok and "certificate verify failed" in untrusted.stderr


def test_unknown_or_changed_host_keys_and_dead_hosts_are_named(cloud, tmp_path):
    vms, inventory, _ = cloud
    outputs = inventory.site("gcp")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(SiteError, match=r"site gcp: host 127\.0\.56\.2 .*not in .*empty_known_hosts"):
        Site(outputs, SshSettings(empty, vms.identity.key)).connection()
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"{outputs.db_host} " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(SiteError, match=r"site gcp: host 127\.0\.56\.2 .*different from the one in"):
        Site(outputs, SshSettings(changed, vms.identity.key)).connection()
    gone = replace(outputs, ssh_hosts=(f"{PREFIX}.9",), db_host=f"{PREFIX}.9")
    with pytest.raises(SiteError, match=r"site gcp: host 127\.0\.56\.9 .*does not answer SSH"):
        Site(gone, SshSettings(vms.identity.known_hosts, vms.identity.key, connect_timeout=2)).connection()
    assert not Site(gone, SshSettings(vms.identity.known_hosts, vms.identity.key, connect_timeout=2)).reachable()


def test_sudo_refused_is_named_before_anything_changes(cloud, protected):
    vms, inventory, spec = cloud
    vm = next(v for v in vms.vms() if v.site == "azure")
    vm.chroot(["sh", "-c", "id plain || useradd -m -s /bin/bash plain"])
    ssh_dir = vm.root / "home/plain/.ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(vms.identity.public_key + "\n")
    vm.chroot(["chown", "-R", "plain:plain", "/home/plain/.ssh"])
    plain = Site(replace(inventory.site("azure"), ssh_user="plain"), SshSettings(vms.identity.known_hosts,
                                                                                vms.identity.key))
    with pytest.raises(SiteError, match=r"site azure: host 127\.0\.56\.3: user plain may not run sudo"):
        plain.check_sudo()
    others = sites_of(vms, inventory)
    sites = {**others, "azure": plain}
    # protect rewrites these files with the same text, so their modification times tell a write.
    written = f"stat -c '%n %y' {CONF_DIR}/pg_hba.conf {SETTINGS_FILE} {TLS_DIR}/server.crt"
    before = others["aws"].service().run(written).stdout
    with pytest.raises(SiteError, match="user plain may not run sudo"):
        protect(inventory, sites, spec, CertificateAuthority.ensure(vms.directory / "ca"))
    assert others["aws"].service().run(written).stdout == before


def test_a_missing_local_secrets_stops_protect_before_any_change(cloud, monkeypatch):
    vms, inventory, spec = cloud
    monkeypatch.delenv("FAILOVER_REPLICATION_PASSWORD")
    sites = sites_of(vms, inventory)
    with pytest.raises(secrets.MissingSecret, match="FAILOVER_REPLICATION_PASSWORD"):
        protect(inventory, sites, spec, CertificateAuthority.ensure(vms.directory / "ca"))
    assert not any(s._connections for s in sites.values())  # checked before connecting anywhere


def test_a_cluster_that_cannot_start_is_named_with_its_log(cloud, protected):
    """start_cluster (the restore's fast start, pg_ctl -w) fails with the site, the host, the
    server's own complaint and where its log is, and leaves nothing running."""
    sites, _ = protected
    site = sites["azure"]  # the pilot-light: its cluster is stopped, only the WAL receiver runs
    assert not site.db_running()
    original = site.root().run(f"cat {SETTINGS_FILE}").stdout
    site.write(SETTINGS_FILE, original + "\nshared_buffers = 'not a size'\n")
    try:
        with pytest.raises(SiteError) as error:
            site.start_cluster(timeout=30)
        message = str(error.value)
        assert message.startswith(f"site azure: PostgreSQL did not start on host {site.db_host}: "), message
        assert "shared_buffers" in message and "see /var/log/postgresql/postgresql-15-main.log there" in message
        assert not site.db_running()
    finally:
        site.write(SETTINGS_FILE, original)


def test_drop_kills_only_that_vms_processes_and_unmounts_its_store(cloud, protected):
    vms, inventory, _ = cloud
    azure = next(v for v in vms.vms() if v.site == "azure")
    others = [v for v in vms.vms() if v.site != "azure"]
    assert azure.pids() and all(v.pids() for v in others)
    killed = vms.drop("azure")
    assert killed and not azure.pids()
    assert all(v.pids() for v in others)
    store = vms.store("azure")
    for vm in others:
        assert not _mounts_under(vm.root / str(store).lstrip("/")), f"{vm.site} still mounts azure's store"
    sites = sites_of(vms, inventory)
    assert not sites["azure"].reachable(timeout=3) and sites["aws"].reachable()
