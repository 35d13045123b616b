"""The one bootstrap file: what cloud-init runs on cloud VMs is the file local VMs boot with."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from infra.clouds import base, hostkey
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
KEY, PUBLIC = hostkey.generate("aws")


def args(**changes) -> base.SiteArgs:
    spec = load_spec(ROOT / "Pulumi.yaml")
    site = spec.sites[0]
    made = base.SiteArgs(site=site.name, cloud=site.cloud, region=site.region, role=site.role, app=spec.app,
                         database=spec.database, media_bucket="media", ssh_public_key="ssh-ed25519 AAAA test")
    return replace(made, **changes)


def test_user_data_embeds_the_bootstrap_file_line_for_line():
    data = base.cloud_init(args(), "db", KEY)
    embedded = data.split("path: /usr/local/sbin/failover-bootstrap", 1)[1]
    for line in base.BOOTSTRAP.read_text().splitlines():
        if line:
            assert f"      {line}\n" in embedded, f"bootstrap line missing from user-data: {line!r}"


def test_peers_and_role_changes_leave_user_data_unchanged_where_they_belong_to_the_engine():
    before = base.cloud_init(args(), "db", KEY)
    assert base.cloud_init(args(peer_cidrs=("10.9.0.0/16", "10.8.0.0/16")), "db", KEY) == before
    assert base.cloud_init(args(peer_hosts=("198.51.100.7/32",)), "db", KEY) == before
    assert base.cloud_init(args(role="warm"), "db", KEY) == base.cloud_init(args(role="pilot-light"), "db", KEY) == before
    assert "ROLE" not in before
    assert "PEER_CIDRS" not in before and "hostssl" not in before


def _bootcmd(tmp_path: Path, device: str) -> Path:
    """The rendered bootcmd as a script whose system paths point into tmp_path, and stub tools
    that record what they were asked: `sleep` attaches the disk (creates `device`) on its 3rd call."""
    import yaml

    script = yaml.safe_load(base.cloud_init(args(), "db", KEY, device))["bootcmd"][0]
    for path in ("/dev/disk/by-label/pgdata", "/etc/failover", "/var/lib/postgresql"):
        script = script.replace(path, str(tmp_path / path.strip("/").replace("/", "_")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "sleep": f'n=$(cat {tmp_path}/sleeps 2>/dev/null || echo 0); n=$((n+1)); echo $n > {tmp_path}/sleeps; '
                 f'[ "$n" -ge 3 ] && [ -n "$ATTACH" ] && touch "$ATTACH"; true',
        "mkfs.ext4": f'echo "mkfs $*" >> {tmp_path}/log; touch {tmp_path}/dev_disk_by-label_pgdata',
        "mount": f'echo "mount $*" >> {tmp_path}/log',
        "mountpoint": "exit 1", "udevadm": "true", "readlink": 'echo "$2"',
        "lsblk": "true", "findmnt": "echo /dev/root",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    path = tmp_path / "bootcmd.sh"
    path.write_text(script)
    return path


def _run_bootcmd(tmp_path: Path, attach: bool):
    import os
    import subprocess

    device = tmp_path / "nvme1n1"
    script = _bootcmd(tmp_path, str(device))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "ATTACH": str(device) if attach else ""}
    result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    return result, log, int((tmp_path / "sleeps").read_text()), os.path.exists(tmp_path / "etc_failover" / "no-data-disk")


def test_the_data_disk_is_awaited_before_anything_is_formatted(tmp_path):
    """AWS attaches the volume after the instance starts: the disk shows up late, and is
    formatted (once it is there) and mounted; the root disk is never touched."""
    result, log, sleeps, marker = _run_bootcmd(tmp_path, attach=True)
    assert result.returncode == 0, result.stderr
    assert sleeps == 3 and f"mkfs -q -L pgdata {tmp_path / 'nvme1n1'}" in log
    assert "mount LABEL=pgdata" in log and not marker


def test_without_a_data_disk_nothing_is_formatted_and_the_database_will_not_start(tmp_path):
    result, log, sleeps, marker = _run_bootcmd(tmp_path, attach=False)
    assert result.returncode == 1 and "no data disk after 600 s" in result.stderr
    assert sleeps == 120 and "mkfs" not in log and marker
    assert "no-data-disk" in base.BOOTSTRAP.read_text()  # the bootstrap refuses to start PostgreSQL then
