"""The runbook runner: plan, print, execute with --yes, and resume from the journal.

`plan()` checks every input before anything changes (unknown site, the active site, a target
without data, a missing DNS secret, an --epoch that outranks nothing) and decides the data
source and the epoch to claim. `execute()` claims that epoch first (infra/runbook/claim.py):
only a run that won it writes a journal, so a run that lost has changed nothing. It then runs
the steps the journal has not completed, recording each before and after it runs; after a
crash or Ctrl-C the same command resumes, and claims its epoch again (its own claim is
recognised by its run id). `FAILOVER_CRASH_AFTER=<step>` makes the process SIGKILL itself
right after that step is journaled as done (for the crash-and-resume tests).
"""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from infra.clouds import automation
from infra.data import claims
from infra.data import lease
from infra.data.storage import Store
from infra.errors import FailoverError
from infra.dns.site import dns_config
from infra.runbook import claim as claim_mod
from infra.runbook import failback
from infra.runbook import steps as steps_mod
from infra.runbook.claim import CLAIM, ClaimFailed
from infra.runbook.journal import DONE, FAILED, STARTED, Event, Journal, JournalStore, new_run_id, now
from infra.sites.contract import SiteOutputs
from infra.sites.fleet import Fleet
from infra.sites.site import PATHS
from infra.spec import Spec, load_spec
from infra.status import repository

CRASH_ENV = "FAILOVER_CRASH_AFTER"
CAPACITY = "capacity"  # the step that changes the stacks' roles


@dataclass
class Plan:
    kind: str
    source: str
    target: str
    epoch: int
    data: steps_mod.DataSource
    steps: list[str]
    skip: list[str]  # completed by an earlier, interrupted run
    resumed_run: str | None
    unreachable: list[str]  # sites that did not answer SSH when the plan was made (never required)
    notes: dict[str, str] = field(default_factory=dict)  # step -> what it will do and cost, where that varies

    def to_dict(self) -> dict:
        return {**asdict(self), "data": asdict(self.data)}


def plan(fleet: Fleet, spec: Spec, project: Path, target: str, source: str | None = None,
         kind: str = "failover", pulumi: automation.PulumiProject | None = None,
         epoch: int | None = None) -> tuple[Plan, Journal | None]:
    """The plan for `run --to target`, or a FailoverError naming every bad input. Changes nothing.

    `pulumi` names the stacks of a cloud pilot-light target (default: the project of `project`);
    `epoch` is an explicit epoch to claim (--epoch), above every claim, to get past a dead run's."""
    store = JournalStore(fleet.workdir)
    journal = store.current()
    inventory = fleet.inventory()
    if journal is not None and (journal.target != target or journal.kind != kind):
        command = "back" if journal.kind == "failback" else "run"
        raise FailoverError(f"an interrupted {journal.kind} to {journal.target} (run {journal.run_id}) is open: "
                            f"finish it with `failover {command} --to {journal.target} --yes` first")
    if journal is not None:
        return _resumed(fleet, journal, target, epoch), journal
    problems = steps_mod.input_problems(inventory.names, inventory.active, set(), target, source)
    if not problems and not fleet.reachable(target):
        problems.append(f"site {target} (host {fleet.site(target).db_host}) does not answer SSH: choose a site "
                        "that is up, or repair it first")
    if problems:
        raise FailoverError("; ".join(problems))
    _check_dns(fleet, project)
    claimed, claim_note = _epoch_to_claim(inventory, epoch, f"failover run --to {target}")
    data = _data_source(fleet, spec, inventory, target)
    notes = {CLAIM: claim_note, **failover_notes(inventory.site(target), spec, project, pulumi,
                                                 inventory.site(inventory.active)),
             "take_writes": lease_note(inventory.active, fleet.reachable(inventory.active))}
    return Plan(kind, inventory.active, target, claimed, data, list(steps_mod.STEP_NAMES), [], None,
                sorted(fleet.unreachable()), notes), None


def _resumed(fleet: Fleet, journal: Journal, target: str, epoch: int | None) -> Plan:
    """The plan of an open run: its own epoch, claimed again with its own run id."""
    problems = claim_mod.resume_problems(epoch, journal.epoch, journal.run_id)
    if problems:
        raise FailoverError("; ".join(problems))
    data = steps_mod.DataSource(**journal.plan["data"])
    names = [s.name for s in claim_mod.stores(fleet.inventory())]
    notes = {**journal.plan.get("notes", {}),
             CLAIM: claim_mod.plan_note(journal.epoch, names, [], journal.run_id, False)}
    return Plan(journal.kind, journal.source, target, journal.epoch, data, journal.steps,
                sorted(journal.completed()), journal.run_id, sorted(fleet.unreachable()), notes)


