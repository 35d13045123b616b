"""Scaling a pilot-light site up through the Pulumi Automation API, behind one narrow seam.

A failover to a cloud pilot-light site changes one config value of its stack, the site's role
(`failover:site.role`, the key infra/__main__.py reads, set with a config path), and runs
`pulumi up`: the app VMs appear and the database VM grows to its primary size
(infra/clouds/base.py ROLE_SIZES). The stack's outputs then become the site's new SiteOutputs.

Before that, the old primary's stack is given the role the target had, in its config only: its
cloud may be gone, so no `pulumi up` runs for it (that is for when it is back). So the stack
files (which `load_spec` reads) name one primary again once the step is done. The old primary
is demoted first and the target promoted second, so a run killed in between leaves no primary
(which `load_spec` accepts only for that run's resume: `roles_in_flux`), never two; the rerun
sees the old primary's config is no longer primary and promotes the target.

`open_stack` is the seam: it returns something with `get_config`, `set_config`, `up` and
`outputs`, which is `pulumi.automation.Stack` in production (it runs the Pulumi CLI in the
project directory) and a fake in tests. Everything around it (is this site scaled by Pulumi?
is the stack already scaled? what does the plan say? what does an error mean?) is plain code.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pulumi.automation as auto
import yaml

from infra import secrets
from infra.clouds import base
from infra.errors import FailoverError
from infra.inventory_pull import PullError, parse_stack_outputs
from infra.sites.contract import SiteOutputs
from infra.spec import App

ROLE_KEY = "failover:site.role"  # a path into the stack's `failover:site` object
SCALED_ROLE = "primary"
LOCAL = "local"  # the embedded local cloud: its VMs already run every service
# Not measured (no cloud account here): creating the app VMs and resizing the database VM,
# which every cloud does by stopping and starting it, each take one to a few minutes, and
# Pulumi waits for them; the backend round-trips and the CLI's start add under a minute.
ESTIMATE = "typically 5-15 minutes (an estimate, not measured here)"


class ScaleError(FailoverError):
    """Scaling a site's stack failed; the message names the site, the stack and what to do."""


class Update(Protocol):
    """What an update returns (`pulumi.automation.UpResult`): the stack's outputs after it."""

    @property
    def outputs(self) -> Mapping[str, auto.OutputValue]: ...


class Stack(Protocol):
    """What the runbook needs of a stack: `pulumi.automation.Stack` has exactly these."""

    def get_config(self, key: str, *, path: bool = False) -> auto.ConfigValue: ...

    def set_config(self, key: str, value: auto.ConfigValue, *, path: bool = False) -> None: ...

    def up(self, *, on_output: Callable[[str], Any] | None = None) -> Update: ...

    def outputs(self) -> Mapping[str, auto.OutputValue]: ...


def open_stack(stack: str, work_dir: Path) -> Stack:
    """The stack of the Pulumi project in `work_dir`, through the Pulumi CLI (which must be installed)."""
    return auto.select_stack(stack_name=stack, work_dir=str(work_dir))


@dataclass(frozen=True)
class PulumiProject:
    """Where a site's stack lives: the project's directory (Pulumi.yaml) and, per site, the
    stack's name (default: the site's own, as in stacks/Pulumi.<site>.yaml)."""

    directory: Path
    stacks: Mapping[str, str] = field(default_factory=dict)
    open: Callable[[str, Path], Stack] = open_stack
    config_dir: str = ""  # Pulumi.yaml's stackConfigDir: where `pulumi config set` writes

    @classmethod
    def of(cls, project_file: Path, stacks: Mapping[str, str] | None = None) -> "PulumiProject":
        project_file = Path(project_file).resolve()
        return cls(project_file.parent, dict(stacks or {}), config_dir=_stack_config_dir(project_file))

    def stack(self, site: str) -> str:
        return self.stacks.get(site, site)

    def config_file(self, site: str) -> str:
        """The stack's config file, relative to the project: Pulumi.<stack>.yaml in stackConfigDir."""
        name = f"Pulumi.{self.stack(site).rsplit('/', 1)[-1]}.yaml"
        return f"{self.config_dir.rstrip('/')}/{name}" if self.config_dir not in ("", ".") else name


