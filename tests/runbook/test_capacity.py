"""The `capacity` step scales a cloud pilot-light target up through its Pulumi stack (a fake
stack at the Automation API seam), gives the old primary's stack the target's role in config,
publishes the target's new outputs, and says so in the plan.

The real Fleet and Inventory are used, with posix stores in a temporary directory; only the
target's host (df, SSH) and the stacks are fakes. The fake stacks keep their config where
Pulumi does, in the stack files (a copy of stacks/ in a temporary project), so `load_spec`
reads what the step wrote. What `pulumi.automation` itself sends to the CLI is tested in
tests/clouds/test_automation.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pulumi.automation import CommandError, ConfigValue, OutputValue
from pulumi.automation._cmd import CommandResult

from infra import secrets
from infra.clouds.automation import PulumiProject, ScaleError
from infra.data.storage import MissingKey, Store
from infra.runbook import cli, runner, steps
from infra.runbook.journal import Journal, JournalStore
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.fleet import INVENTORY_COPY, Fleet
from infra.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec(ROOT / "Pulumi.yaml")
SECRET = "sv=2022-11-02&sig=capacityTESTsecret"


def outputs(tmp: Path, name: str, cloud: str, role: str, addresses: tuple[str, ...]) -> SiteOutputs:
    store = tmp / "stores" / name
    store.mkdir(parents=True, exist_ok=True)
    return SiteOutputs(name, cloud, "r1", role, addresses[:1], addresses, "failover", addresses[-1], 15432,
                       Repository("posix", {"path": str(store / "backups")}), MediaRemote("local", {}, str(store)))


class FakeStack:
    """A stack: its config role in its stack file (as `pulumi config set` keeps it), and the role
    of its last completed update and how many updates ran in a file of its own (the backend's
    state), so both outlive a killed process."""

    def __init__(self, site: str, file: Path, backend: Path, calls: list, scaled: SiteOutputs):
        self.site, self.file, self.state, self.calls, self.scaled = site, file, backend / f"{site}.json", calls, scaled
        self.up_error, self.before_set = "", None
        backend.mkdir(exist_ok=True)
        self._save({"deployed": self.role, "ups": 0})

    @property
    def role(self) -> str:
        return yaml.safe_load(self.file.read_text())["config"]["failover:site"]["role"]

    @role.setter
    def role(self, value: str) -> None:
        data = yaml.safe_load(self.file.read_text())
        data["config"]["failover:site"]["role"] = value
        self.file.write_text(yaml.safe_dump(data, sort_keys=False))

    @property
    def deployed(self) -> str:
        return json.loads(self.state.read_text())["deployed"]

    @deployed.setter
    def deployed(self, value: str) -> None:
        self._save({**json.loads(self.state.read_text()), "deployed": value})

    @property
    def ups(self) -> int:
        return json.loads(self.state.read_text())["ups"]

    def _save(self, state: dict) -> None:
        self.state.write_text(json.dumps(state))

    def get_config(self, key, *, path=False):
        self.calls.append(f"{self.site} get_config")
        return ConfigValue(self.role)

    def set_config(self, key, value, *, path=False):
        if self.before_set:
            self.before_set()
        self.calls.append(f"{self.site} set_config {key}={value.value}")
        self.role = value.value

    def up(self, *, on_output=None):
        self.calls.append(f"{self.site} up")
        if self.up_error:
            raise CommandError(CommandResult("", self.up_error, 255))
        self._save({"deployed": self.role, "ups": self.ups + 1})
        return SimpleNamespace(outputs=self.outputs(record=False))

    def outputs(self, record=True):
        if record:
            self.calls.append(f"{self.site} outputs")
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
    project = tmp_path / "project"  # never the repository's own stacks/
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    calls, backend = [], tmp_path / "backend"
    stacks = {"acme/failover/azure": FakeStack("azure", project / "stacks/Pulumi.azure.yaml", backend, calls,
                                               replace(azure, region="northeurope")),
              "aws": FakeStack("aws", project / "stacks/Pulumi.aws.yaml", backend, calls, aws)}

    def select(name, directory):
        calls.append(f"select {name} in {directory.name}")
        return stacks[name]
    pulumi = replace(PulumiProject.of(project / "Pulumi.yaml", {"azure": "acme/failover/azure"}), open=select)
    run = steps.Run(fleet, SPEC, project / "Pulumi.yaml", "aws", "azure", 3, None, pulumi=pulumi)
    return SimpleNamespace(fleet=fleet, run=run, stack=stacks["acme/failover/azure"], old=stacks["aws"], calls=calls,
                           aws=aws, project=project / "Pulumi.yaml")


def roles(project: Path, **kwargs) -> dict[str, str]:
    """The sites' roles as the engine reads them from the (temporary) stack files."""
    return {s.name: s.role for s in load_spec(project, **kwargs).sites}


