"""`failover drill`: cut the primary off on the embedded local cloud, fail over, prove it with numbers."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from infra import cliutil
from infra.cliutil import (DEFAULT_PROJECT, DEFAULT_WORKDIR, AsJson, ProjectFile, Workdir, command, emit, progress,
                            workdir_path)
from infra.drill import report
from infra.drill import scenario as scenario_mod
from infra.drill.result import ScenarioResult
from infra.sites.vmcloud import VmCloud
from infra.sites.localstores import STORAGE_TYPES
from infra.sites.localvms import DEFAULT_PREFIX
from infra.spec import load_spec

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console(highlight=False)



@app.command("drill")
@command
def drill(
    scenario: Annotated[str, typer.Option(help="warm, pilot-light or all.")] = "warm",
    report_dir: Annotated[Optional[Path], typer.Option(help="Where to write the report (default: WORKDIR/reports/<time>).")] = None,
    seed_mb: Annotated[int, typer.Option(help="Seed size when the drill brings the local cloud up.")] = 20,
    keep: Annotated[bool, typer.Option(help="Leave the local cloud running afterwards.")] = False,
    prefix: Annotated[str, typer.Option(help="Loopback prefix for the local cloud.")] = DEFAULT_PREFIX,
    storage: Annotated[str, typer.Option(help="The local cloud's stores: posix (directories mounted in every VM) "
                                              "or emulated (each site's cloud's object-store emulator on its "
                                              "address); see `failover local up --help`.")] = "posix",
    rto_seconds: Annotated[Optional[float], typer.Option(help="RTO target from cut-off (default: DNS TTL + margin).")] = None,
    max_writes_lost: Annotated[Optional[int], typer.Option(help="Acked writes that may be lost (default per scenario).")] = None,
    rpo_window_seconds: Annotated[Optional[float], typer.Option(help="Largest RPO window allowed.")] = None,
    exposure_seconds: Annotated[Optional[float], typer.Option(
        help="Longest exposure window allowed: acknowledged writes at the new primary only (default 2).")] = None,
    workdir: Workdir = DEFAULT_WORKDIR, as_json: AsJson = False, project: ProjectFile = DEFAULT_PROJECT,
):
    """Run drill scenarios and write report.json, report.md, timeline PNGs and junit.xml. Exit 1 if a target is missed."""
    if not prefix.startswith("127."):
        raise cliutil.FailoverError(f"--prefix {prefix!r} must be inside 127.0.0.0/8")
    if storage not in STORAGE_TYPES:
        raise cliutil.FailoverError(f"--storage {storage!r} must be one of: {', '.join(STORAGE_TYPES)}")
    chosen = scenario_mod.selected(scenario)
    overrides = {k: v for k, v in (("rto_seconds", rto_seconds), ("max_writes_lost", max_writes_lost),
                                   ("rpo_window_seconds", rpo_window_seconds),
                                   ("exposure_seconds", exposure_seconds)) if v is not None}
    work = workdir_path(workdir)
    options = scenario_mod.Options(work, load_spec(project), project, seed_mb, prefix, overrides, storage)
    directory = report_dir or work / "reports" / datetime.now().strftime("%Y%m%d-%H%M%S")
    results = []
    try:
        for item in chosen:
            results.append(scenario_mod.run_scenario(item, options, progress))
    finally:
        if not keep:
            VmCloud(work).down()
    written = report.write(directory, results)
    emit(written, as_json, lambda r: _render(results, directory))
    if not report.passed(results):
        raise typer.Exit(1)


def _render(results: list[ScenarioResult], directory: Path) -> None:
    for s in results:
        mark = "[green]pass[/green]" if s.passed else "[red]FAIL[/red]"
        rto = "never" if s.rto_seconds is None else f"{s.rto_seconds:.1f}s"
        out.print(f"{s.name:12} {s.source} → {s.target}  RTO {rto} (limit {s.rto_limit_seconds:.0f}s)"
                  f"  lost {s.writes_lost}/{s.writes_acked}  RPO window {s.rpo_seconds:.2f}s"
                  + (f"  archive lag {s.archive_lag_seconds:.2f}s" if s.archive_lag_seconds is not None else "")
                  + f"  {mark}")
        for missed in s.missed:
            out.print(f"   [red]✗[/red] {missed}")
    out.print(f"report: {directory}/report.md")
