"""The `capacity` step scales a cloud pilot-light target up through its Pulumi stack (a fake
stack at the Automation API seam), publishes its new outputs, and says so in the plan.

The real Fleet and Inventory are used, with posix stores in a temporary directory; only the
target's host (df, SSH) and the stack are fakes. What `pulumi.automation` itself sends to the
CLI is tested in tests/clouds/test_automation.py.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from pulumi.automation import CommandError, ConfigValue, OutputValue
from pulumi.automation._cmd import CommandResult

from infra.clouds.automation import PulumiProject, ScaleError
from infra.data.storage import MissingKey, Store
from infra.runbook import cli, runner, steps
from infra.runbook.journal import Journal, JournalStore
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.fleet import INVENTORY_COPY, Fleet
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "Pulumi.yaml")
SECRET = "sv=2022-11-02&sig=capacityTESTsecret"


def outputs(tmp: Path, name: str, cloud: str, role: str, addresses: tuple[str, ...]) -> SiteOutputs:
    store = tmp / "stores" / name
    store.mkdir(parents=True, exist_ok=True)
    return SiteOutputs(name, cloud, "r1", role, addresses[:1], addresses, "failover", addresses[-1], 15432,
                       Repository("posix", {"path": str(store / "backups")}), MediaRemote("local", {}, str(store)))


class FakeStack:
    """The target's stack: its config role and the role its last completed update ran with."""

    def __init__(self, calls: list, scaled: SiteOutputs, up_error: str = ""):
        self.calls, self.scaled, self.up_error = calls, scaled, up_error
        self.role = self.deployed = "pilot-light"

    def get_config(self, key, *, path=False):
        self.calls.append("get_config")
        return ConfigValue(self.role)

    def set_config(self, key, value, *, path=False):
        self.calls.append(f"set_config {key}={value.value}")
        self.role = value.value

    def up(self, *, on_output=None):
        self.calls.append("up")
        if self.up_error:
            raise CommandError(CommandResult("", self.up_error, 255))
        self.deployed = self.role
        return SimpleNamespace(outputs=self.outputs(record=False))

    def outputs(self, record=True):
        if record:
            self.calls.append("outputs")
        values = {**self.scaled.to_dict(), "role": self.deployed, "writer_credentials": {"sas": SECRET}}
        return {k: OutputValue(v, k == "writer_credentials") for k, v in values.items()}


class HostlessFleet(Fleet):
    """The real Fleet (Inventory file, publish to every store) without SSH to the hosts."""

    def site(self, name):
        df = "Filesystem 1024-blocks Used Available Capacity Mounted\n/dev/sdb 52428800 1048576 51380224 2% /var/lib"
        host = SimpleNamespace(run=lambda command, **kw: SimpleNamespace(stdout=df, ok=True))
        return SimpleNamespace(name=name, db_host=self.inventory().site(name).db_host, service=lambda: host)

    def reachable(self, name, refresh=False):
        return True


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILOVER_AZURE_SAS", "before")  # the step sets it for the process: undone after the test
    aws = outputs(tmp_path, "aws", "aws", "primary", ("192.0.2.10", "192.0.2.11"))
    azure = outputs(tmp_path, "azure", "azure", "pilot-light", ("192.0.2.30", "192.0.2.31"))
    fleet = HostlessFleet(tmp_path / "work")
    Inventory([aws, azure], active="aws", epoch=2).save(fleet.inventory_file)
    calls = []
    stack = FakeStack(calls, replace(azure, region="northeurope"))

    def select(name, directory):
        calls.append(f"select {name} in {directory.name}")
        return stack
    run = steps.Run(fleet, SPEC, ROOT / "Pulumi.yaml", "aws", "azure", 3, None,
                    pulumi=PulumiProject(tmp_path / "project", {"azure": "acme/failover/azure"}, select))
    return SimpleNamespace(fleet=fleet, run=run, stack=stack, calls=calls, aws=aws)


