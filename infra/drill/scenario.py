"""Drill scenarios on the embedded local cloud: cut the primary off, fail over, measure.

A scenario is data (which role takes over, its targets); `run_scenario` is the fixed
sequence: a pristine local cloud (Debian VMs reached only over SSH), the canary writing
through DNS, the cut-off (the primary's VM killed and its store unmounted), the runbook on the
Fleet, writes until the new site acknowledges one through DNS, then read-back and integrity
checks (checksums through psql on the hosts, as the engine reads them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from infra.errors import FailoverError
from infra.data import claims, integrity, protection
from infra.dns.local import local_providers
from infra.drill import measure
from infra.drill.canary import Canary, Write, dns_servers, read_back
from infra.drill.exposure import ExposureSampler
from infra.drill.result import ScenarioResult
from infra.runbook import runner
from infra.runbook.claim import stores as claim_stores
from infra.runbook.journal import JournalStore
from infra.sites.vmcloud import VmCloud
from infra.sites.fleet import Fleet
from infra.sites.site import PATHS, Site
from infra.data import media as media_config
from playbooks import media, pgbackrest
from infra.spec import Spec

Progress = Callable[[str], None]
WARMUP_ACKS = 20
SETTLE_SECONDS = 2.0
EXPOSURE_WAIT = 60.0  # seconds after the runbook for another site to catch up with the new primary


@dataclass(frozen=True)
class Scenario:
    name: str
    target_role: str
    targets: measure.Targets
    # Tables whose rows up to the pre-cut-off max id must be identical on the new primary.
    strict_tables: tuple[str, ...] = ("users", "posts", "follows", "media")
    description: str = ""


SCENARIOS = {
    "warm": Scenario("warm", "warm", measure.Targets(rto_margin_seconds=5.0, max_writes_lost=0),
                     description="promote the synchronous streaming replica"),
    "pilot-light": Scenario("pilot-light", "pilot-light",
                            measure.Targets(rto_margin_seconds=30.0, max_writes_lost=None,
                                            rpo_within_archive_lag=True),
                            strict_tables=("users", "follows", "media"),
                            description="restore from the best reachable pgBackRest repository"),
}


def selected(name: str) -> list[Scenario]:
    if name == "all":
        return list(SCENARIOS.values())
    if name not in SCENARIOS:
        raise FailoverError(f"--scenario {name!r} must be one of: {', '.join(SCENARIOS)}, all")
    return [SCENARIOS[name]]


@dataclass
class Options:
    workdir: Path
    spec: Spec
    project: Path
    seed_mb: int
    prefix: str
    overrides: dict = field(default_factory=dict)  # Targets fields set on the command line
    storage: str = "posix"  # the local cloud's stores (`local up --storage`)


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def pristine(fleet: Fleet, spec: Spec, storage: str = "posix") -> bool:
    """Up with `storage` stores, every site answering SSH, the spec's primary active at epoch 1:
    ready for a drill."""
    vms = VmCloud(fleet.workdir).vms
    if not fleet.exists or not vms.exists or vms.storage != storage:
        return False
    inventory = fleet.inventory()
    return (inventory.active == spec.primary.name and inventory.epoch == 1
            and len(inventory.names) == min(3, len(spec.sites)) and not fleet.unreachable(refresh=True)
            and fleet.site(inventory.active).recovery_state() is False
            and claims.highest(claim_stores(inventory)) == 0)  # a run that claimed and stopped changed it


def fresh_cloud(options: Options, progress: Progress) -> Fleet:
    fleet = Fleet(options.workdir, app_port=options.spec.app.port)
    if not pristine(fleet, options.spec, options.storage):
        cloud = VmCloud(options.workdir, progress)
        if cloud.vms.exists:
            progress("resetting the local cloud (a previous drill changed it)")
            cloud.down()
        progress(f"bringing the local cloud up ({options.seed_mb} MB seed, {options.prefix}.x, "
                 f"{options.storage} stores)")
        cloud.up(options.spec, min(3, len(options.spec.sites)), options.prefix, options.seed_mb, options.storage)
        fleet.close()
        fleet = Fleet(options.workdir, app_port=options.spec.app.port)
    JournalStore(options.workdir).abandon()  # a journal of an earlier cloud has no say here
    return fleet


def checksums(site: Site, spec: Spec, upto: dict[str, int] | None = None) -> dict[str, dict]:
    """Per-table checksums through psql on the site's host."""
    return integrity.checksums_of(site, spec.database.name, upto)