def _epoch_to_claim(inventory, explicit: int | None, command: str) -> tuple[int, str]:
    """The epoch a new run will claim and the plan's note on it (who holds it already). With
    --epoch, it must outrank every claim the stores list."""
    stores = claim_mod.stores(inventory)
    if explicit is not None:
        highest = claims.highest(stores)
        holder = next((h.holder for h in claims.holdings(stores, highest) if h.holder), None) if highest else None
        problems = claim_mod.epoch_problems(explicit, inventory.epoch, highest, holder, command)
        if problems:
            raise FailoverError("; ".join(problems))
    epoch = claim_mod.epoch_for(inventory.epoch, explicit)
    note = claim_mod.plan_note(epoch, [s.name for s in stores], claims.holdings(stores, epoch), None,
                               explicit is not None)
    return epoch, note


def failover_notes(target: SiteOutputs, spec: Spec, project: Path, pulumi: automation.PulumiProject | None,
                   old_primary: SiteOutputs | None = None) -> dict[str, str]:
    """What varies per target: a cloud pilot-light's capacity step runs `pulumi up` for minutes,
    and gives the old primary's stack the target's role in its config."""
    note = automation.plan_note(target, spec.app, pulumi or automation.PulumiProject.of(project), old_primary)
    return {"capacity": note} if note else {}


def lease_note(source: str, reachable: bool) -> str:
    """What the old primary's lease costs this run's RTO, for the plan."""
    wait = lease.LENGTH + lease.WAIT_MARGIN
    if reachable:
        return (f"{source} answers SSH: `fence` stops it directly, so take_writes does not wait for its lease (if it "
                f"stops answering meanwhile, up to {wait:.1f} s after `fence` starts); it waits only for the new "
                "primary's own lease to hold: its protector's start and first round, about a second")
    return (f"{source} does not answer SSH: take_writes waits for its lease to run out, {wait:.1f} s after `fence` "
            f"starts, which follows the won claim (lease {lease.LENGTH:.0f} s + {lease.WAIT_MARGIN} s margin), overlapped with the "
            "promotion or restore and the DNS shift (and the new primary's own lease is taken meanwhile): it adds to "
            "RTO only what those steps take less")


def spec_for_run(project: Path, workdir: Path) -> Spec:
    """The spec for `failover run`. While an interrupted failover has not finished `capacity`, its
    source's and target's stacks may be between that step's two role writes (neither says
    primary): the spec loader accepts that for them, and the rerun finishes the change."""
    journal = JournalStore(workdir).current()
    in_flux = ((journal.source, journal.target) if journal is not None and journal.kind == "failover"
               and CAPACITY not in journal.completed() else ())
    return load_spec(project, roles_in_flux=in_flux)


def plan_back(fleet: Fleet, spec: Spec, project: Path, target: str,
              epoch: int | None = None) -> tuple[Plan, Journal | None]:
    """The plan for `back --to target` (a planned switchover), or a FailoverError. Changes nothing."""
    if JournalStore(fleet.workdir).current():
        return plan(fleet, spec, project, target, kind="failback", epoch=epoch)
    inventory = fleet.inventory()
    down = fleet.unreachable()
    problems = failback.input_problems(inventory.names, inventory.active, down - {inventory.active}, target)
    if problems:
        raise FailoverError("; ".join(problems))
    active = fleet.site(inventory.active)
    if inventory.active in down or active.recovery_state() is not False:
        raise FailoverError(f"the active site {active.name} ({active.address}:{spec.database.port}) does not answer "
                            "as a primary: a failback is a planned switchover from a running primary; "
                            f"use `failover run --to {target}`")
    _check_dns(fleet, project)
    claimed, claim_note = _epoch_to_claim(inventory, epoch, f"failover back --to {target}")
    return Plan("failback", inventory.active, target, claimed, failback.data_source(inventory.active, target),
                list(failback.STEP_NAMES), [], None, sorted(down), {CLAIM: claim_note}), None


def stages_for(kind: str) -> list[list[steps_mod.Step]]:
    if kind == "failback":
        return steps_mod.one_at_a_time(failback.FAILBACK)
    return steps_mod.FAILOVER_STAGES


def _check_dns(fleet: Fleet, project: Path) -> None:
    steps_mod.require_dns_secrets(dns_config(fleet.workdir, project))


