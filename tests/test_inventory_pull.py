"""The Inventory from recorded `pulumi stack output --json --show-secrets` outputs."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra import inventory_pull as pull
from infra import secrets
from infra.data import lease, objecthttp, protection
from infra.inventory_cli import app
from infra.data.storage import Store
from infra.sites.contract import Inventory, MediaRemote, Repository
from infra.sites.fleet import INVENTORY_COPY
from infra.spec import load_witnesses
from tests.witnesses import VALUES, WITNESSES

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


# ---- witness stores from the spec (config.witnesses) ----------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the shipped spec declaring three witness stores, one of each storage type."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    data = yaml.safe_load((tmp_path / "Pulumi.yaml").read_text())
    data["config"]["witnesses"] = {"value": WITNESSES}
    (tmp_path / "Pulumi.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path / "Pulumi.yaml"


@pytest.fixture
def witness_env(monkeypatch):
    for name, value in VALUES.items():
        monkeypatch.setenv(name, value)


def test_witnesses_become_stores_of_their_storage_type(project, witness_env):
    b2, gstore, blob = (pull.witness_outputs(w) for w in load_witnesses(project))
    assert {w.role for w in (b2, gstore, blob)} == {"witness"} and not (b2.ssh_hosts or b2.db_host)
    assert (b2.site, b2.cloud, b2.region) == ("b2", "backblaze", "us-west-004")
    assert b2.repository == Repository("s3", {"s3-bucket": "social-witness", "s3-endpoint": "s3.us-west-004.backblazeb2.com",
                                              "s3-region": "us-west-004", "path": "/pgbackrest", "s3-uri-style": "path"})
    assert b2.media_remote == MediaRemote("s3", {"provider": "Other", "endpoint": "https://s3.us-west-004.backblazeb2.com",
                                                 "region": "us-west-004", "force_path_style": "true"}, "social-witness")
    assert b2.writer_credentials == WITNESSES["b2"]["credentials"]  # references, as the spec wrote them
    # The storage classes take them as they take a site's: rclone's options, the HTTP API's URLs.
    section = Store(b2).storage.rclone_section(b2.media_remote, b2.site, b2.writer_credentials)
    assert (section["access_key_id"], section["secret_access_key"]) == ("b2-key-id-0001", "b2-secret-value-0001")
    request = objecthttp.S3Api().create_request(Store(b2).storage, b2, ".failover/claims/epoch-2.json", b"{}")
    assert request.url == "https://s3.us-west-004.backblazeb2.com/social-witness/.failover/claims/epoch-2.json"
    assert str(Store(b2)) == "site b2's bucket social-witness at s3.us-west-004.backblazeb2.com:443"
    assert gstore.repository == Repository("gcs", {"gcs-bucket": "social-witness-g", "gcs-key-type": "service",
                                                    "path": "/pgbackrest"})
    gsection = Store(gstore).storage.rclone_section(gstore.media_remote, gstore.site, gstore.writer_credentials)
    assert json.loads(gsection["service_account_credentials"])["client_email"] == "w@p.iam"
    url = objecthttp.AzureApi()._url(Store(blob).storage, blob, ".failover/lease.json")
    assert url == "https://socialwitness.blob.core.windows.net/witness/.failover/lease.json?" + VALUES["T_WITNESS_BLOB_SAS"]


def test_a_pulled_inventory_lists_the_witnesses_and_the_lease_counts_them(project, witness_env):
    witnesses = tuple(pull.witness_outputs(w) for w in load_witnesses(project))
    inventory, _ = pull.build_inventory(recorded(*STACKS), witnesses)
    assert [w.site for w in inventory.witnesses] == ["b2", "gstore", "blob"]
    assert [s.name for s in lease.stores(inventory)] == ["aws", "gcp", "azure", "b2", "gstore", "blob"]
    assert lease.majority(len(lease.stores(inventory))) == 4
    again = Inventory.from_json(inventory.to_json())
    assert again.witnesses == inventory.witnesses
    # A later pull keeps the known active site and epoch; the witnesses are the spec's, as pulled.
    kept = pull.keep_known(inventory, [Inventory(inventory.sites, active="gcp", epoch=4)])
    assert (kept.active, kept.epoch, kept.witnesses) == ("gcp", 4, inventory.witnesses)
    # The hosts get the witnesses' credentials too: the primary's protector renews its lease there.
    host = protection.host_secrets(again)
    assert {name: host[name] for name in VALUES} == VALUES


def test_a_missing_witness_credential_names_witness_key_and_variable(project, witness_env, monkeypatch):
    monkeypatch.delenv("T_WITNESS_B2_SECRET")
    monkeypatch.setenv("T_WITNESS_BLOB_SAS", "")
    with pytest.raises(pull.PullError) as error:
        pull.witness_secrets(load_witnesses(project), os.environ, str(project))
    message = str(error.value)
    assert f"witness b2: {project}: config.witnesses.b2.credentials.s3-key-secret is env/T_WITNESS_B2_SECRET, " \
           "but T_WITNESS_B2_SECRET is not set" in message
    assert "config.witnesses.blob.credentials.media-sas is env/T_WITNESS_BLOB_SAS" in message
    assert "s3-key is" not in message and "gstore" not in message  # only what is missing
    assert all(value not in message for value in VALUES.values())


def test_cli_pull_adds_the_specs_witnesses_with_references_and_their_values_apart(project, witness_env, tmp_path):
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, ["pull", "--stacks", "aws,gcp,azure", "--from", str(OUTPUTS), "--workdir",
                                      str(workdir), "--project", str(project), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["witnesses"] == ["b2", "gstore", "blob"]
    text = (workdir / "inventory.json").read_text()
    inventory = Inventory.from_json(text)
    assert inventory.witnesses[0].writer_credentials["s3-key-secret"] == "env/T_WITNESS_B2_SECRET"
    assert all(value not in text for value in VALUES.values())
    saved = secrets.parse_env((workdir / "secrets.env").read_text())
    assert {name: saved[name] for name in VALUES} == VALUES  # the engine loads them from the workdir
    assert stat.S_IMODE((workdir / "secrets.env").stat().st_mode) == 0o600


def test_cli_pull_refuses_a_missing_witness_credential_without_writing(project, witness_env, tmp_path, monkeypatch):
    monkeypatch.delenv("T_WITNESS_G_KEY")
    result = CliRunner().invoke(app, ["pull", "--stacks", "aws,gcp,azure", "--from", str(OUTPUTS), "--workdir",
                                      str(tmp_path / "work"), "--project", str(project)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps lines
    assert "config.witnesses.gstore.credentials.gcs-key-json-base64 is env/T_WITNESS_G_KEY" in output
    assert "T_WITNESS_G_KEY is not set" in output
    assert all(value not in result.output for value in VALUES.values())
    assert not (tmp_path / "work" / "inventory.json").exists()


def test_cli_pull_names_a_bad_witness_in_the_spec(project, witness_env, tmp_path):
    data = yaml.safe_load(project.read_text())
    data["config"]["witnesses"]["value"]["aws"] = data["config"]["witnesses"]["value"]["b2"]
    project.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["pull", "--stacks", "aws,gcp,azure", "--from", str(OUTPUTS), "--workdir",
                                      str(tmp_path / "work"), "--project", str(project)])
    assert result.exit_code == 2 and "config.witnesses.aws" in result.output and "clashes with site aws" in result.output