def run_scenario(scenario: Scenario, options: Options, progress: Progress) -> ScenarioResult:
    targets = measure.Targets(**{**scenario.targets.to_dict(), **options.overrides})
    fleet = fresh_cloud(options, progress)
    spec = options.spec
    source = fleet.inventory().active
    target = next(s for s in fleet.sites() if s.role == scenario.target_role)
    servers = dns_servers(local_providers(options.workdir) or [])
    canary = Canary(spec.dns.zone, spec.app.port, servers).start()
    try:
        _wait(lambda: sum(w.acked for w in canary.writes) >= WARMUP_ACKS, 30, "the canary's first writes")
        before = checksums(fleet.site(source), spec)
        progress(f"[{scenario.name}] cutting {source} off")
        cut_off = time.time()
        VmCloud(options.workdir).drop(source)
        command_started = time.time()
        progress(f"[{scenario.name}] failover run --to {target.name}")
        error, journal = "", None
        runbook_fleet = Fleet(options.workdir, app_port=spec.app.port)  # what a new `failover run` would see
        sampling_fleet = Fleet(options.workdir, app_port=spec.app.port)  # its own SSH connection
        sampler = ExposureSampler(sampling_fleet.site(target.name)).start()
        try:
            journal = runner.run_failover(runbook_fleet, spec, options.project, target.name, None, progress)
        except Exception as failure:  # the report says what failed; the drill still measures
            error = f"{type(failure).__name__}: {failure}"
            journal = JournalStore(options.workdir).current()  # the steps that ran, for the report
        finally:
            runbook_fleet.close()
        command_ended = time.time()
        limit = targets.rto_limit(spec.dns.ttl) + 30
        _wait(lambda: canary.acked_on(target.name), max(0.0, cut_off + limit - time.time()), "", quiet=True)
        # From the first sample out of recovery: no write is acknowledged before the promotion.
        _wait(sampler.closed, EXPOSURE_WAIT, "", quiet=True)  # the canary writes on meanwhile
        time.sleep(SETTLE_SECONDS)
    finally:
        writes = canary.stop()
        samples = sampler.stop()
        sampling_fleet.close()
    window = (measure.exposure(samples), measure.exposure(samples, written=True))
    try:
        return _result(scenario, targets, fleet, spec, source, target, writes, cut_off, command_started,
                       command_ended, journal, error, before, window)
    finally:
        fleet.close()