FIRST_RUN = ["select acme/failover/azure in project", "azure get_config", "azure outputs",
             "select aws in project", "aws get_config", "aws set_config failover:site.role=pilot-light",
             "azure set_config failover:site.role=primary", "azure up"]


def test_capacity_scales_the_pilot_light_up_and_publishes_its_new_outputs(cloud):
    detail = steps.capacity(cloud.run)
    assert cloud.calls == FIRST_RUN  # the old primary is demoted before the target is promoted
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
    cloud.old.role = "pilot-light"
    cloud.stack.role = cloud.stack.deployed = "primary"
    detail = steps.capacity(cloud.run)
    assert cloud.calls == ["select acme/failover/azure in project", "azure get_config", "azure outputs",
                           "select aws in project", "aws get_config"]
    assert detail["scaled"]["up"].startswith("not needed")
    assert detail["scaled"]["old_primary"]["config"] == "already pilot-light in stacks/Pulumi.aws.yaml, left as it is"
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
    notes = runner.failover_notes(target, SPEC, ROOT / "Pulumi.yaml", cloud.run.pulumi, cloud.aws)
    assert notes["capacity"].startswith(
        "first the old primary's stack aws is given role pilot-light in its config only (no pulumi up of it here: "
        f"run that once aws's cloud is back); pulumi up of stack acme/failover/azure with role primary "
        f"(adds {SPEC.app.replicas} app VM(s)")
    assert "typically 5-15 minutes (an estimate" in notes["capacity"]
    assert notes["capacity"].endswith("commit stacks/Pulumi.aws.yaml and stacks/Pulumi.azure.yaml afterwards")
    assert runner.failover_notes(replace(target, cloud="local"), SPEC, ROOT / "Pulumi.yaml", None) == {}
    # A resumed run shows the notes it was planned with.
    the_plan = runner.Plan("failover", "aws", "azure", 3, steps.DataSource(steps.RESTORE, "restore", "some"),
                           list(steps.STEP_NAMES), [], None, [], notes)
    JournalStore(cloud.fleet.workdir).save(Journal.new("failover", "aws", "azure", 3, the_plan.steps,
                                                       json.loads(json.dumps(the_plan.to_dict()))))
    resumed, _ = runner.plan(cloud.fleet, SPEC, ROOT / "Pulumi.yaml", "azure")
    assert {k: v for k, v in resumed.notes.items() if k != "claim"} == notes
    cli._render_plan(resumed)
    shown = capsys.readouterr().out
    assert "4. capacity first the old primary's stack aws is given role pilot-light" in shown
    assert "1. claim epoch 3 again in a majority (2 of 2) of the stores of aws, azure" in shown


# ---------------------------------------------------------------- one primary in the stack files

def test_after_capacity_the_stack_files_name_exactly_one_primary(cloud):
    detail = steps.capacity(cloud.run)["scaled"]
    assert roles(cloud.project) == {"azure": "primary", "gcp": "warm", "aws": "pilot-light"}  # load_spec accepts it
    assert cloud.old.ups == 0 and "aws up" not in cloud.calls and "aws outputs" not in cloud.calls  # config only
    assert detail["old_primary"] == {
        "site": "aws", "stack": "aws", "role_before": "primary", "role": "pilot-light",
        "config": "given failover:site.role pilot-light in stacks/Pulumi.aws.yaml (config only, no pulumi up)"}
    assert detail["next"] == (
        "commit stacks/Pulumi.aws.yaml and stacks/Pulumi.azure.yaml (failover:site.role: azure primary, aws "
        "pilot-light), or the next `pulumi up` from CI scales azure back; run `pulumi up -s aws` only once aws's "
        "cloud is back: it then runs there as pilot-light")
    assert roles(ROOT / "Pulumi.yaml")["aws"] == "primary"  # the repository's own stacks/ were never touched


