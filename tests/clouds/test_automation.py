"""Scaling a stack through the Automation API: at the seam with a fake stack, and through the
real `pulumi.automation` code with a fake `pulumi` executable on PATH (no engine, no cloud).

That the pilot-light stack with role primary declares the app VMs it lacks as pilot-light is
tested under Pulumi mocks in test_pulumi_programs.py::test_pilot_light_scales_up_with_one_config_change.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from types import SimpleNamespace

import pytest
import pulumi.automation as auto
from pulumi.automation import CommandError, ConfigValue, OutputValue
from pulumi.automation._cmd import CommandResult

from infra import secrets
from infra.clouds import automation
from infra.clouds.automation import PulumiProject, ScaleError
from infra.errors import FailoverError
from infra.sites.contract import SiteOutputs
from infra.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "tests/fixtures/pulumi/outputs/azure.json").read_text())
SECRET = RECORDED["writer_credentials"]["azure-key"]


class FakeStack:
    """A stack as the Automation API shows it: its config, and the role of its last completed update."""

    def __init__(self, calls: list, role: str = "pilot-light", deployed: str = "pilot-light", up_error: str = ""):
        self.calls, self.role, self.deployed, self.up_error = calls, role, deployed, up_error

    def get_config(self, key, *, path=False):
        self.calls.append(("get_config", key, path))
        return ConfigValue(self.role)

    def set_config(self, key, value, *, path=False):
        self.calls.append(("set_config", key, value.value, path))
        self.role = value.value

    def up(self, *, on_output=None):
        self.calls.append(("up",))
        if self.up_error:
            raise CommandError(CommandResult("Updating (azure)", self.up_error, 255))
        assert on_output is not None
        on_output("+  azure-native:compute:VirtualMachine azure-app-0 created")
        self.deployed = self.role
        return SimpleNamespace(outputs=self.outputs())

    def outputs(self):
        self.calls.append(("outputs",))
        values = {**RECORDED, "role": self.deployed}
        return {key: OutputValue(value, key == "writer_credentials") for key, value in values.items()}


def project_with(stack: FakeStack, directory: Path = ROOT, **others: FakeStack) -> PulumiProject:
    stacks = {"azure": stack, **others}

    def select(name, work_dir):
        stack.calls.append(("select", name, work_dir))
        return stacks.get(name, stack)
    return PulumiProject(directory, {}, select, config_dir="stacks")


def test_a_pilot_light_stack_gets_the_role_then_up_then_its_outputs_are_read():
    calls, lines = [], []
    result = automation.scale_up(project_with(FakeStack(calls)), "azure", lines.append)
    assert calls == [("select", "azure", ROOT), ("get_config", "failover:site.role", True), ("outputs",),
                     ("set_config", "failover:site.role", "primary", True), ("up",), ("outputs",)]
    assert result.ran_up and result.role_before == "pilot-light" and result.outputs.role == "primary"
    assert result.outputs.writer_credentials == {"azure-key": "env/FAILOVER_AZURE_AZURE_KEY",
                                                 "media-sas": "env/FAILOVER_AZURE_MEDIA_SAS"}
    assert result.secrets["FAILOVER_AZURE_AZURE_KEY"] == SECRET
    assert any("azure-app-0 created" in line for line in lines) and "estimate" in lines[0]


def test_the_old_primary_is_demoted_in_config_only_before_the_target_is_promoted():
    calls, lines = [], []
    old = FakeStack(calls, role="primary", deployed="primary")
    result = automation.scale_up(project_with(FakeStack(calls), aws=old), "azure", lines.append,
                                 old_primary="aws", old_role="pilot-light")
    assert calls == [("select", "azure", ROOT), ("get_config", "failover:site.role", True), ("outputs",),
                     ("select", "aws", ROOT), ("get_config", "failover:site.role", True),
                     ("set_config", "failover:site.role", "pilot-light", True),
                     ("set_config", "failover:site.role", "primary", True), ("up",), ("outputs",)]
    assert old.role == "pilot-light" and old.deployed == "primary"  # its cloud was never asked
    assert result.old_primary == automation.Demotion("aws", "aws", "stacks/Pulumi.aws.yaml", "primary", "pilot-light")
    assert "old primary's stack aws gets failover:site.role pilot-light in stacks/Pulumi.aws.yaml" in lines[0]
    assert "commit stacks/Pulumi.aws.yaml and stacks/Pulumi.azure.yaml" in result.to_dict()["next"]


def test_an_old_primary_that_no_longer_says_primary_is_left_as_it_is():
    calls = []
    old = FakeStack(calls, role="warm", deployed="primary")  # set by hand, or by an interrupted run
    result = automation.scale_up(project_with(FakeStack(calls), aws=old), "azure", old_primary="aws")
    assert [c for c in calls if c[0] == "set_config"] == [("set_config", "failover:site.role", "primary", True)]
    assert result.old_primary.role == "warm" and "left as it is" in result.old_primary.to_dict()["config"]


def test_an_old_primary_stack_the_backend_lacks_stops_before_the_target_changes():
    def select(name, work_dir):
        if name == "aws":
            raise auto.StackNotFoundError(CommandResult("", "error: no stack named 'aws' found", 255))
        return target
    target = FakeStack([])
    with pytest.raises(ScaleError, match=r"site aws: stack aws: select the stack failed: the backend has no such "
                                         r"stack; .* --stack aws=<org/project/stack>"):
        automation.scale_up(PulumiProject(ROOT, {}, select), "azure", old_primary="aws")
    assert target.role == "pilot-light" and ("up",) not in target.calls


def test_config_files_follow_stack_config_dir_and_qualified_names():
    project = PulumiProject.of(ROOT / "Pulumi.yaml", {"aws": "acme/failover/aws"})
    assert project.config_dir == "stacks" and project.config_file("aws") == "stacks/Pulumi.aws.yaml"
    assert PulumiProject(ROOT).config_file("gcp") == "Pulumi.gcp.yaml"


def test_a_stack_already_updated_with_the_role_is_not_updated_again():
    calls = []
    result = automation.scale_up(project_with(FakeStack(calls, "primary", "primary")), "azure")
    assert [c[0] for c in calls] == ["select", "get_config", "outputs"] and not result.ran_up
    assert result.to_dict()["up"].startswith("not needed")


def test_an_update_that_failed_after_the_config_was_set_runs_again_without_setting_it():
    calls = []
    automation.scale_up(project_with(FakeStack(calls, role="primary", deployed="pilot-light")), "azure")
    assert [c[0] for c in calls] == ["select", "get_config", "outputs", "up", "outputs"]  # the second by `up`


def test_a_failed_up_names_site_stack_and_what_to_do_and_never_a_secret():
    secrets.remember(SECRET)
    stack = FakeStack([], up_error=f"error: decrypting: incorrect passphrase; token {SECRET}")
    with pytest.raises(ScaleError) as raised:
        automation.scale_up(project_with(stack), "azure")
    message = str(raised.value)
    assert message.startswith("site azure: stack azure: pulumi up failed: error: decrypting")
    assert "PULUMI_CONFIG_PASSPHRASE" in message and "run the same `failover run` again" in message
    assert SECRET not in message and "***" in message
    assert isinstance(raised.value, FailoverError)


@pytest.mark.parametrize("stderr, advice", [
    ("error: getting credentials: NoCredentialProviders", "this cloud's credentials"),
    ("error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions", "pulumi login"),
    ("error: something else entirely", "fix what the output says"),
])
def test_hints_from_what_pulumi_said(stderr, advice):
    assert advice in automation.hint(stderr)


def test_no_cli_and_no_stack_are_named():
    def no_cli(name, work_dir):
        raise FileNotFoundError("pulumi")
    with pytest.raises(ScaleError, match="site azure: stack acme/failover/azure: select the stack failed: the Pulumi "
                                         "CLI is not installed here"):
        automation.scale_up(PulumiProject(ROOT, {"azure": "acme/failover/azure"}, no_cli), "azure")


def test_outputs_of_another_site_are_refused():
    stack = FakeStack([])
    with pytest.raises(ScaleError, match="stack gcp exports site 'azure': pass --stack gcp="):
        automation.scale_up(project_with(stack), "gcp")


def test_which_sites_are_scaled_and_what_the_plan_says():
    spec = load_spec(ROOT / "Pulumi.yaml")
    pilot = SiteOutputs.from_dict(RECORDED)
    assert automation.scaled_by_pulumi(pilot)
    assert not automation.scaled_by_pulumi(SiteOutputs.from_dict({**RECORDED, "cloud": "local"}))
    assert not automation.scaled_by_pulumi(SiteOutputs.from_dict({**RECORDED, "role": "warm"}))
    note = automation.plan_note(pilot, spec.app, PulumiProject.of(ROOT / "Pulumi.yaml", {"azure": "acme/x/azure"}))
    assert note.startswith(f"pulumi up of stack acme/x/azure with role primary (adds {spec.app.replicas} app VM(s); "
                           "resizes the database VM Standard_B1ms -> Standard_D2s_v5")
    assert "an estimate" in note and note.endswith("commit stacks/Pulumi.azure.yaml afterwards")
    old = SiteOutputs.from_dict({**RECORDED, "site": "aws", "cloud": "aws", "role": "primary"})
    note = automation.plan_note(pilot, spec.app, PulumiProject.of(ROOT / "Pulumi.yaml"), old)
    assert note.startswith("first the old primary's stack aws is given role pilot-light in its config only")
    assert note.endswith("commit stacks/Pulumi.aws.yaml and stacks/Pulumi.azure.yaml afterwards")
    local = SiteOutputs.from_dict({**RECORDED, "site": "aws", "cloud": "local", "role": "primary"})
    assert "old primary" not in automation.plan_note(pilot, spec.app, PulumiProject.of(ROOT / "Pulumi.yaml"), local)
    assert automation.added_app_vms("pilot-light", spec.app) == spec.app.replicas


def test_stack_options_parse_and_bad_ones_are_named():
    assert automation.parse_stacks(["azure=acme/failover/azure"]) == {"azure": "acme/failover/azure"}
    with pytest.raises(FailoverError, match="'azure' is not SITE=STACK"):
        automation.parse_stacks(["azure"])


# ---------------------------------------------------------------- the real SDK, a fake CLI

FAKE_CLI = '''#!{python}
"""A stand-in for the Pulumi CLI: logs its arguments and answers as a stack would. Config lives
where Pulumi keeps it, in <stackConfigDir>/Pulumi.<stack>.yaml of the project (the working
directory); the role of each stack's last update is in the state file (the backend's part)."""
import json, os, sys, yaml
state_file = os.environ["FAKE_PULUMI_STATE"]
state = json.load(open(state_file))
args = [a for a in sys.argv[1:] if a != "--non-interactive"]
state["calls"].append(args)
name = args[args.index("--stack") + 1] if "--stack" in args else state["stack"]
config_dir = yaml.safe_load(open("Pulumi.yaml")).get("stackConfigDir") or "."
config_file = os.path.join(config_dir, "Pulumi." + name.split("/")[-1] + ".yaml")
if args[:1] == ["version"]:
    print("v3.200.0")
elif args[:2] == ["stack", "select"]:
    state["stack"] = name
elif args[:2] == ["config", "get"]:
    print(json.dumps({{"value": yaml.safe_load(open(config_file))["config"]["failover:site"]["role"], "secret": False}}))
elif args[:2] == ["config", "set"]:
    config = yaml.safe_load(open(config_file))
    config["config"]["failover:site"]["role"] = args[-1]
    open(config_file, "w").write(yaml.safe_dump(config, sort_keys=False))
elif args[:1] == ["up"]:
    print("Updating (" + name + ")")
    print("    +  azure-native:compute:VirtualMachine azure-app-0 created")
    state["deployed"][name] = yaml.safe_load(open(config_file))["config"]["failover:site"]["role"]
elif args[:2] == ["stack", "output"]:
    print(json.dumps({{**state["outputs"], "role": state["deployed"][name]}}))
elif args[:2] == ["stack", "history"]:
    print(json.dumps([{{"kind": "update", "startTime": "2026-01-01T00:00:00.000Z", "message": "",
                       "environment": {{}}, "config": {{}}, "result": "succeeded", "version": 2}}]))
else:
    print("fake pulumi: unexpected " + " ".join(args), file=sys.stderr)
    sys.exit(2)
json.dump(state, open(state_file, "w"))
'''


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """A project (Pulumi.yaml and a copy of stacks/) and the fake `pulumi` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "pulumi"
    cli.write_text(FAKE_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"calls": [], "stack": "", "outputs": RECORDED,
                                 "deployed": {"azure": "pilot-light", "aws": "primary"}}))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(state))
    project = tmp_path / "project"  # the fake writes stack files: never the repository's own
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", project / "stacks")
    return SimpleNamespace(project=project, calls=lambda: json.loads(state.read_text())["calls"])