def _result(scenario, targets, fleet, spec, source, target, writes: list[Write], cut_off, command_started,
            command_ended, journal, error, before, window) -> ScenarioResult:

    acks = [measure.Ack(w.seq, w.sent, w.answered, w.acked, w.site) for w in writes]
    present, readback_error = set(), ""
    try:
        present = read_back(target.outputs.public_addresses[0], spec.app.port)
    except OSError as failure:
        readback_error = str(failure)
    lost = measure.rpo(acks, present) if not readback_error else measure.rpo(acks, set())
    rto_cut = measure.rto(acks, target.name, cut_off)
    rto_cmd = measure.rto(acks, target.name, command_started)
    recovered_to = _step_detail(journal, "take_writes").get("recovered_to")
    restored = bool(journal) and (journal.plan.get("data") or {}).get("kind") == "restore"
    # Only a restore is bounded by the archive; a promoted replica had every commit streamed.
    lag = measure.archive_lag(acks, source, cut_off, recovered_to) if restored else None
    missed = measure.judge(targets, spec.dns.ttl, rto_cut, lost, lag) + measure.judge_exposure(targets, window[0])
    if error:
        missed.append(f"the runbook failed: {error}")
    integrity_report = _integrity(fleet, spec, target, before, scenario, writes, present)
    if not integrity_report["ok"]:
        missed.append("integrity: " + integrity_report["summary"])
    if readback_error:
        missed.append(f"could not read the canary back from {target.name}: {readback_error}")
    failed, _ = measure.outage(acks, cut_off)
    return ScenarioResult(
        name=scenario.name, description=scenario.description, source=source, target=target.name,
        dns_ttl=spec.dns.ttl, targets=targets, rto_limit_seconds=targets.rto_limit(spec.dns.ttl),
        cut_off=iso(cut_off), command_started=iso(command_started), command_ended=iso(command_ended),
        command_seconds=round(command_ended - command_started, 3),
        rto_seconds=rto_cut, rto_from_command_seconds=rto_cmd,
        rpo_seconds=lost.window_seconds, archive_lag_seconds=lag, recovered_to=iso(recovered_to),
        newest_segment_age_seconds=_newest_segment_age(fleet, journal, target, cut_off),
        writes_acked=sum(a.acked for a in acks), writes_lost=lost.lost,
        lost_seqs=list(lost.lost_seqs)[:50], writes_failed_after_cut_off=failed, writes_attempted=len(acks),
        passed=not missed, missed=missed, error=error or None,
        epoch=journal.epoch if journal else None,
        steps=journal.timings() if journal else [], integrity=integrity_report,
        exposure_seconds=window[0].seconds, exposure_written_seconds=window[1].seconds,
        canary=list(writes), cut_off_ts=cut_off, command_started_ts=command_started,
        lease_wait_seconds=_step_detail(journal, "take_writes").get("lease_wait_seconds"),
        fenced_directly=_step_detail(journal, "fence").get("fenced_directly"),
    )


def _step_detail(journal, step: str) -> dict:
    rows = journal.timings() if journal else []
    return next((r["detail"] for r in rows if r["step"] == step), {}) or {}


def _newest_segment_age(fleet: Fleet, journal, target: Site, cut_off: float) -> float | None:
    """Age at cut-off of the newest WAL file in the repository a restore used (None for a promotion,
    or a repository the target's pgBackRest cannot list).

    A second view of the archive lag, from the repository's side: how long before the cut-off
    the last segment landed there, as pgBackRest on the target lists it (any storage type; to
    the second)."""
    site = (journal.plan.get("data") or {}).get("repo_site") if journal else None
    if not site:
        return None
    files = pgbackrest.list_files(target.service(), PATHS.config, fleet.inventory().repo_index(site),
                                  f"archive/{pgbackrest.STANZA}")
    times = [f["time"] for name, f in (files or {}).items()
             if f.get("type") == "file" and Path(name).name.startswith("0000") and f["time"] <= cut_off]
    return round(cut_off - max(times), 3) if times else None


def _integrity(fleet: Fleet, spec, target: Site, before: dict, scenario: Scenario, writes: list[Write],
               present: set[int]) -> dict:
    try:
        after = checksums(target, spec, integrity.max_ids(before))
    except Exception as failure:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "summary": f"cannot read {target.name}: {failure}", "tables": {}}
    checks = integrity.compare(after, before)
    bad = [t for t in scenario.strict_tables if not checks[t]["match"]]
    media_keys = [w.media_key for w in writes if w.acked and w.media_key and w.seq in present]
    held = media.list_keys(target.service(), protection.rclone_config_path(PATHS),
                           media_config.bucket(fleet.inventory(), target.name))
    missing = [k for k in media_keys if held is None or k not in held]
    summary = ("tables differ up to the pre-cut-off ids: " + ", ".join(bad) if bad else "tables identical") + \
        f"; canary media missing {len(missing)} of {len(media_keys)}"
    # Media in the target's bucket (through its crypt remote). Asynchronous under `async`
    # replication (about a second behind): lost objects are reported, not failed on.
    return {"ok": not bad, "summary": summary, "tables": checks,
            "media_checked": len(media_keys), "media_missing": missing[:20]}


def _wait(check, timeout: float, what: str, quiet: bool = False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    if not quiet:
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
    return False