def _stack_config_dir(project_file: Path) -> str:
    try:
        raw = yaml.safe_load(project_file.read_text())
    except (OSError, yaml.YAMLError):  # only names files in messages: the spec loader reports a bad project
        return ""
    return str(raw.get("stackConfigDir") or "") if isinstance(raw, dict) else ""


def parse_stacks(values: list[str] | None) -> dict[str, str]:
    """`SITE=STACK` options (a stack may be fully qualified, org/project/stack) -> {site: stack}."""
    stacks, bad = {}, []
    for value in values or []:
        site, sep, stack = value.partition("=")
        if not (sep and site.strip() and stack.strip()):
            bad.append(repr(value))
        else:
            stacks[site.strip()] = stack.strip()
    if bad:
        raise FailoverError(f"--stack: {', '.join(bad)} is not SITE=STACK, e.g. --stack azure=acme/failover/azure")
    return stacks


# ---------------------------------------------------------------- pure decisions

def scaled_by_pulumi(site: SiteOutputs) -> bool:
    """The site-kind hook: a pilot-light site made by a Pulumi stack is scaled up on failover;
    a local site (and any warm or primary site) already runs what it needs."""
    return site.cloud != LOCAL and site.role == "pilot-light"


def has_stack(site: SiteOutputs) -> bool:
    """A site made by a Pulumi stack (whose config names its role); the local cloud has none."""
    return site.cloud != LOCAL


def added_app_vms(role: str, app: App) -> int:
    return base.capacity(SCALED_ROLE, app)["app"] - base.capacity(role, app)["app"]


def plan_note(site: SiteOutputs, app: App, project: PulumiProject, old_primary: SiteOutputs | None = None) -> str:
    """What the plan says the capacity step does and costs for this target ("" when nothing)."""
    if not scaled_by_pulumi(site):
        return ""
    sizes = base.MACHINE_TYPES.get(site.cloud, {})
    db_from, db_to = (sizes.get(base.ROLE_SIZES[r]["db"], "?") for r in (site.role, SCALED_ROLE))
    files = [project.config_file(site.site)]
    demote = ""
    if old_primary is not None and has_stack(old_primary):
        files.insert(0, project.config_file(old_primary.site))
        demote = (f"first the old primary's stack {project.stack(old_primary.site)} is given role {site.role} in "
                  f"its config only (no pulumi up of it here: run that once {old_primary.site}'s cloud is back); ")
    return (f"{demote}pulumi up of stack {project.stack(site.site)} with role {SCALED_ROLE} (adds "
            f"{added_app_vms(site.role, app)} app VM(s); resizes the database VM {db_from} -> {db_to}, "
            f"which restarts it), {ESTIMATE}; then the site's outputs are refreshed in the Inventory; "
            f"commit {' and '.join(files)} afterwards")


def hint(text: str) -> str:
    """What to do about a failed Pulumi command, from its output."""
    checks = [
        (r"passphrase", "set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE (the stacks' secrets provider)"),
        (r"PULUMI_ACCESS_TOKEN|pulumi login|401|[Uu]nauthorized|not logged in",
         "log in to the state backend: `pulumi login` (or set PULUMI_ACCESS_TOKEN)"),
        (r"NoCredentialProviders|credential|az login|ARM_CLIENT_ID|AWS_ACCESS_KEY_ID|GOOGLE_APPLICATION_CREDENTIALS",
         "set this cloud's credentials for `pulumi up` (docs/pulumi.md, 'Credentials each cloud needs')"),
    ]
    for pattern, advice in checks:
        if re.search(pattern, text):
            return advice
    return "fix what the output says"