def test_capacity_scales_the_pilot_light_up_and_publishes_its_new_outputs(cloud):
    detail = steps.capacity(cloud.run)
    assert cloud.calls == ["select acme/failover/azure in project", "get_config", "outputs",
                           "set_config failover:site.role=primary", "up"]
    assert detail["scaled"]["up"] == "ran" and detail["scaled"]["role"] == "primary" and detail["free_mb"] > 1024
    inventory = cloud.fleet.inventory()
    assert inventory.names == ["aws", "azure"]  # same place: repository numbers unchanged
    site = inventory.site("azure")
    assert (site.role, site.region, site.writer_credentials) == ("primary", "northeurope",
                                                                 {"sas": "env/FAILOVER_AZURE_SAS"})
    copy = Inventory.from_json(Store(cloud.aws).get(INVENTORY_COPY).decode())
    assert copy.site("azure").role == "primary"
    assert SECRET not in cloud.fleet.inventory_file.read_text()


def test_a_second_run_does_not_update_the_stack_again(cloud):
    steps.capacity(cloud.run)
    cloud.calls.clear()
    assert "scaled" not in steps.capacity(cloud.run)  # the Inventory says primary now
    assert cloud.calls == []


def test_a_rerun_after_a_crash_between_up_and_publish_reads_the_outputs_only(cloud):
    cloud.stack.role = cloud.stack.deployed = "primary"
    detail = steps.capacity(cloud.run)
    assert cloud.calls == ["select acme/failover/azure in project", "get_config", "outputs"]
    assert detail["scaled"]["up"].startswith("not needed")
    assert cloud.fleet.inventory().site("azure").role == "primary"


def test_a_failed_up_leaves_the_inventory_as_it_was_and_names_site_and_stack(cloud):
    cloud.stack.up_error = "error: azure-native:compute:VirtualMachine azure-app-0: QuotaExceeded"
    before = cloud.fleet.inventory_file.read_text()
    with pytest.raises(ScaleError, match=r"site azure: stack acme/failover/azure: pulumi up failed: error: .*"
                                         r"QuotaExceeded; fix what the output says, then run the same"):
        steps.capacity(cloud.run)
    assert cloud.fleet.inventory_file.read_text() == before
    with pytest.raises(MissingKey):
        Store(cloud.aws).get(INVENTORY_COPY)  # nothing was published


def test_a_local_pilot_light_changes_nothing(cloud):
    inventory = cloud.fleet.inventory()
    inventory.sites = [replace(s, cloud="local") for s in inventory.sites]
    inventory.save(cloud.fleet.inventory_file)
    assert set(steps.capacity(cloud.run)) == {"free_mb"} and cloud.calls == []


def test_the_plan_says_what_capacity_runs_and_what_it_costs(cloud, capsys):
    target = cloud.fleet.inventory().site("azure")
    notes = runner.failover_notes(target, SPEC, ROOT / "Pulumi.yaml", cloud.run.pulumi)
    assert notes["capacity"].startswith(f"pulumi up of stack acme/failover/azure with role primary "
                                        f"(adds {SPEC.app.replicas} app VM(s)")
    assert "typically 5-15 minutes (an estimate" in notes["capacity"]
    assert runner.failover_notes(replace(target, cloud="local"), SPEC, ROOT / "Pulumi.yaml", None) == {}
    # A resumed run shows the notes it was planned with.
    the_plan = runner.Plan("failover", "aws", "azure", 3, steps.DataSource(steps.RESTORE, "restore", "some"),
                           list(steps.STEP_NAMES), [], None, [], notes)
    JournalStore(cloud.fleet.workdir).save(Journal.new("failover", "aws", "azure", 3, the_plan.steps,
                                                       json.loads(json.dumps(the_plan.to_dict()))))
    resumed, _ = runner.plan(cloud.fleet, SPEC, ROOT / "Pulumi.yaml", "azure")
    assert resumed.notes == notes
    cli._render_plan(resumed)
    assert "3. capacity pulumi up of stack acme/failover/azure with role primary" in capsys.readouterr().out
