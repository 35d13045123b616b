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
    inventory = _posix(inventory, tmp_path)
    (tmp_path / "aws").rmdir()  # aws's store does not answer
    statuses = pull.publish(inventory, found)
    assert statuses["gcp"] == statuses["azure"] == "copied"
    assert statuses["aws"].startswith("failed: site aws")
    assert Inventory.from_json(Store(inventory.site("gcp")).get(INVENTORY_COPY).decode()).names == inventory.names


def test_cli_pull_writes_inventory_and_secrets_and_plans_copies(tmp_path):
    result = CliRunner().invoke(app, ["pull", "--stacks", "aws,gcp,azure", "--from", str(OUTPUTS),
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
    result = CliRunner().invoke(app, ["pull", "--stacks", "aws,nowhere", "--from", str(OUTPUTS), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nowhere.json: no recorded outputs for stack nowhere" in result.output


def _posix(inventory: Inventory, root: Path) -> Inventory:
    """The same sites with posix stores under `root` (one directory each), so nothing leaves loopback."""
    for i, site in enumerate(inventory.sites):
        (root / site.site).mkdir(parents=True, exist_ok=True)
        inventory.sites[i] = dataclasses.replace(site, repository=Repository("posix", {"path": str(root / site.site)}),
                                                 media_remote=MediaRemote("local", {}, str(root / site.site)))
    return inventory


def _with_role(text: str, role: str) -> str:
    data = json.loads(text)
    data["role"] = role
    return json.dumps(data)


def test_a_pull_after_a_failover_keeps_active_epoch_and_repository_numbers():
    before, _ = pull.build_inventory(recorded(*STACKS))
    known = Inventory(before.sites, active="gcp", epoch=3)  # failed over to gcp
    # The stacks' roles are edited afterwards: gcp primary, aws warm. Sorted by role, the pull
    # alone would put gcp first and give aws repo2.
    outputs = recorded(*STACKS)
    outputs["gcp"], outputs["aws"] = _with_role(outputs["gcp"], "primary"), _with_role(outputs["aws"], "warm")
    pulled, _ = pull.build_inventory(outputs)
    assert pulled.names[0] == "gcp" and pulled.active == "gcp" and pulled.epoch == 1
    kept = pull.keep_known(pulled, [known, Inventory(before.sites, active="aws", epoch=2)])
    assert kept.names == before.names == ["aws", "gcp", "azure"]
    assert [kept.repo_index(n) for n in kept.names] == [1, 2, 3]
    assert kept.active == "gcp" and kept.epoch == 3
    assert kept.site("aws").role == "warm"  # the outputs themselves are the new ones
    assert pull.keep_known(pulled, []) is pulled  # a first pull: the stacks' roles decide


def test_a_pull_that_lacks_a_known_site_is_refused():
    known, _ = pull.build_inventory(recorded(*STACKS))
    pulled, _ = pull.build_inventory(recorded("aws", "gcp"))
    with pytest.raises(pull.PullError, match="already has site.s. azure, which this pull lacks.*--stacks aws,gcp,azure"):
        pull.keep_known(pulled, [known])


def test_the_newest_copy_in_the_stores_wins_and_unreadable_ones_are_named(tmp_path):
    inventory, found = pull.build_inventory(recorded(*STACKS))
    inventory = _posix(inventory, tmp_path)
    old, new = Inventory(inventory.sites, active="aws", epoch=2), Inventory(inventory.sites, active="azure", epoch=5)
    Store(inventory.site("aws")).put(INVENTORY_COPY, old.to_json().encode())
    Store(inventory.site("gcp")).put(INVENTORY_COPY, new.to_json().encode())
    copies, unread = pull.read_copies(inventory)
    assert sorted(c.epoch for c in copies) == [2, 5] and unread == {"azure": "no copy yet"}
    kept = pull.keep_known(inventory, copies)
    assert kept.active == "azure" and kept.epoch == 5


def test_cli_pull_keeps_what_the_workdirs_inventory_says(tmp_path):
    args = ["pull", "--stacks", "aws,gcp,azure", "--from", str(OUTPUTS), "--workdir", str(tmp_path), "--json"]
    assert CliRunner().invoke(app, args).exit_code == 0
    failed_over = Inventory.load(tmp_path / "inventory.json")
    failed_over.active, failed_over.epoch = "azure", 7
    failed_over.save(tmp_path / "inventory.json")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["active"] == "azure" and report["epoch"] == 7 and report["kept_from"] == 1
    saved = Inventory.load(tmp_path / "inventory.json")
    assert (saved.active, saved.epoch, saved.names) == ("azure", 7, ["aws", "gcp", "azure"])
