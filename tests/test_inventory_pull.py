"""The Inventory from recorded `pulumi stack output --json --show-secrets` outputs."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra import inventory_pull as pull
from infra.inventory_cli import app
from infra.sites.contract import Inventory

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


def test_copy_targets_are_each_sites_media_bucket_with_its_writer_credential():
    inventory, secrets = pull.build_inventory(recorded(*STACKS))
    targets = {s.site: pull.copy_target(s, secrets) for s in inventory.sites}
    assert targets["aws"].destination == ":s3,provider=AWS,region=us-east-1:aws-media-9d0e4b1/failover/inventory.json"
    assert targets["aws"].env["RCLONE_S3_SECRET_ACCESS_KEY"] == secrets["FAILOVER_AWS_S3_KEY_SECRET"]
    assert targets["gcp"].destination.startswith(":gcs,bucket_policy_only=true:gcp-media-1e7f3d2/")
    assert json.loads(targets["gcp"].env["RCLONE_GCS_SERVICE_ACCOUNT_CREDENTIALS"])["type"] == "service_account"
    assert targets["azure"].env["RCLONE_AZUREBLOB_SAS_URL"].startswith(
        "https://azuremedia7e2a90f3.blob.core.windows.net/media?sv=")


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