def test_the_real_automation_api_runs_stack_select_config_set_and_up(fake_cli):
    """Only that the SDK turns our calls into these CLI commands in the project directory: no
    engine, no backend, no cloud runs here."""
    lines = []
    result = automation.scale_up(PulumiProject.of(fake_cli.project / "Pulumi.yaml"), "azure", lines.append)
    recorded = fake_cli.calls()
    # outputs() asks twice (masked, then with --show-secrets, to know which are secret); `up` reads
    # the outputs and the update's summary itself.
    assert [c[:2] for c in recorded] == [["version"], ["stack", "select"], ["config", "get"], ["stack", "output"],
                                         ["stack", "output"], ["config", "set"], ["up", "--yes"], ["stack", "output"],
                                         ["stack", "output"], ["stack", "history"]]
    config_set = next(c for c in recorded if c[:2] == ["config", "set"])
    assert config_set == ["config", "set", "--path", "failover:site.role", "--plaintext", "--stack", "azure", "--",
                          "primary"]
    assert ["--stack", "azure"] == next(c for c in recorded if c[:1] == ["up"])[-2:]
    assert result.ran_up and result.outputs.role == "primary"
    assert any("azure-app-0 created" in line for line in lines)


def test_the_real_automation_api_demotes_the_old_primary_in_its_stack_file_only(fake_cli):
    """The old primary's stack gets `config set` and nothing else (no `up`, no outputs); the
    stack files then load as a spec with exactly one primary."""
    result = automation.scale_up(PulumiProject.of(fake_cli.project / "Pulumi.yaml"), "azure",
                                 old_primary="aws", old_role="pilot-light")
    on_aws = [c for c in fake_cli.calls() if "aws" in c]
    assert [c[:2] for c in on_aws] == [["stack", "select"], ["config", "get"], ["config", "set"]]
    assert on_aws[-1] == ["config", "set", "--path", "failover:site.role", "--plaintext", "--stack", "aws", "--",
                          "pilot-light"]
    spec = load_spec(fake_cli.project / "Pulumi.yaml")
    assert {s.name: s.role for s in spec.sites} == {"azure": "primary", "gcp": "warm", "aws": "pilot-light"}
    assert result.old_primary.file == "stacks/Pulumi.aws.yaml" and result.ran_up
    assert load_spec(ROOT / "Pulumi.yaml").primary.name == "aws"  # the repository's own stacks/ are untouched