def test_a_kill_between_the_two_config_writes_then_a_rerun_ends_with_one_primary_and_one_up(cloud, monkeypatch):
    """A real SIGKILL of a process running the capacity step through the runner, right after the
    old primary's stack was demoted and before the target's was promoted; then the rerun as
    `failover run` does it: the spec as `spec_for_run` reads it, the plan from the journal."""
    monkeypatch.setattr(runner, "fence_returning", lambda *args, **kwargs: {})  # no SSH to the sites here
    stages = [[("capacity", steps.capacity)]]
    workdir = cloud.fleet.workdir
    the_plan = runner.Plan("failover", "aws", "azure", 3, steps.DataSource(steps.RESTORE, "restore", "some"),
                           ["capacity"], [], None, [])
    cloud.stack.before_set = lambda: os.kill(os.getpid(), signal.SIGKILL)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child never returns: it is killed, or exits 3
        try:
            runner.execute(cloud.fleet, SPEC, cloud.project, the_plan, None, stages=stages, pulumi=cloud.run.pulumi)
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    cloud.stack.before_set = None

    # In between: neither stack file says primary; the plain loader refuses and says to rerun.
    assert (cloud.old.role, cloud.stack.role, cloud.stack.ups) == ("pilot-light", "pilot-light", 0)
    with pytest.raises(SpecError, match=r"found 0 \(none\): .*rerun it instead"):
        load_spec(cloud.project)
    spec = runner.spec_for_run(cloud.project, workdir)  # the open journal's capacity is not done
    assert {s.name: s.role for s in spec.sites} == {"aws": "pilot-light", "gcp": "warm", "azure": "pilot-light"}

    resumed, journal = runner.plan(cloud.fleet, spec, cloud.project, "azure")
    assert resumed.resumed_run == journal.run_id and resumed.skip == []
    cloud.calls.clear()
    done = runner.execute(cloud.fleet, spec, cloud.project, resumed, journal, stages=stages, pulumi=cloud.run.pulumi)
    assert done.complete and JournalStore(workdir).current() is None
    assert cloud.calls == ["select acme/failover/azure in project", "azure get_config", "azure outputs",
                           "select aws in project", "aws get_config",  # already demoted: left as it is
                           "azure set_config failover:site.role=primary", "azure up"]
    assert (cloud.stack.ups, cloud.old.ups) == (1, 0)
    assert roles(cloud.project) == {"azure": "primary", "gcp": "warm", "aws": "pilot-light"}
    assert cloud.fleet.inventory().site("azure").role == "primary"


def test_a_kill_after_both_writes_then_a_rerun_runs_up_once(cloud):
    cloud.stack.before_set = None
    cloud.old.role, cloud.stack.role = "pilot-light", "primary"  # both written, `up` never finished
    steps.capacity(cloud.run)
    assert cloud.calls[-2:] == ["aws get_config", "azure up"] and (cloud.stack.ups, cloud.old.ups) == (1, 0)
    assert roles(cloud.project) == {"azure": "primary", "gcp": "warm", "aws": "pilot-light"}


def test_two_primaries_left_by_hand_or_an_older_version_are_mended(cloud):
    cloud.stack.role = "primary"  # the target promoted in config, the old primary still primary
    with pytest.raises(SpecError, match=r"found 2 \(aws, azure\)"):
        load_spec(cloud.project)
    steps.capacity(cloud.run)
    assert "aws set_config failover:site.role=pilot-light" in cloud.calls and cloud.stack.ups == 1
    assert roles(cloud.project) == {"azure": "primary", "gcp": "warm", "aws": "pilot-light"}


def test_a_failed_demotion_changes_neither_stack_and_names_site_stack_key_and_fix(cloud):
    def refuse():
        raise CommandError(CommandResult("", f"error: could not write stacks/Pulumi.aws.yaml; token {SECRET}", 255))
    cloud.old.before_set = refuse
    secrets.remember(SECRET)
    before = cloud.fleet.inventory_file.read_text()
    with pytest.raises(ScaleError) as raised:
        steps.capacity(cloud.run)
    message = str(raised.value)
    assert message.startswith("site aws: stack aws: set failover:site.role to pilot-light in stacks/Pulumi.aws.yaml "
                              "(config only) failed: error: could not write")
    assert "then run the same `failover run` again (it resumes)" in message and SECRET not in message
    assert roles(cloud.project) == {"aws": "primary", "gcp": "warm", "azure": "pilot-light"}  # nothing changed
    assert "azure up" not in cloud.calls and cloud.fleet.inventory_file.read_text() == before


def test_an_old_primary_on_the_local_cloud_has_no_stack_to_demote(cloud):
    inventory = cloud.fleet.inventory()
    inventory.sites = [replace(s, cloud="local") if s.site == "aws" else s for s in inventory.sites]
    inventory.save(cloud.fleet.inventory_file)
    detail = steps.capacity(cloud.run)["scaled"]
    assert not any("aws" in call for call in cloud.calls) and "old_primary" not in detail
    assert detail["next"].startswith("commit stacks/Pulumi.azure.yaml (failover:site.role: azure primary)")