def _data_source(fleet: Fleet, spec: Spec, inventory, target: str) -> steps_mod.DataSource:
    """A replica that answers in recovery is promoted; otherwise the target's host asks every
    repository (pgBackRest info there: the operator needs no store access for this)."""
    site = fleet.site(target)
    replica_ok = site.recovery_state() is True
    repos = []
    if not replica_ok:
        c = site.service()
        if not c.run(f"test -r {PATHS.config}", warn=True).ok:
            raise FailoverError(f"site {target} holds no replica and no pgBackRest config ({PATHS.config} on host "
                                f"{site.db_host}): run `failover sites protect` while the primary is up")
        repos = [repository(c, PATHS.config, inventory.repo_index(n), inventory, n) for n in inventory.names]
    try:
        return steps_mod.choose_source(site.role, replica_ok, spec.database.replication, repos)
    except FailoverError as error:
        raise FailoverError(f"site {target}: {error}") from None


def journal_copies(fleet: Fleet) -> Callable[[], list[Store]]:
    """Where journal copies go: the stores of the sites that answered SSH (asked once per Fleet:
    the journal is saved twice per step, and asking every time would cost the critical path)."""
    return lambda: [Store(s) for s in fleet.inventory().sites if fleet.reachable(s.site)]


def execute(fleet: Fleet, spec: Spec, project: Path, the_plan: Plan, journal: Journal | None,
            progress: Callable[[str], None] = lambda m: None,
            stages: list[list[steps_mod.Step]] | None = None,
            pulumi: automation.PulumiProject | None = None) -> Journal:
    """Runs the plan's pending steps, journaling each before and after; returns the completed journal.

    The steps of one stage run at once (threads sharing the sites' SSH connections); the next
    stage starts when all of them are done. A failed step fails the run once its stage ends.
    """
    store, copies = JournalStore(fleet.workdir), journal_copies(fleet)
    stages = stages or stages_for(journal.kind if journal is not None else the_plan.kind)
    claiming = stages[0] if stages and [name for name, _ in stages[0]] == [CLAIM] else None
    opened = journal or the_plan  # a resumed run goes on with its journal's source, target and epoch
    run = steps_mod.Run(fleet, spec, project, opened.source, opened.target, opened.epoch, the_plan.data, progress,
                        pulumi=pulumi, run_id=journal.run_id if journal is not None else new_run_id(),
                        kind=opened.kind)

    def save() -> None:  # the journal of this run, once it has one
        store.save(journal, copies())

    if journal is None:
        journal = _claim_then_journal(run, the_plan, stages, claiming)
        save()
        if claiming:
            _crash_point(CLAIM)
    elif claiming:
        _claim_again(run, journal, claiming[0][1], save, store)
    run.fenced = fence_record(journal)
    fence_returning(fleet, spec, project, journal.target)
    done = journal.completed()
    for stage in stages[1:] if claiming else stages:
        for name, _ in stage:
            if name in done:
                progress(f"{name}: done earlier, skipped")
        pending = [(name, step) for name, step in stage if name not in done]
        if pending:
            _run_stage(run, pending, journal, save)
    journal.finished = now()
    save()
    store.close(journal)
    return journal


def _claim_then_journal(run: steps_mod.Run, the_plan: Plan, stages: list[list[steps_mod.Step]],
                        claiming: list[steps_mod.Step] | None) -> Journal:
    """A new run claims its epoch before anything else; only a run that won gets a journal
    (with the claim recorded in it). A lost claim raises ClaimFailed: nothing was written."""
    names = [name for stage in stages for name, _ in stage]
    events = []
    if claiming:
        run.progress(f"{CLAIM} … epoch {run.epoch}")
        started, clock = now(), time.monotonic()
        detail = claiming[0][1](run)  # sets run.epoch to the won epoch
        events = [Event(CLAIM, STARTED, started),
                  Event(CLAIM, DONE, now(), {"seconds": round(time.monotonic() - clock, 3), **detail})]
        run.progress(f"{CLAIM}: epoch {run.epoch} won, held in {', '.join(detail['held'])}")
    journal = Journal.new(the_plan.kind, the_plan.source, the_plan.target, run.epoch, names, the_plan.to_dict(),
                          run_id=run.run_id)
    journal.events += events
    return journal


