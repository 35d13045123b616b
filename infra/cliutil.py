"""What every `failover` command shares: --workdir, --json, the spec, and clean errors.

Sub-command modules (infra/dns/cli.py, ...) build their own `typer.Typer()` and use these
option types, so that every command takes the same --workdir and --json.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from invoke.exceptions import UnexpectedExit
from rich.console import Console

from infra import events, secrets
from infra.errors import FailoverError  # noqa: F401  (re-exported: CLI modules raise it too)

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True, highlight=False)

Workdir = Annotated[Path, typer.Option(
    "--workdir", envvar="FAILOVER_WORKDIR",
    help="The local cloud's state directory (PIDs, configs, reports, journal).",
)]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DEFAULT_WORKDIR = ROOT / ".failover"
ProjectFile = Annotated[Path, typer.Option(
    "--project", envvar="FAILOVER_PROJECT", help="Pulumi.yaml holding the app spec (stacks from its stackConfigDir).",
)]
DEFAULT_PROJECT = ROOT / "Pulumi.yaml"


def progress(message: str) -> None:
    """One line of progress on stderr, so stdout stays clean for --json."""
    console.print(f"[cyan]•[/cyan] {message}")


def render_event(event: events.Event) -> None:
    """What the domain code emits (infra.events), on stderr with secrets redacted."""
    if event.kind == events.WARNING:
        console.print(f"[yellow]warning:[/yellow] {secrets.redact(event.message)}")
    else:
        console.print(f"{event.kind}: {secrets.redact(event.message)}")


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """JSON on stdout for scripts, or a human rendering (rich) for operators."""
    if as_json:
        sys.stdout.write(secrets.redact(json.dumps(result, indent=2, default=str)) + "\n")
    else:
        render(result)


def command(fn: Callable) -> Callable:
    """Turns expected errors into one clear line on stderr and exit code 2, secrets redacted;
    the domain code's events (warnings) are rendered on stderr while the command runs."""
    from infra.spec import SpecError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with events.subscribed(render_event):
                return fn(*args, **kwargs)
        except (FailoverError, SpecError, secrets.MissingSecret, FileNotFoundError, KeyError, TimeoutError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            console.print(f"[red]error:[/red] {secrets.redact(str(message))}", markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except UnexpectedExit as error:
            result = error.result
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            console.print(f"[red]error:[/red] {secrets.redact(result.command)} exited {result.exited}: "
                          + secrets.redact(" / ".join(tail)), markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def workdir_path(workdir: Path | None) -> Path:
    return Path(workdir or os.environ.get("FAILOVER_WORKDIR") or DEFAULT_WORKDIR).resolve()