def _tail(error: BaseException, lines: int = 6) -> str:
    """The end of a command's stderr (else of its message), redacted: never a secret value."""
    text = str(error)
    if " stderr:" in text:  # str(CommandResult): code, stdout, stderr; stderr says why, if anything does
        stdout, stderr = text.split(" stderr:", 1)
        text = stderr if stderr.strip() else stdout.split(" stdout:", 1)[-1]
    return secrets.redact(" | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()))


# ---------------------------------------------------------------- the scale-up

@dataclass(frozen=True)
class Demotion:
    """What became of the old primary's stack: its config role before and after. Only its config
    file changed (if anything did); its cloud was not asked, no `pulumi up` ran."""

    site: str
    stack: str
    file: str  # the stack's config file, relative to the project
    role_before: str
    role: str

    def to_dict(self) -> dict:
        done = (f"given {ROLE_KEY} {self.role} in {self.file} (config only, no pulumi up)"
                if self.role != self.role_before else f"already {self.role} in {self.file}, left as it is")
        return {"site": self.site, "stack": self.stack, "role_before": self.role_before, "role": self.role,
                "config": done}


@dataclass(frozen=True)
class ScaleUp:
    """What a scale-up did: the stack's role before, whether `up` ran, the site's new outputs and
    what became of the old primary's stack."""

    site: str
    stack: str
    role_before: str
    ran_up: bool
    seconds: float
    outputs: SiteOutputs
    secrets: dict[str, str]  # the writer credentials' values, {env name: value}
    file: str = ""  # the stack's config file, relative to the project
    old_primary: Demotion | None = None

    def to_dict(self) -> dict:
        result = {"stack": self.stack, "role_before": self.role_before, "role": self.outputs.role,
                  "up": "ran" if self.ran_up else "not needed: the stack already runs as " + self.outputs.role,
                  "up_seconds": self.seconds, "next": self.next()}
        return result | ({"old_primary": self.old_primary.to_dict()} if self.old_primary else {})

    def next(self) -> str:
        """What the user does after the step: commit the config files it wrote, and run the old
        primary's `pulumi up` only once its cloud is back."""
        files = [f for f in (self.old_primary.file if self.old_primary else "", self.file) if f]
        text = (f"commit {' and '.join(files)} ({ROLE_KEY}: {self.site} {self.outputs.role}"
                + (f", {self.old_primary.site} {self.old_primary.role}" if self.old_primary else "")
                + f"), or the next `pulumi up` from CI scales {self.site} back")
        if self.old_primary:
            text += (f"; run `pulumi up -s {self.old_primary.stack}` only once {self.old_primary.site}'s cloud is "
                     f"back: it then runs there as {self.old_primary.role}")
        return text


def demote(project: PulumiProject, site: str, role: str, progress: Callable[[str], None] = lambda m: None) -> Demotion:
    """Gives the old primary's stack `role` in its config, if its config still says primary.

    Config only: `pulumi config set` writes the stack's file (and asks the state backend, not
    the site's cloud, which may be gone); no `pulumi up`, no refresh, no outputs. A stack that no
    longer says primary (an earlier, interrupted run did this) is left as it is."""
    name, file = project.stack(site), project.config_file(site)
    stack = _call(site, name, "select the stack", lambda: project.open(name, project.directory))
    before = str(_call(site, name, f"read {ROLE_KEY}", lambda: stack.get_config(ROLE_KEY, path=True)).value)
    if before != SCALED_ROLE:
        return Demotion(site, name, file, before, before)
    progress(f"capacity: the old primary's stack {name} gets {ROLE_KEY} {role} in {file} (config only, no pulumi up)")
    _call(site, name, f"set {ROLE_KEY} to {role} in {file} (config only)",
          lambda: stack.set_config(ROLE_KEY, auto.ConfigValue(role), path=True))
    return Demotion(site, name, file, before, role)


def scale_up(project: PulumiProject, site: str, progress: Callable[[str], None] = lambda m: None,
             role: str = SCALED_ROLE, old_primary: str | None = None, old_role: str = "pilot-light") -> ScaleUp:
    """Gives the site's stack `role` and runs `pulumi up`, unless the last completed update
    already ran with it: then only its outputs are read (a rerun after a crash).

    `old_primary`'s stack is demoted to `old_role` first (`demote`), after the target's stack
    has answered and before its config changes: so the stack files never name two primaries,
    and a run killed between the two writes names none until its rerun promotes the target.

    The config says what the next update will do, the `role` output what the last one did; an
    update that failed after the config was set leaves them apart, and runs again."""
    name = project.stack(site)
    stack = _call(site, name, "select the stack", lambda: project.open(name, project.directory))
    before = str(_call(site, name, f"read {ROLE_KEY}", lambda: stack.get_config(ROLE_KEY, path=True)).value)
    current = _call(site, name, "read its outputs", stack.outputs)
    demoted = demote(project, old_primary, old_role, progress) if old_primary else None
    ran_up, started = False, time.monotonic()
    if not (before == role and _value(current, "role") == role):
        if before != role:
            _call(site, name, f"set {ROLE_KEY} to {role} in {project.config_file(site)}",
                  lambda: stack.set_config(ROLE_KEY, auto.ConfigValue(role), path=True))
        progress(f"capacity: pulumi up of stack {name} with role {role}, {ESTIMATE}")
        update = _call(site, name, "pulumi up", lambda: stack.up(on_output=lambda line: progress(f"  {name}: {line}")))
        current, ran_up = update.outputs, True  # read by `up` itself, once it succeeded
    outputs, found = _site_outputs(site, name, current)
    return ScaleUp(site, name, before, ran_up, round(time.monotonic() - started, 1), outputs, found,
                   project.config_file(site), demoted)


def _value(outputs: Mapping[str, auto.OutputValue], key: str) -> object:
    output = outputs.get(key)
    return None if output is None else output.value


def _site_outputs(site: str, stack: str, outputs: Mapping[str, auto.OutputValue]) -> tuple[SiteOutputs, dict]:
    """The stack's outputs as SiteOutputs, the way `failover inventory pull` reads them."""
    for output in outputs.values():
        if output.secret:  # scrubbed from every message from here on
            for value in (output.value.values() if isinstance(output.value, dict) else [output.value]):
                secrets.remember(str(value))
    try:
        parsed, found = parse_stack_outputs(stack, json.dumps({k: v.value for k, v in outputs.items()}))
    except PullError as error:
        raise ScaleError(f"site {site}: {error}") from None
    if parsed.site != site:
        raise ScaleError(f"site {site}: stack {stack} exports site {parsed.site!r}: pass --stack {site}=<its stack>")
    return parsed, found


def _call(site: str, stack: str, what: str, action: Callable[[], Any]) -> Any:
    """Runs one Automation API call; its failure becomes a ScaleError naming the site, the
    stack and what to do, with secret values redacted."""
    where = f"site {site}: stack {stack}: {what} failed"
    rerun = "then run the same `failover run` again (it resumes)"
    try:
        return action()
    except FileNotFoundError:  # PulumiCommand runs `pulumi version` first
        raise ScaleError(f"{where}: the Pulumi CLI is not installed here; install it "
                         f"(https://www.pulumi.com/docs/install/) and log in to the stacks' backend, {rerun}") from None
    except auto.StackNotFoundError:
        raise ScaleError(f"{where}: the backend has no such stack; `pulumi login` to the backend that holds it, "
                         f"or name it with --stack {site}=<org/project/stack>, {rerun}") from None
    except auto.ConcurrentUpdateError:
        raise ScaleError(f"{where}: another update of the stack is running; wait for it (or "
                         f"`pulumi cancel -s {stack}`), {rerun}") from None
    except auto.CommandError as error:
        tail = _tail(error)
        raise ScaleError(f"{where}: {tail}; {hint(tail)}, {rerun}") from None
