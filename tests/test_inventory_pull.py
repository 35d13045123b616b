"""The Inventory from recorded `pulumi stack output --json --show-secrets` outputs."""
from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra import inventory_pull as pull
from infra.inventory_cli import app
from infra.data.storage import Store
from infra.sites.contract import Inventory, MediaRemote, Repository
from infra.sites.fleet import INVENTORY_COPY

OUTPUTS = Path(__file__).parent / "fixtures" / "pulumi" / "outputs"
STACKS = ("aws", "gcp", "azure")


def recorded(*names: str) -> dict[str, str]:
    return {name: (OUTPUTS / f"{name}.json").read_text() for name in names}


def test_inventory_holds_references_and_secrets_go_apart():
    inventory, secrets = pull.build_inventory(recorded("azure", "gcp", "aws"))
    assert inventory.names == ["aws", "gcp", "azure"]  # primary, warm, pilot-light: spec order
    assert inventory.active == "aws" and inventory.repo_index("azure") == 3
    aws = inventory.site("aws")
    assert aws.writer_credentials == {"s3-key": "env/FAILOVER_AWS_S3_KEY", "s3-key-secret": "env/FAILOVER_AWS_S3_KEY_SECRET"}
    assert secrets["FAILOVER_AWS_S3_KEY_SECRET"] == json.loads(recorded("aws")["aws"])["writer_credentials"]["s3-key-secret"]
    text = inventory.to_json()
    assert all(value not in text for value in secrets.values())
    assert Inventory.from_json(text).site("gcp").repository.options["gcs-bucket"] == "gcp-backups-6a2b9c0"


def test_outputs_without_show_secrets_are_refused():
    with pytest.raises(pull.PullError, match="stack aws: writer_credentials .*--show-secrets"):
        pull.parse_stack_outputs("aws", (OUTPUTS / "aws-no-show-secrets.json").read_text())


def test_missing_keys_name_the_stack():
    data = json.loads(recorded("gcp")["gcp"])
    del data["db_host"], data["repository"]
    with pytest.raises(pull.PullError, match=r"stack gcp: outputs lack db_host, repository; run `pulumi up -s gcp`"):
        pull.parse_stack_outputs("gcp", json.dumps(data))


def test_not_json_and_two_primaries_are_refused():
    with pytest.raises(pull.PullError, match="stack aws: .* is not JSON"):
        pull.parse_stack_outputs("aws", "error: no stack named 'aws'")
    gcp = json.loads(recorded("gcp")["gcp"]) | {"role": "primary"}
    with pytest.raises(pull.PullError, match="exactly one primary"):
        pull.build_inventory(recorded("aws") | {"gcp": json.dumps(gcp)})


def test_secrets_file_is_0600_and_shell_quoted(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("old")
    path.chmod(0o644)
    pull.write_secrets(path, {"FAILOVER_X": "a b&c", "FAILOVER_Y": "plain"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "FAILOVER_X='a b&c'\nFAILOVER_Y=plain\n"


def test_the_copies_go_where_the_engine_reads_them(tmp_path):
    """A pulled Inventory is put at the key the Fleet reads and publishes (fleet.INVENTORY_COPY),
    through the same stores: here posix ones, the recorded sites' store types swapped for directories."""
    inventory, found = pull.build_inventory(recorded(*STACKS))
    assert pull.destination(inventory.site("aws")).endswith(": .failover/inventory.json")
    for i, site in enumerate(inventory.sites):
        root = tmp_path / site.site
        inventory.sites[i] = dataclasses.replace(site, repository=Repository("posix", {"path": str(root)}),
                                                 media_remote=MediaRemote("local", {}, str(root)))
    (tmp_path / "gcp").mkdir(), (tmp_path / "azure").mkdir()  # aws's directory is missing
    statuses = pull.publish(inventory, found)
    assert statuses["gcp"] == statuses["azure"] == "copied"
    assert statuses["aws"].startswith("failed: site aws")
    assert Inventory.from_json(Store(inventory.site("gcp")).get(INVENTORY_COPY).decode()).names == inventory.names


def test_cli_pull_writes_inventory_and_secrets_and_plans_copies(tmp_path):
    result = CliRunner().invoke(app, ["--stacks", "aws,gcp,azure", "--from", str(OUTPUTS),
                                      "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["active"] == "aws" and [c["site"] for c in report["copies"]] == ["aws", "gcp", "azure"]
    assert all(c["status"].startswith("planned") for c in report["copies"])
    inventory = Inventory.load(tmp_path / "inventory.json")
    assert inventory.site("azure").writer_credentials["azure-key"] == "env/FAILOVER_AZURE_AZURE_KEY"
    assert "EXAMPLE" not in (tmp_path / "inventory.json").read_text()
    assert "sig=EXAMPLEbackups" in (tmp_path / "secrets.env").read_text()


def test_cli_names_a_missing_recording(tmp_path):
    result = CliRunner().invoke(app, ["--stacks", "aws,nowhere", "--from", str(OUTPUTS), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nowhere.json: no recorded outputs for stack nowhere" in result.output