def _claim_again(run: steps_mod.Run, journal: Journal, step: Callable[[steps_mod.Run], dict],
                 save: Callable[[], None], store: JournalStore) -> None:
    """A resumed run claims its journal's epoch again: its own objects are recognised by its
    run id (a partial claim is completed). Outranked by a later claim, it can never finish:
    its journal is closed as failed, so that this work directory can start another run."""
    run.progress(f"{CLAIM} … epoch {run.epoch} again (run {run.run_id})")
    clock = time.monotonic()
    try:
        detail = step(run)
    except ClaimFailed as failed:
        if failed.lost:
            journal.record(CLAIM, FAILED, error=str(failed), seconds=round(time.monotonic() - clock, 3))
            save()
            store.close(journal)
        raise
    if CLAIM not in journal.completed():  # a journal begun before it claimed (an older version)
        journal.record(CLAIM, STARTED)
        journal.record(CLAIM, DONE, seconds=round(time.monotonic() - clock, 3), **detail)
        save()
    run.progress(f"{CLAIM}: epoch {run.epoch} is still this run's own, held in {', '.join(detail['held'])}"
                 + (" (recognised by its run id)" if detail["recognised"] else ""))
def fence_record(journal: Journal) -> dict:
    """What a finished `fence` step of this journal recorded (a resumed run's lease wait reads it)."""
    done = [e for e in journal.events if e.step == "fence" and e.status == DONE]
    detail = done[-1].detail if done else {}
    return {k: detail[k] for k in ("claimed_at", "fenced_directly") if k in detail}


def _run_stage(run: steps_mod.Run, stage: list[steps_mod.Step], journal: Journal, save: Callable[[], None]) -> None:
    """Journals every step of the stage as started, runs them, and journals each as it ends."""
    for name, _ in stage:
        run.progress(f"{name} …")
        journal.record(name, STARTED)
    save()
    started = time.monotonic()

    def finished(name: str, detail: dict | None = None, error: BaseException | None = None) -> None:
        seconds = round(time.monotonic() - started, 3)
        if error is None:
            journal.record(name, DONE, seconds=seconds, **(detail or {}))
        else:
            journal.record(name, FAILED, error=str(error), seconds=seconds)
        save()
        if error is None:
            _crash_point(name)

    if len(stage) == 1:
        name, step = stage[0]
        try:
            detail = step(run)
        except BaseException as error:
            finished(name, error=error)
            raise
        finished(name, detail)
        return
    errors = []
    with ThreadPoolExecutor(max_workers=len(stage)) as pool:
        futures = {pool.submit(step, run): name for name, step in stage}
        unfinished = set(futures.values())
        try:
            for future in as_completed(futures):
                name = futures[future]
                unfinished.discard(name)
                error = future.exception()
                finished(name, None if error else future.result(), error)
                errors += [error] if error else []
        except BaseException as interrupt:  # Ctrl-C while the stage runs: the rerun repeats what did not end
            for name in sorted(unfinished):
                finished(name, error=interrupt)
            raise  # leaving the pool waits for the running steps: each stops at a safe point of its own
    if errors:
        raise errors[0]


def _crash_point(name: str) -> None:
    """A real SIGKILL at the step boundary (FAILOVER_CRASH_AFTER=<step>, for the resume tests):
    no cleanup, no finally blocks, no journal close."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fence_returning(fleet: Fleet, spec: Spec, project: Path, running_to: str | None = None) -> dict[str, str]:
    """Fences every reachable site that is neither active nor `running_to` (the target of the run
    being resumed, which may already be promoted) and still runs an older epoch's app, or a
    PostgreSQL that is a primary.

    A site dropped during a failover could not be fenced then; when it comes back, this marks
    its app fenced and stops its PostgreSQL if that runs as a primary.
    """
    inventory = fleet.inventory()
    run = steps_mod.Run(fleet, spec, project, inventory.active, inventory.active, inventory.epoch,
                        steps_mod.DataSource(steps_mod.PROMOTE, "", ""))
    result = {}
    for site in fleet.sites():
        if site.name in (inventory.active, running_to) or not run.reachable(site.name):
            continue
        config = site.app_config()
        stale_app = config and not config.get("fenced") and int(config.get("epoch", 0)) < inventory.epoch
        stale_primary = site.recovery_state() is False  # it answers, and not as a standby
        if stale_app or stale_primary:
            result[site.name] = steps_mod.fence_site(run, site.name)
    return result


def run_failover(fleet: Fleet, spec: Spec, project: Path, target: str, source: str | None = None,
                 progress: Callable[[str], None] = lambda m: None) -> Journal:
    """Plan and execute in one call (what the drill uses)."""
    the_plan, journal = plan(fleet, spec, project, target, source)
    return execute(fleet, spec, project, the_plan, journal, progress)
