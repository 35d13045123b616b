"""The one bootstrap file: what cloud-init runs on cloud VMs is the file local VMs boot with."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from infra.clouds import base
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def args(**changes) -> base.SiteArgs:
    spec = load_spec(ROOT / "Pulumi.yaml")
    site = spec.sites[0]
    made = base.SiteArgs(site=site.name, cloud=site.cloud, region=site.region, role=site.role, app=spec.app,
                         database=spec.database, media_bucket="media", ssh_public_key="ssh-ed25519 AAAA test")
    return replace(made, **changes)


def test_user_data_embeds_the_bootstrap_file_line_for_line():
    data = base.cloud_init(args(), "db")
    embedded = data.split("path: /usr/local/sbin/failover-bootstrap", 1)[1]
    for line in base.BOOTSTRAP.read_text().splitlines():
        if line:
            assert f"      {line}\n" in embedded, f"bootstrap line missing from user-data: {line!r}"


def test_peers_and_role_changes_leave_user_data_unchanged_where_they_belong_to_the_engine():
    before = base.cloud_init(args(), "db")
    assert base.cloud_init(args(peer_cidrs=("10.9.0.0/16", "10.8.0.0/16")), "db") == before
    assert base.cloud_init(args(role="warm"), "db") == base.cloud_init(args(role="pilot-light"), "db") == before
    assert "ROLE" not in before
    assert "PEER_CIDRS" not in before and "hostssl" not in before
