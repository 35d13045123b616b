"""Rendering the bench's results: a plain-text table for the terminal and docs/benchmarks.md (pure)."""
from __future__ import annotations

from infra.bench import baseline, stats
from infra.bench.stats import Check

LABELS = {"copy": "cp -a (machine limit)", "pgbackrest": "pgBackRest restore (p2, lz4)",
          "dump": "pg_dump -Fd -j2 + pg_restore -j2"}


def _f(value, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


RESTORE_HEADER = ["seed", "data dir", "method", "median s", "MB/s", "x copy", "spread"]


def restore_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        for method in stats.METHODS:
            spread = row[f"{method}_spread"]
            out.append([f"{row['size_gb']:g} GB", f"{row['datadir_mb']:.0f} MB", LABELS[method],
                        _f(row[f"{method}_seconds"], 2), _f(row[f"{method}_mb_s"]), _f(row[f"{method}_vs_copy"], 2, "x"),
                        "-" if spread is None else f"{spread * 100:.0f}%"])
    return out


DRILL_HEADER = ["scenario", "seed", "result", "RTO cut-off", "RTO - TTL", "runbook to reads", "runbook to writes",
                "command to writes", "net RTO", "acked", "lost", "RPO window", "exposure window"]


def drill_rows(drills: list[dict]) -> list[list[str]]:
    out = []
    for d in drills:
        rto = d.get("rto_seconds")
        out.append([d["scenario"], f"{d['size_gb']:g} GB", d["result"], _f(rto, 2, " s"),
                    _f(None if rto is None else rto - d["dns_ttl"], 2, " s"), _f(stats.until_reads(d.get("steps", [])), 2, " s"),
                    _f(stats.until_writable(d.get("steps", [])), 2, " s"), _f(stats.command_until_writable(d), 2, " s"),
                    _f(stats.net_rto(d), 2, " s"),
                    str(d.get("writes_acked", "-")), str(d.get("writes_lost", "-")), _f(d.get("rpo_seconds"), 2, " s"),
                    _f(d.get("exposure_seconds"), 2, " s")])
    return out


def step_rows(drills: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per runbook step, one column per drill (steps in the order first seen)."""
    done = [d for d in drills if d.get("steps")]
    names: list[str] = []
    for d in done:
        names += [s["step"] for s in d["steps"] if s["step"] not in names]
    header = ["step", *(f"{d['scenario']} {d['size_gb']:g} GB" for d in done)]
    rows = []
    for name in names:
        cells = []
        for d in done:
            step = next((s for s in d["steps"] if s["step"] == name), None)
            cells.append("-" if step is None else _f(step.get("seconds"), 2, " s") + ("" if step.get("status") == "done" else f" ({step.get('status')})"))
        rows.append([name, *cells])
    return header, rows


OVERHEAD_HEADER = ["protection", "median tps", "runs (tps)", "cost vs off"]


def overhead_rows(runs: dict[str, list[float]]) -> list[list[str]]:
    from infra.bench.overhead import LABELS, MODES

    base = stats.median(runs.get("off", []))
    out = []
    for mode in [m for m in MODES if m in runs]:
        tps = stats.median(runs.get(mode, []))
        cost = stats.overhead(tps, base) if mode != "off" else None
        out.append([LABELS[mode], _f(tps, 0), ", ".join(f"{t:.0f}" for t in runs.get(mode, [])) or "-",
                    "-" if cost is None else f"{cost * 100:.1f}%"])
    return out


CPU_HEADER = ["protection", "walsenders (primary)", "archiver + archive-push (primary)", "replica (all processes)",
              "pg_receivewal"]


def cpu_rows(cpu: dict[str, list[dict]]) -> list[list[str]]:
    """Median % of one core each part of protection used while pgbench ran, per mode."""
    from infra.bench.overhead import LABELS, MODES, ROLES

    return [[LABELS[mode], *(_f(stats.median([run.get(role) for run in cpu[mode]]), 1, "%") for role in ROLES)]
            for mode in MODES if mode != "off" and cpu.get(mode)]


def check_rows(checks: list[Check]) -> list[list[str]]:
    return [[c.target, c.measured, c.verdict] for c in checks]


def all_checks(result: dict) -> list[Check]:
    rows = [stats.restore_row(m) for m in result.get("restore", [])]
    medians = {m: stats.median(v) for m, v in result.get("overhead", {}).get("tps", {}).items()}
    return (stats.restore_checks(rows) + stats.drill_checks(result.get("drills", []))
            + (stats.overhead_checks(medians) if medians else []))


def text(result: dict) -> str:
    """What the bench prints: every figure side by side."""
    rows = [stats.restore_row(m) for m in result.get("restore", [])]
    parts = []
    if rows:
        parts += ["Restore throughput (median of runs; MB = source data directory / seconds)",
                  table(RESTORE_HEADER, restore_rows(rows)), ""]
    if result.get("drills"):
        parts += ["Drills", table(DRILL_HEADER, drill_rows(result["drills"])), ""]
        header, steps = step_rows(result["drills"])
        if steps:
            parts += ["Runbook steps", table(header, steps), ""]
    if result.get("overhead", {}).get("tps"):
        parts += ["Protection overhead (pgbench)", table(OVERHEAD_HEADER, overhead_rows(result["overhead"]["tps"])), ""]
        if result["overhead"].get("cpu"):
            parts += ["CPU of protection while pgbench ran (% of one core)",
                      table(CPU_HEADER, cpu_rows(result["overhead"]["cpu"])), ""]
    compared = comparison_rows(result)
    if compared:
        parts += ["Over SSH (VMs) vs in-process (before #9)", table(COMPARE_HEADER, compared), ""]
    parts += ["Targets (issue 9, and issue 8's that still apply)", table(["target", "measured", "result"], check_rows(all_checks(result)))]
    return "\n".join(parts) + "\n"


def markdown(result: dict, chart: str | None = "img/benchmarks.png") -> str:
    rows = [stats.restore_row(m) for m in result.get("restore", [])]
    env = result.get("environment", {})
    lines = ["# Benchmarks", "",
             (f"Generated by `scripts/bench {result.get('arguments', '')}`".rstrip() + f" on {result.get('started', '?')}; "
              f"the run took {_f(result.get('duration_seconds', 0) / 60, 1)} minutes. Regenerate with `scripts/bench`."), "",
             "## Machine and conditions", "",
             (f"- {env.get('cpus', '?')} CPUs, {env.get('memory_gb', '?')} GB RAM, {env.get('kernel', '?')}; "
              f"PostgreSQL {env.get('postgres', '?')}, pgBackRest {env.get('pgbackrest', '?')}."),
             f"- Page cache dropped before every timed run: {env.get('drop_caches', '?')}.",
             f"- Load average when the run started: {env.get('loadavg_start', '?')}; when it ended: {env.get('loadavg_end', '?')}.",
             "- Absolute figures move between runs on two shared cores; the `spread` column ((max - min) / median",
             "  over runs) shows how much. Ratios from the same run (the methods ran back to back in every",
             "  repetition) are more trustworthy than absolutes.",
             ""]
    if chart:
        lines += [f"![benchmarks]({chart})", ""]
    lines += ["## Targets", "", "Issue 9's targets for the sites as Debian VMs reached over SSH, and issue 8's that still "
              "apply (restore vs pg_dump, warm RTO flat across sizes, pilot-light RPO window, overhead).", "",
              markdown_table(["target", "measured", "result"], check_rows(all_checks(result))), ""]
    compared = comparison_rows(result)
    if compared:
        lines += ["## Over SSH (VMs) vs in-process (before #9)", "",
                  ("The same figures from this run and from the last in-process run (sites as postmasters of the "
                   "operator's own process, every command local), side by side. Medians; `net RTO` = max(RTO - TTL, "
                   "runbook to writes)."), "", markdown_table(COMPARE_HEADER, compared), ""]
        header, steps = step_comparison(result)
        if steps:
            lines += ["Runbook steps, over SSH vs in-process (seconds):", "", markdown_table(header, steps), ""]
    if rows:
        lines += ["## Restore throughput", "",
                  "Each method rebuilds the same seeded database; MB/s is the source data directory's size divided by",
                  "the median wall time (including a final `sync`), so `x copy` is the time ratio to `cp -a`.",
                  "", markdown_table(RESTORE_HEADER, restore_rows(rows)), ""]
        lines += [f"- {m['size_gb']:g} GB seed: app database {m['counts']['database_bytes'] / stats.MB:.0f} MB, data directory {m['datadir_bytes'] / stats.MB:.0f} MB "
                  f"(of which pg_wal {m['pg_wal_bytes'] / stats.MB:.0f} MB), pgBackRest backup "
                  f"{_f(m.get('backup_seconds'), 1)} s, restored directory {m.get('restored_bytes', 0) / stats.MB:.0f} MB; "
                  f"pg_dump alone {_f(stats.median(m['seconds'].get('dump_only', [])), 1)} s, "
                  f"pg_restore alone {_f(stats.median(m['seconds'].get('restore_only', [])), 1)} s."
                  for m in result["restore"]]
        lines += ["", *result.get("restore_notes", []), ""]
    if result.get("drills"):
        lines += ["## Drills", "",
                  ("`failover drill --json` on a fresh local cloud per scenario and size: three Debian VMs on "
                   "loopback (`failover local up`), every engine action on a site over SSH. `RTO cut-off` runs from the "
                   "cut-off to the first canary write acknowledged through DNS. The canary caches the DNS answer for its "
                   "TTL like any client, so where in its cache period the cut-off falls decides much of that figure "
                   "(it can be well under the TTL). `runbook to reads` is the runbook's time from its first step (about "
                   "half a second after the cut-off over SSH: see `command to writes`) until DNS serves the new site "
                   "(`verify_dns`): a restored site may still replay WAL "
                   "then, and serves reads meanwhile. `runbook to writes` runs until its app also takes writes "
                   "(`verify_app`), the wait a client whose cache just expired has beyond the TTL. `command to "
                   "writes` runs from the `failover run` command's start instead, so it adds the plan made before "
                   "the first step (every site asked over SSH, the data source chosen, returning sites fenced); "
                   "`net RTO` = max(RTO - TTL, runbook to writes) is what the targets are checked against."), "",
                  markdown_table(DRILL_HEADER, drill_rows(result["drills"])), ""]
        failed = [d for d in result["drills"] if d.get("error")]
        lines += [f"- {d['scenario']} at {d['size_gb']:g} GB: {d['error']}" for d in failed]
        header, steps = step_rows(result["drills"])
        if steps:
            lines += ["", "### Runbook steps (seconds)", "", markdown_table(header, steps), ""]
    if result.get("overhead", {}).get("tps"):
        o = result["overhead"]
        lines += ["## Overhead of protection on the primary", "",
                  (f"`pgbench -i -s {o['scale']}`, then `pgbench -c {o['clients']} -j {o['threads']} -T {o['seconds']}` "
                   "on the primary's host (through its unix socket, over SSH), after one uncounted warm-up run. Every "
                   "repetition runs each setting once, forward in odd repetitions and backward in even ones, so a "
                   "drift of the machine's speed falls on every setting alike. A setting is the bench's overrides "
                   "on top of protection's (archive_mode, synchronous_standby_names; the primary restarted), the "
                   "warm site's replica started or stopped (an asynchronous one does not report its position after "
                   "every write, as protection configures it) and the pilot-light's WAL receiver started or stopped. "
                   "Every run starts from a VACUUM and a CHECKPOINT, with autovacuum off on pgbench's tables. The "
                   "VMs share one machine's disk and two CPUs, so every replica row is the worst case: a standby at "
                   "another site does not take the primary's CPU.") if o.get("where") == "vm" else
                  (f"`pgbench -i -s {o['scale']}`, then `pgbench -c {o['clients']} -j {o['threads']} -T {o['seconds']}` "
                   "against the primary's address, after one uncounted warm-up run (in-process sites)."), "",
                  markdown_table(OVERHEAD_HEADER, overhead_rows(o["tps"])), ""]
        run = o.get("run")
        if run and run["started"] != result["started"]:  # sections of two runs put together with --render
            lines += [f"These overhead figures come from another run, `scripts/bench {run['arguments']}` started "
                      f"{run['started']}; the rest of the page is from the run named at the top.", ""]
        if o.get("cpu"):
            lines += ["Where protection's CPU goes while pgbench runs (median over the runs, % of one core of the "
                      "machine's two; each process's own time plus that of the children it waited for, such as "
                      "the archiver's archive-push processes):", "", markdown_table(CPU_HEADER, cpu_rows(o["cpu"])), ""]
        if o.get("isolated_skipped"):
            lines += [f"Isolated modes not run: {o['isolated_skipped']}.", ""]
    if result.get("analysis"):
        lines += ["## Where the time goes over SSH", "", *result["analysis"], ""]
    lines += ["## Notes", "", *[f"- {n}" for n in result.get("notes", [])], ""]
    lines += before_section()
    return "\n".join(lines)


# ---------------------------------------------------------------- beside the in-process figures

COMPARE_HEADER = ["figure", "seed", "over SSH (VMs)", "in-process (before #9)", "change"]


def _change(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "-"
    return f"{now - before:+.2f}" + (f" ({now / before:.1f}x)" if before > 0 else "")


def comparison_rows(result: dict) -> list[list[str]]:
    """Restore seconds and ratios, drill times and losses, overhead costs: now vs before #9, where both exist."""
    out = []
    for row in [stats.restore_row(m) for m in result.get("restore", [])]:
        seed = f"{row['size_gb']:g} GB"
        for method in stats.METHODS:
            before = baseline.cell("restore", "median s", seed=seed, method=LABELS[method])
            if before is not None:
                now = row[f"{method}_seconds"]
                out.append([f"{LABELS[method]}: median s", seed, _f(now, 2), before, _change(now, baseline.seconds(before))])
        before = baseline.cell("restore", "x copy", seed=seed, method=LABELS["pgbackrest"])
        if before is not None:
            out.append(["pgBackRest restore: x cp -a", seed, _f(row["pgbackrest_vs_copy"], 2, "x"), before, "-"])
    for d in result.get("drills", []):
        seed = f"{d['size_gb']:g} GB"
        now = {"runbook to reads": stats.until_reads(d.get("steps", [])),
               "runbook to writes": stats.until_writable(d.get("steps", [])), "net RTO": stats.net_rto(d)}
        for figure, value in now.items():
            before = baseline.cell("drills", figure, scenario=d["scenario"], seed=seed)
            if before is not None:
                out.append([f"{d['scenario']}: {figure}", seed, _f(value, 2, " s"), before,
                            _change(value, baseline.seconds(before))])
        lost = baseline.cell("drills", "lost", scenario=d["scenario"], seed=seed)
        acked = baseline.cell("drills", "acked", scenario=d["scenario"], seed=seed)
        if lost is not None:
            out.append([f"{d['scenario']}: acknowledged writes lost", seed,
                        f"{d.get('writes_lost', '-')} of {d.get('writes_acked', '-')}", f"{lost} of {acked}", "-"])
    tps = result.get("overhead", {}).get("tps", {})
    for cells in overhead_rows(tps):
        before = baseline.cell("overhead", "cost vs off", protection=cells[0])
        if before is not None and before != "-":
            out.append([f"overhead: {cells[0]}", "pgbench -s 10", cells[3], before, "-"])
    return out


def step_comparison(result: dict) -> tuple[list[str], list[list[str]]]:
    """Per runbook step, this run's seconds beside the in-process run's, for drills both have."""
    header, rows = baseline.TABLES["steps"]
    pairs = [(d, f"{d['scenario']} {d['size_gb']:g} GB") for d in result.get("drills", []) if d.get("steps")]
    pairs = [(d, name) for d, name in pairs if name in header]
    if not pairs:
        return [], []
    out_header = ["step"] + [f"{name} {when}" for _, name in pairs for when in ("over SSH", "before #9")]
    names = [r[0] for r in rows]
    for d, _ in pairs:
        names += [s["step"] for s in d["steps"] if s["step"] not in names]
    out = []
    for step in names:
        cells = [step]
        for d, name in pairs:
            now = next((s for s in d["steps"] if s["step"] == step), None)
            cells.append("-" if now is None else _f(now.get("seconds"), 2, " s")
                         + ("" if now.get("status") == "done" else f" ({now.get('status')})"))
            cells.append(baseline.cell("steps", name, step=step) or "-")
        out.append(cells)
    return out_header, out


BEFORE_TITLES = {"targets": "Targets from issue 8", "restore": "Restore throughput", "drills": "Drills",
                 "steps": "Runbook steps, seconds", "overhead": "Overhead of protection on the primary",
                 "cpu": "Where protection's CPU went while pgbench ran (% of one core)"}


def before_section() -> list[str]:
    """The in-process run's tables as they were published (docs/benchmarks.md before #9)."""
    lines = ["## In-process figures (before #9)", "",
             ("Measured with the process-based local cloud (postmasters on 127.0.50.x started by the bench's own "
              "process, every command local, no SSH, the replica also run on tmpfs at nice 19 for the isolated "
              f"overhead rows): {baseline.RUN}. Kept here unchanged for comparison."), ""]
    for key, title in BEFORE_TITLES.items():
        header, rows = baseline.TABLES[key]
        lines += [f"### {title} (in-process, before #9)", "", markdown_table(header, rows), ""]
    return lines
