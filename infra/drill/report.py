"""The drill's report: report.json, report.md, timeline.png and junit.xml in one directory."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from infra.drill.result import ScenarioResult


def summary(scenarios: list[ScenarioResult]) -> dict:
    """What `failover drill --json` prints: the scenarios without the raw canary records."""
    return {"passed": passed(scenarios), "scenarios": [s.summary() for s in scenarios]}


def passed(scenarios: list[ScenarioResult]) -> bool:
    return bool(scenarios) and all(s.passed for s in scenarios)


def write(report_dir: Path, scenarios: list[ScenarioResult]) -> dict:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    result = summary(scenarios)
    (report_dir / "report.json").write_text(json.dumps(
        {**result, "canary": {s.name: [w.to_dict() for w in s.canary] for s in scenarios}}, indent=2, default=str))
    (report_dir / "report.md").write_text(markdown(scenarios))
    (report_dir / "junit.xml").write_text(junit(scenarios))
    for scenario in scenarios:
        timeline(scenario, report_dir / f"timeline-{scenario.name}.png")
    return {**result, "files": sorted(p.name for p in report_dir.iterdir())}


def markdown(scenarios: list[ScenarioResult]) -> str:
    lines = ["# Failover drill", "", f"**{'PASSED' if passed(scenarios) else 'FAILED'}**", "",
             "| scenario | from → to | RTO from cut-off | RTO from command | limit | writes acked | lost | RPO window "
             "| WAL archive lag | exposure window | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in scenarios:
        lines.append(f"| {s.name} | {s.source} → {s.target} | {_secs(s.rto_seconds)} | "
                     f"{_secs(s.rto_from_command_seconds)} | {s.rto_limit_seconds:.0f}s (TTL {s.dns_ttl}s) | "
                     f"{s.writes_acked} | {s.writes_lost} | {s.rpo_seconds:.2f}s | "
                     f"{_secs(s.archive_lag_seconds)} | {_secs(s.exposure_seconds)} | "
                     f"{'pass' if s.passed else 'FAIL'} |")
    for s in scenarios:
        lines += ["", f"## {s.name}: {s.description}", "",
                  f"Cut-off at {s.cut_off}; the command ran {s.command_seconds:.1f}s; epoch now {s.epoch}. "
                  f"Integrity: {s.integrity['summary']}. Exposure window (acknowledged writes at one site "
                  f"only, from the promotion on): {_secs(s.exposure_seconds)} until another site flushed them "
                  f"(target {_secs(s.targets.exposure_seconds)}), "
                  f"{_secs(s.exposure_written_seconds)} until one had received them. {follow_laps(s)}", "",
                  lease_cost(s), "",
                  f"![timeline](timeline-{s.name}.png)", "",
                  "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {st['step']} | {st['status']} | {_secs(st['seconds'])} |" for st in s.steps]
        if s.missed:
            lines += ["", "Missed targets:", *[f"- {m}" for m in s.missed]]
    return "\n".join(lines) + "\n"


def follow_laps(s: ScenarioResult) -> str:
    """Where the follow step's time went, per follower (infra.runbook.steps.follow)."""
    detail = next((st.get("detail") or {} for st in s.steps if st["step"] == "follow"), {})
    parts = [f"{name}: " + ", ".join(f"{lap} {seconds:.2f}s" for lap, seconds in laps.items())
             for name, laps in (detail.get("laps") or {}).items()]
    if not parts:
        return ""
    return "After the promotion, the followers: " + "; ".join(parts) + "."


def lease_cost(s: ScenarioResult) -> str:
    """What the old primary's lease cost this scenario's RTO (docs/lease.md)."""
    if s.lease_wait_seconds is None:
        return "Lease: not measured (take_writes did not run)."
    if s.fenced_directly:
        return (f"Lease: {s.source} was fenced directly over SSH, so no lease was waited for "
                f"({s.lease_wait_seconds:.2f}s).")
    return (f"Lease: {s.source} could not be fenced directly, so take_writes waited {s.lease_wait_seconds:.2f}s "
            "for its lease to run out (lease length + margin after the claim, less the promotion and DNS steps "
            "it overlapped): that much of the RTO is the lease's.")


def _secs(value) -> str:
    return "-" if value is None else f"{value:.2f}s"


def junit(scenarios: list[ScenarioResult]) -> str:
    suite = ET.Element("testsuite", name="failover-drill", tests=str(len(scenarios)),
                       failures=str(sum(not s.passed for s in scenarios)))
    for s in scenarios:
        case = ET.SubElement(suite, "testcase", classname="failover.drill", name=s.name,
                             time=f"{s.command_seconds:.3f}")
        ET.SubElement(case, "system-out").text = (f"RTO {s.rto_seconds}s, RPO window {s.rpo_seconds}s, "
                                                  f"{s.writes_lost} of {s.writes_acked} acked writes lost"
                                                  + (f", WAL archive lag {s.archive_lag_seconds}s"
                                                     if s.archive_lag_seconds is not None else ""))
        if not s.passed:
            ET.SubElement(case, "failure", message="; ".join(s.missed)).text = "\n".join(s.missed)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def timeline(scenario: ScenarioResult, path: Path) -> None:
    """Steps as bars, canary writes as dots (acked green by site, failed red), cut-off and first ack lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero = scenario.cut_off_ts
    steps = [s for s in scenario.steps if s["started"] and s["ended"]]
    fig, ax = plt.subplots(figsize=(11, 2.2 + 0.32 * len(steps)))
    for row, step in enumerate(steps):
        start = _ts(step["started"]) - zero
        ax.barh(row, max(_ts(step["ended"]) - _ts(step["started"]), 0.05), left=start,
                color="tab:blue" if step["status"] == "done" else "tab:red")
    canary_row = len(steps) + 0.5
    acked = scenario.acked_by_site
    colors = dict(zip(acked, ("tab:green", "tab:olive", "tab:cyan")))
    for site, times in acked.items():
        xs = [t - zero for t in times]
        ax.scatter(xs, [canary_row] * len(xs), s=6, color=colors[site], label=f"acked by {site}")
    failed = [w.answered - zero for w in scenario.canary if not w.acked]
    ax.scatter(failed, [canary_row + 0.6] * len(failed), s=6, color="tab:red", label="failed write")
    ax.axvline(0, color="black", linestyle="--", label="cut-off")
    if scenario.rto_seconds is not None:
        ax.axvline(scenario.rto_seconds, color="tab:green", linestyle=":", label=f"RTO {scenario.rto_seconds:.1f}s")
    ax.set_yticks([*range(len(steps)), canary_row], [*(s["step"] for s in steps), "canary"])
    ax.invert_yaxis()
    ax.set_xlabel("seconds from cut-off")
    ax.set_title(f"{scenario.name}: {scenario.source} → {scenario.target}, TTL {scenario.dns_ttl}s")
    if scenario.recovered_to and scenario.archive_lag_seconds is not None:
        ax.axvline(_ts(scenario.recovered_to) - zero, color="tab:orange", linestyle="-.",
                   label=f"restore reached (archive lag {scenario.archive_lag_seconds:.2f}s)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()
