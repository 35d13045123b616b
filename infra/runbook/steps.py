"""The failover runbook's steps, in order. Each checks before it acts, so running it twice is safe.

A step is `step(run: Run) -> dict`: it returns what it found or did (recorded in the journal).
Decisions that need no side effects (are these inputs valid? where does the data come from?
what will be lost?) are plain functions at the top of this module, tested with data.

Fencing, the guarantee that an old primary that comes back cannot take writes, has layers:
0. the claim (infra/runbook/claim.py, the first step): epoch N belongs to the one run that
   created N's claim object in a majority of the sites' stores, so two runs started together
   never both raise the epoch to N; the loser stops before it changes anything;
1. the epoch: every failover raises it in the inventory, in the new primary's `failover.epoch`
   table and in the new site's app.json; the app inserts only while its config's epoch equals
   its database's (one statement), so two sites never accept writes for the same epoch;
2. the old site's app.json is marked `fenced` (and its PostgreSQL stopped) wherever it can be
   reached: at failover time, and again by `fence_returning`, which every runbook command runs
   first, for any site that came back since (its app then answers 409 for every write);
3. the app watches its peers' /healthz and refuses writes as soon as any serves a higher
   epoch (infra/app/server.py PeerWatch, checked before it serves anything), so a site that
   was unreachable during the failover and is restarted behind the runbook's back, with its
   stale config and database, still refuses writes;
4. DNS no longer names it, so clients that respect the TTL stop reaching it within one TTL;
5. the lease (infra/data/lease.py, docs/lease.md): `fence` claims the run's epoch in a majority
   of the stores, which makes an old primary that is alive but cut off fence itself (it stops
   its PostgreSQL); `take_writes` waits for the old lease to run out, lease.LENGTH + WAIT_MARGIN
   after the claim, unless `fence` reached the old primary over SSH and fenced it directly;
   and it stores the new epoch only once the new primary's own protector holds the lease at
   that epoch (`hold_lease`), so a later failover finds a lease to wait out.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from invoke.exceptions import UnexpectedExit

from infra import events, secrets
from infra.clouds import automation
from infra.errors import FailoverError
from infra.data import lease, protection, quorum
from infra.data.restore import restore_database
from infra.dns.site import apply_site, dns_config, failed, plan_site, verify_site
from infra.runbook import claim as claim_step
from infra.runbook import clocks, receipt
from infra.sites import protect as site_protect
from infra.sites import services
from infra.sites.contract import Inventory
from infra.sites.fleet import Fleet
from infra.sites.processes import Laps, wait_for
from infra.sites.site import PATHS, Site
from infra.sites.tls import CertificateAuthority
from infra.spec import Spec
from infra.status import newest_repository
from playbooks import pgbackrest

PROMOTE, RESTORE = "promote", "restore"
SSH_AFTER_SCALE = 600  # seconds for a resized database VM to boot and answer SSH again


# ---------------------------------------------------------------- pure decisions

@dataclass(frozen=True)
class DataSource:
    """Where the new primary's data comes from and what that costs."""

    kind: str  # promote | restore
    detail: str
    expected_loss: str
    repo_index: int | None = None
    repo_site: str | None = None
    # A synchronous replica flushed every acknowledged commit: promoting it needs no archive.
    has_every_commit: bool = False


def input_problems(names: list[str], active: str, dropped: set[str], target: str,
                   source: str | None) -> list[str]:
    """Everything wrong with `run --to target --from source`, before anything is touched."""
    problems = []
    if target not in names:
        problems.append(f"unknown site {target!r}: the inventory has {', '.join(names)}")
    elif target == active:
        problems.append(f"site {target} is already the active primary: choose another site to fail over to")
    elif target in dropped:
        problems.append(f"site {target} is dropped (its provider cut it off): choose a site that is up")
    if source is not None and source not in names:
        problems.append(f"unknown --from site {source!r}: the inventory has {', '.join(names)}")
    elif source is not None and source != active:
        problems.append(f"--from {source} is not the active primary ({active}); leave --from out or name {active}")
    return problems


PROMOTE_LOSS = {
    "sync": "none: the replica confirmed every commit (synchronous replication)",
    "quorum": "none while the pilot-light's WAL receiver answers: the WAL only it holds is replayed first "
              "(quorum commit)",
    "async": "the replica's lag at cut-off (asynchronous replication)",
}


def choose_source(target_role: str, replica_ok: bool, replication: str, repos: list[dict]) -> DataSource:
    """Promote a streaming replica when there is one, else restore from the repository with the newest WAL.

    `repos` are `infra.status.repository` entries of reachable repositories; `replication` is the
    spec's mode. Under quorum the promote step first takes the other secondary's WAL
    (infra.data.quorum), and only then knows whether the archive can be left out.
    """
    if replica_ok:
        return DataSource(PROMOTE, f"promote the {target_role} replica", PROMOTE_LOSS[replication],
                          has_every_commit=replication == "sync")
    best = newest_repository(repos)
    if best is None:
        details = "; ".join(f"{r['name']} at {r['site']}: {r.get('error') or 'no backup'}" for r in repos) or "none reachable"
        raise FailoverError(f"the target holds no replica and no reachable repository has a backup ({details}): "
                            "nothing to fail over to")
    loss = ("none while the warm replica or this site's WAL stream holds every acknowledged commit: the replica's "
            "WAL beyond the stream is taken first (quorum commit)" if replication == "quorum" else
            "writes after the last archived WAL segment (archive lag, about archive_timeout)")
    return DataSource(RESTORE, f"restore from {best['name']} ({best['site']}), WAL up to {best.get('last_archived_wal')}",
                      loss, best["index"], best["site"])


def missing_dns_secrets(providers) -> list[str]:
    """`provider.arg (env/NAME)` for every secret reference that does not resolve."""
    missing = []
    for provider in providers:
        for key, value in provider.args.items():
            if secrets.is_ref(value):
                try:
                    secrets.resolve(value, f"{provider.name}.{key}")
                except secrets.MissingSecret:
                    missing.append(f"{provider.name}.{key} ({value})")
    return missing


def require_dns_secrets(config) -> None:
    """Stops a runbook before anything changes when a DNS provider's secret does not resolve."""
    missing = missing_dns_secrets(config.providers)
    if missing:
        raise FailoverError(f"DNS secrets missing: {', '.join(missing)} (providers from {config.source}); "
                            "set them in the environment before failing over")


# ---------------------------------------------------------------- the run's context

@dataclass
class Run:
    """What every step gets: the Fleet (Inventory + Sites over SSH), the spec and the run's plan."""

    fleet: Fleet
    spec: Spec
    project: Path
    source: str
    target: str
    epoch: int
    data: DataSource
    progress: Callable[[str], None] = lambda m: None
    notes: dict = field(default_factory=dict)
    # Where a cloud pilot-light target's stack lives (default: the project of `project`).
    pulumi: automation.PulumiProject | None = None
    run_id: str = ""  # the journal's id, which the run claims its epoch with
    kind: str = "failover"  # failover | failback
    # The fence step's record (a resumed run reads it from the journal): when its wait for the
    # old primary's lease began and whether the old primary was fenced directly (take_writes).
    fenced: dict = field(default_factory=dict)

    @property
    def inventory(self) -> Inventory:
        return self.fleet.inventory()

    @property
    def site(self) -> Site:
        return self.fleet.site(self.target)

    def reachable(self, name: str) -> bool:
        return self.fleet.reachable(name)

    def unreachable(self) -> set[str]:
        return self.fleet.unreachable()

    @property
    def port(self) -> int:
        return self.spec.database.port

    def dns(self):
        return dns_config(self.fleet.workdir, self.project)


def certificate_authority(fleet: Fleet) -> CertificateAuthority | None:
    """The toolkit's CA where `sites protect` keeps it (the secret FAILOVER_CA, or the work
    directory's), or None here: the runbook re-issues no certificate a site already holds, so
    it runs with the SSH key alone."""
    return CertificateAuthority.available(fleet.workdir / "vms" / "ca")


# ---------------------------------------------------------------- the steps

def preflight(run: Run) -> dict:
    """The target, its data and the DNS providers are reachable, and every reachable host's
    clock is within the protocol's bound; the old primary is never required."""
    if not run.reachable(run.target):
        raise FailoverError(f"target site {run.target} (host {run.site.db_host}) does not answer SSH: "
                            "choose another site, or repair it and run again")
    config = run.dns()
    require_dns_secrets(config)
    if run.data.kind == PROMOTE and run.site.recovery_state() is None:
        raise FailoverError(f"the replica on {run.target} ({run.site.address}:{run.port}) does not answer")
    return {"dns_providers": [p.name for p in config.providers], "data": run.data.detail,
            "clocks": check_clocks(run)}


def check_clocks(run: Run) -> dict:
    """Each reachable host's clock offset from this machine's (over its SSH shell); refuses
    when one is not provably within clocks.BOUND (docs/claims.md, Clocks)."""
    offsets = [clock_offset(run.fleet.site(name)) for name in run.inventory.names if run.reachable(name)]
    found = clocks.problems(offsets)
    if found:
        raise FailoverError(clocks.refusal(found))
    return {o.site: o.to_dict() for o in offsets}


def clock_offset(site: Site) -> clocks.Offset:
    shell = site.service()
    return clocks.measure(site.name, site.db_host, lambda command: shell.run(command).stdout)


def fence(run: Run) -> dict:
    """Raise the epoch in the inventory (always) and fence the old primary where it can be
    reached, with a receipt from its WAL: its last commit, and no commit after the fence point.
    An old primary that cannot be reached fences itself once it loses its lease or sees this
    run's claim (won in the claim step, before this one), so take_writes waits out its lease,
    counted from here (after the claim: later than needed, never earlier)."""
    wait_from = time.time()
    raise_epoch(run)
    fenced = fence_site(run, run.source)
    direct = not fenced.startswith("unreachable")
    run.fenced = {"claimed_at": wait_from, "fenced_directly": direct}
    detail = {"epoch": run.epoch, "old_primary": run.source, "fenced": fenced, "fenced_directly": direct,
              "claimed_at": wait_from,
              "lease_wait_until": None if direct else wait_from + lease.LENGTH + lease.WAIT_MARGIN}
    if run.reachable(run.source):
        detail["receipt"] = fence_receipt(run, run.fleet.site(run.source))
    return detail


def fence_receipt(run: Run, site: Site) -> dict | str:
    """The receipt of a fenced site's stopped cluster (or why there is none), shown as the step
    runs; a COMMIT after the fence point fails the step."""
    taken = take_receipt(site)
    if isinstance(taken, str):
        run.progress(f"fence receipt: {site.name}: {taken}")
        return taken
    run.progress(taken.summary())
    receipt.require_none_after(taken)
    return taken.to_dict()


def take_receipt(site: Site) -> receipt.Receipt | str:
    if site.db_running():
        return "no receipt: its PostgreSQL runs as a standby (it commits nothing)"
    shell = site.service()

    def on_host(command: str) -> tuple[bool, str]:
        result = shell.run(command, warn=True)
        return result.ok, result.stdout + result.stderr

    return receipt.take(site.name, site.db_host, on_host)


def lease_wait(run: Run) -> float:
    """Seconds `take_writes` still waits for the old primary's lease (0 when `fence` fenced it
    directly). A run resumed in another process measures from the claim's time in the journal,
    on this host's clock (docs/lease.md, Clocks)."""
    if not run.fenced or run.fenced.get("fenced_directly"):
        return 0.0
    return lease.wait_seconds(float(run.fenced["claimed_at"]), time.time())


def raise_epoch(run: Run) -> None:
    """The run's epoch into the inventory, published to every reachable store (failover and
    failback alike): a site that comes back reads it there, and fences itself."""
    inventory = run.inventory
    if inventory.epoch < run.epoch:
        inventory.epoch = run.epoch
        run.fleet.publish(inventory)


def fence_site(run: Run, name: str) -> str:
    """Marks a site's app fenced, stops its protector, and stops its PostgreSQL if it is a primary."""
    if not run.reachable(name):
        return "unreachable: left to the epoch and DNS"
    site = run.fleet.site(name)
    config = site.app_config()
    if config and not config.get("fenced"):
        site.write_app_config({**config, "fenced": True})
    services.stop_protector(site)
    stopped = False
    # A running cluster that is not a standby is stopped, whether it answers or not.
    if site.db_running() and site.recovery_state() is not True:
        try:
            site.cluster("stop", "fast", timeout=60)
        except UnexpectedExit:
            # Its protector may stop it at the same moment: it fences itself once it sees this
            # run's claim ("Cluster is not running"). Stopped either way; still running is an error.
            if site.db_running():
                raise
        stopped = True
    return "app fenced" + (", PostgreSQL stopped" if stopped else "")


def capacity(run: Run) -> dict:
    """The target's data disk has room (df on the host); a cloud pilot-light target is then
    scaled up by its Pulumi stack (role primary, `pulumi up`) and its new outputs published in
    the Inventory, after the old primary's stack was given the target's role in its config only
    (so the stack files name one primary). A local site, or one already scaled (a rerun),
    changes nothing."""
    output = run.site.service().run(f"df -Pk {PATHS.pgdata.rsplit('/', 2)[0]}").stdout.splitlines()[-1].split()
    free_mb = int(output[3]) >> 10
    if free_mb < 1024:
        raise FailoverError(f"site {run.target}: only {free_mb} MB free on host {run.site.db_host} under "
                            f"{PATHS.pgdata}: make room before failing over")
    if not automation.scaled_by_pulumi(run.inventory.site(run.target)):
        return {"free_mb": free_mb}
    return {"free_mb": free_mb, "scaled": scale_target(run)}


def scale_target(run: Run) -> dict:
    """`pulumi up` of the target's stack as primary; the Inventory gets its outputs (in the same
    place, so no repository is renumbered) only once the update has succeeded. The database VM
    restarts when it is resized: the step ends when it answers SSH again. Its addresses are
    static, so the Fleet's Site for it stays valid. The old primary's stack (unless it has none,
    on the local cloud) is demoted in config first, to the role the target had."""
    known = run.inventory
    old, target = known.site(run.source), known.site(run.target)
    scaled = automation.scale_up(run.pulumi or automation.PulumiProject.of(run.project), run.target, run.progress,
                                 old_primary=old.site if automation.has_stack(old) else None, old_role=target.role)
    os.environ.update(scaled.secrets)  # this process only, as `inventory pull` does: the env/NAME references resolve
    inventory = run.inventory
    inventory.sites = [scaled.outputs if s.site == run.target else s for s in inventory.sites]
    run.fleet.publish(inventory)
    if scaled.ran_up:
        wait_for(lambda: run.fleet.reachable(run.target, refresh=True), SSH_AFTER_SCALE,
                 f"{run.target} (host {run.site.db_host}) to answer SSH after the scale-up", 5)
    return scaled.to_dict()


def promote_or_restore(run: Run) -> dict:
    """Promote the replica, or restore from the best repository and start it: readable, maybe still replaying.

    A restored cluster starts in archive recovery and answers read-only queries as soon as it is
    consistent, so the app serves reads and DNS can move while it replays the rest of the WAL;
    `take_writes` waits for the end of recovery. Only the pgBackRest config (its repositories)
    is rewritten first; the PostgreSQL settings wait for `protect` (after DNS). A promoted
    replica runs with its replica settings, which name no synchronous standby, so commits never
    wait for the dropped site.
    """
    site = run.site
    clock = time.monotonic()
    taken: list[quorum.Taken] = []
    if site.db_running() and site.recovery_state() is False:  # a resumed run (a stopped cluster answers no psql)
        how = "already a primary"
    elif run.data.kind == PROMOTE:
        taken = take_quorum_wal(run)
        # Archiving starts at the promotion: only into repositories that answer, or pgBackRest
        # retries the dead one and holds WAL back from the others.
        c = site.service()
        protection.install_pgbackrest(c, run.inventory, site.name, PATHS, run.port, run.unreachable())
        # Nothing to fetch from the archive (`take_writes` removes the file) when the replica, with
        # what every other secondary got beyond it, holds every acknowledged commit.
        if run.data.has_every_commit or (taken and all(t.reached for t in taken)):
            c.run(f"touch {PATHS.archive_off}")
        else:  # a secondary that did not answer may have held commits the archive still has
            c.run(f"rm -f {PATHS.archive_off}")
        # A look-up that started before (the replica asks the archive once its stream breaks) may be
        # retrying the dead site's object store for a minute, and the promotion waits for it.
        pgbackrest.interrupt_archiving(c, PATHS.config, "archive-get")
        start_holding(run)  # its lease holds while the promotion and the rest of this stage run
        promoting = time.monotonic()
        site.cluster("promote")
        how = f"promoted in {time.monotonic() - promoting:.2f}s"
    else:
        taken = take_quorum_wal(run)
        restore_database(site, run.inventory, run.data.repo_index, run.unreachable(), None, wait=False)
        how = f"restored from repo{run.data.repo_index} ({run.data.repo_site}), replaying WAL"
    return {"how": how, "data_seconds": round(time.monotonic() - clock, 3),
            **({"quorum": [t.to_dict() for t in taken]} if taken else {})}


def take_quorum_wal(run: Run) -> list[quorum.Taken]:
    """Under quorum commit, the WAL that only another secondary holds, taken into the target
    first (infra.data.quorum): a pilot-light receiver's into a warm target, a warm replica's into
    a pilot-light target. Secondaries that do not answer are skipped (and reported)."""
    if run.spec.database.replication != "quorum":
        return []
    kind, taken = run.data.kind, []
    for outputs in run.inventory.sites:
        if outputs.site in (run.target, run.source):
            continue
        other = run.fleet.site(outputs.site)
        if kind == PROMOTE and outputs.role == "pilot-light":
            run.progress(f"taking {other.name}'s WAL beyond {run.target}'s replica")
            taken.append(quorum.into_replica(run.site, other, run.reachable(other.name)))
        elif kind == RESTORE and outputs.role == "warm":
            run.progress(f"taking {other.name}'s WAL beyond {run.target}'s stream")
            taken.append(quorum.into_stream(run.site, other, run.reachable(other.name)))
    return taken


def take_writes(run: Run) -> dict:
    """Once recovery has ended, and the target holds its own lease, store the new epoch with the
    data: from here the app takes writes.

    Storing the epoch is the last thing, so no write is acknowledged before the database is the
    new primary (fencing layer 1) and before its protector holds the lease at the new epoch
    (layer 5: a later failover that cannot reach it waits that lease out, and it fences itself
    when it sees that failover's claim); the inventory then names the target active. The
    protector starts while the old primary's lease runs out, so it costs RTO only when there is
    nothing to wait for. One psql does the SQL (each round-trip costs a command over SSH on the
    critical path).
    """
    clock = time.monotonic()
    site = run.site
    wait_for(lambda: site.recovery_state() is False, 600, f"{run.target} to finish WAL replay and promote", 0.05)
    waited = round(time.monotonic() - clock, 3)
    lease_clock = time.monotonic()
    pending = lease_wait(run)
    with ThreadPoolExecutor(max_workers=1) as pool:
        holding = pool.submit(hold_lease, run) if pending else None  # it starts while the old lease runs out
        if pending:
            run.progress(f"take_writes: waiting {pending:.1f} s more for {run.source}'s lease to run out "
                         "(it was not fenced directly)")
            time.sleep(pending)
        lease_waited = round(time.monotonic() - lease_clock, 3)
        held = holding.result() if holding else hold_lease(run)
    hold_waited = round(time.monotonic() - lease_clock - lease_waited, 3)
    # PostgreSQL keeps pg_last_xact_replay_timestamp() after recovery: how far the archive (or
    # the stream) reached, from which the drill measures the archive lag. Belt and braces for a
    # target configured synchronous: commits must not wait for a dead standby.
    result = site.psql([
        "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())",
        "ALTER SYSTEM SET synchronous_standby_names = ''",
        "SELECT pg_reload_conf()",
        "INSERT INTO failover.epoch (id, epoch, site, raised_at) VALUES (1, %d, '%s', now()) "
        "ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, site = excluded.site, raised_at = now() "
        "WHERE failover.epoch.epoch < excluded.epoch" % (run.epoch, run.target),
    ], db=run.spec.database.name)
    recovered_to = result.stdout.splitlines()[0].strip() if result.stdout.strip() else ""
    site.service().run(f"rm -f {PATHS.archive_off}")  # the archive is back for its next time as a standby
    inventory = run.inventory
    inventory.active = run.target
    run.fleet.publish(inventory)
    return {"epoch": run.epoch, "replay_wait_seconds": waited, "lease_wait_seconds": lease_waited,
            "recovered_to": float(recovered_to) if recovered_to else None, "lease": held,
            "lease_hold_wait_seconds": hold_waited}


def start_holding(run: Run) -> None:
    """The target's protector started, not waited for, with an Inventory that names it active at
    the run's epoch (only on its host: the stores learn it once `take_writes` stored the epoch).
    Its lease then holds at the new epoch; its other rounds (WAL, media, the commit mode) find
    little to do before `protect`, which starts it again with the same command. Started again,
    it changes nothing: the promotions start it before they promote, `take_writes` (and a resumed
    run) again before it waits for the lease."""
    inventory = run.inventory
    inventory.active = run.target
    services.start_protector(run.site, inventory, run.spec.database.async_after_seconds, wait=False, fresh=False)


def hold_lease(run: Run) -> dict:
    """The target's protector started (if it is not yet) and waited for until its lease holds at
    the run's epoch."""
    clock = time.monotonic()
    start_holding(run)
    started = time.monotonic()
    state = services.wait_lease_held(run.site, run.epoch)
    return {"held_seconds": round(time.monotonic() - clock, 3), "start_seconds": round(started - clock, 3),
            "stores": f"{len(state.get('renewed') or [])} of {state.get('stores')}"}


def catch_up_media(run: Run) -> dict:
    """Copy every reachable bucket into the target's, through their crypt remotes (copy never
    deletes, so this is a union)."""
    inventory, c = run.inventory, run.site.service()
    conf = protection.install_rclone(c, inventory, PATHS)
    sources = [n for n in inventory.names if n != run.target and run.reachable(n)]
    return {"from": protection.fetch_media(c, conf, inventory, sources, run.target)}


def start_app(run: Run) -> dict:
    """The target's app with the new epoch (it re-reads its config; started if not running)."""
    site = run.site
    config = services.app_config(run.inventory, run.target, run.spec, run.epoch, unreachable=run.unreachable())
    if site.healthz() is not None:  # it runs, and re-reads its config: supervisorctl costs a second
        site.write_app_config(config)
        return {"app": "running, config updated", "epoch": run.epoch}
    services.start_app(site, config)
    return {"app": "started", "epoch": run.epoch}


def verify_app(run: Run) -> dict:
    """The target's app answers /healthz as writable with the new epoch."""
    site = run.site

    def healthy():
        health = site.healthz()
        return health if health and health.get("writable") and health.get("epoch") == run.epoch else None

    health = wait_for(healthy, 30, f"{run.target}'s app to report writable at epoch {run.epoch}", 0.1)
    return {"healthz": health}


def prepare_dns(run: Run) -> dict:
    """Plan the shift at every provider while the data is being made ready: octoDNS and the
    provider modules are loaded, each zone read, and a provider that is down is known before
    the shift. Nothing is applied; a provider that fails here is tried again by `shift_dns`."""
    config = run.dns()
    results = plan_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl)
    for name in failed(results):
        error = next(r.error for r in results if r.name == name)
        events.warn(f"DNS provider {name} cannot be planned ({error}); `shift_dns` tries it again")
    return {"providers": {r.name: r.status for r in results},
            "changes": {r.name: r.changes for r in results if r.changes}}


def shift_dns(run: Run) -> dict:
    """Point every name at the target at every provider (each independently).

    A provider that fails (it may belong to the cloud that dropped us) is reported, not fatal:
    the step fails only when no provider at all serves the target.
    """
    config = run.dns()
    results = apply_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl,
                         verify_timeout=None)
    _at_least_one(results, failed(results), f"DNS shift to {run.target}",
                  {r.name: r.error for r in results if r.name in failed(results)})
    return {"providers": {r.name: r.status for r in results}, "ttl": config.ttl,
            "failed": {r.name: r.error for r in results if r.name in failed(results)}}


def verify_dns(run: Run) -> dict:
    """The providers' authoritative servers answer the target's address (at least one must)."""
    config = run.dns()
    checks = verify_site(run.inventory, run.target, config.providers, config.zone, config.names, config.ttl)
    bad = {v.name: v.error for v in checks if not v.ok}
    _at_least_one(checks, list(bad), f"DNS serving {run.target}", bad)
    return {"providers": {v.name: v.seconds for v in checks if v.ok}, "not_serving": bad}


def _at_least_one(results, failed_names: list[str], what: str, errors: dict[str, str]) -> None:
    if results and len(failed_names) == len(results):
        raise FailoverError(f"{what} failed at every provider: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
    for name, error in errors.items():
        events.warn(f"{what}: provider {name} failed ({error}); the others serve it, rerun `failover dns apply` "
                    "when it is back")


def ready_followers(run: Run) -> dict:
    """Beside the promotion: following the new primary starts before it exists. Each remaining
    pilot-light's WAL receiver is stopped (site_protect.hold_stream: that then costs nothing
    inside the exposure window), and `follow_all` starts on a thread of its own (Following): it
    waits for the promotion and follows at once, whatever the runbook does meanwhile (DNS moves
    in the next stage: 0.05-0.9 s). The `follow` step journals what it did. A warm follower
    keeps running: under quorum commit the promote step may be reading its WAL. Nothing here
    stops the failover: a receiver that could not be stopped is stopped by `follow`."""
    held = []
    for name in followers(run):
        site = run.fleet.site(name)
        if site.role != "pilot-light":
            continue
        try:
            site_protect.hold_stream(site)
            held.append(name)
        except Exception as error:  # noqa: BLE001 - reported; follow stops it itself
            events.warn(f"{name}'s WAL receiver was not stopped before the promotion "
                        f"({secrets.redact(str(error))[-300:]}); `follow` stops it")
    run.notes["held"] = held
    run.notes["following"] = Following(run)
    return {"held": held}


class Following:
    """`follow_all` on a daemon thread (a run that fails before the promotion does not wait for
    it at exit); `join` gives its result or raises its error."""

    def __init__(self, run: Run) -> None:
        self.result: dict = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, args=(run,), daemon=True, name="follow")
        self._thread.start()

    def _follow(self, run: Run) -> None:
        try:
            self.result = follow_all(run)
        except BaseException as error:  # noqa: BLE001 - handed to `join`
            self.error = error

    def join(self) -> dict:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def followers(run: Run) -> list[str]:
    """The remaining reachable secondaries, which follow the target."""
    return site_protect.followers(run.inventory, run.target, run.unreachable() | {run.source})


def follow(run: Run) -> dict:
    """Re-protection comes first: as soon as the target is a primary, every remaining reachable
    secondary follows it, before any backup: what `ready_followers` started (a resumed run that
    did not start it here follows now). Until one streams, acknowledged writes live at the
    target only (the drill's exposure window)."""
    following = run.notes.pop("following", None)
    return following.join() if following else follow_all(run)


def follow_all(run: Run) -> dict:
    """Every follower follows the target once it is a primary, all at once (one inline: it reuses
    this thread's shells, opened while the promotion is awaited), the warm replica by a reload
    (else rewound or re-cloned), the pilot-light's pg_receivewal restarted towards it. A follower
    that fails is reported, not fatal: `protect` tries it again. `laps`: where each follower's
    time went after the promotion; `promotion_wait`: how long this waited for it."""
    clock = time.monotonic()
    names = followers(run)
    for name in names if len(names) == 1 else []:
        open_shells(run.fleet.site(name))
    wait_for(lambda: run.site.recovery_state() is False, 600, f"{run.target} to finish WAL replay and promote", 0.05)
    promoted = round(time.monotonic() - clock, 3)
    if len(names) == 1:
        results = [follow_one(run, names[0])]
    else:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            results = list(pool.map(lambda name: follow_one(run, name), names))
    return {"followed": {name: r[0] for name, r in zip(names, results)},
            "laps": {name: r[1] for name, r in zip(names, results)},
            "promotion_wait": promoted, "follow_seconds": round(time.monotonic() - clock, 3)}


def open_shells(site: Site) -> None:
    """This thread's shells to the site, opened ahead (an SSH session and sudo each); a failure
    is left to the follower's own commands to report."""
    try:
        site.service().run("true", warn=True)
        site.root().run("true", warn=True)
    except Exception:  # noqa: BLE001 - best effort, see above
        pass


def follow_one(run: Run, name: str) -> tuple[str, dict[str, float]]:
    """One follower follows the target: what it did (or why it failed) and its laps."""
    laps = Laps()
    run.progress(f"{name}: following {run.target}")
    try:
        done = site_protect.follow_site(run.fleet.site(name), run.site, run.spec, name in run.notes.get("held", ()), laps)
    except Exception as error:  # noqa: BLE001 - reported; protect follows it again
        done = f"failed: {secrets.redact(str(error))[-300:]}"
        events.warn(f"{name} does not follow {run.target} yet ({done}); `protect` tries again")
    return done, laps.seconds


def protect_again(run: Run) -> dict:
    """Re-protection, followers first: every remaining secondary follows the target (the warm
    replica rewound or re-cloned, the pilot-light's WAL receiver restarted towards it) before
    anything else, so the new primary's commits reach another site within seconds instead of
    after the backups; then `sites protect` with the target as the primary, a fresh backup in
    every remaining repository, and the protector on the new primary's host.

    Protect is idempotent: the new primary gets the primary's settings (a restored one is
    restarted once for archive_mode), the stanza where a repository lacks it; the followers
    are found streaming already.
    """
    inventory = run.inventory
    sites = {s.name: s for s in run.fleet.sites()}
    clock = time.monotonic()
    followed = site_protect.follow(inventory, sites, run.spec, run.unreachable(), run.progress, run.target)
    follow_seconds = round(time.monotonic() - clock, 3)
    # take_writes emptied synchronous_standby_names in postgresql.auto.conf, which would
    # override the settings protect writes: the spec's mode comes back from those.
    run.site.psql(["ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"])
    report = site_protect.protect(inventory, sites, run.spec, certificate_authority(run.fleet), run.progress,
                                  keep_existing=True)
    skip = set(report.skipped)
    # After a promotion pg_control keeps the old timeline until a checkpoint; pgBackRest refuses that.
    run.site.psql("CHECKPOINT")
    backups = protection.backup_all(run.site.service(), inventory, PATHS, skip)
    broken = [f"{r.repo} ({r.site}): {r.error}" for r in backups if not r.ok]
    if broken:
        raise FailoverError("protecting the new primary failed: " + "; ".join(broken))
    services.start_protector(run.site, inventory, run.spec.database.async_after_seconds)
    return {"followed": followed, "follow_seconds": follow_seconds,
            "repositories": [f"{r.repo} ({r.site})" for r in backups], "skipped": sorted(skip),
            "backup_seconds": {r.repo: r.seconds for r in backups}, "did": report.sites,
            "protect_seconds": report.seconds}


Step = tuple[str, Callable[[Run], dict]]

# Steps in one stage run at once, each journaled on its own. Media, the app and the DNS plan
# need nothing from the promotion. Starting the app early and moving DNS to a site that is
# still replaying WAL is safe: the app takes writes only once the new epoch is in a writable
# database, which `take_writes` stores (fencing layer 1), so until then it serves reads and
# answers 409/503 to writes; nothing is acknowledged. Clients that re-resolve during the replay
# read from the new site instead of timing out on the dropped one.
FAILOVER_STAGES: list[list[Step]] = [
    [(claim_step.CLAIM, claim_step.claim)],  # first, alone, before the journal exists (runner.execute)
    [("preflight", preflight)],
    [("fence", fence)],
    [("capacity", capacity)],
    [("promote", promote_or_restore), ("media", catch_up_media), ("start_app", start_app),
     ("prepare_dns", prepare_dns), ("ready_followers", ready_followers)],
    [("shift_dns", shift_dns)],
    [("take_writes", take_writes), ("verify_dns", verify_dns), ("follow", follow)],
    [("verify_app", verify_app)],
    [("protect", protect_again)],
]
STEP_NAMES = [name for stage in FAILOVER_STAGES for name, _ in stage]


def one_at_a_time(steps: list[Step]) -> list[list[Step]]:
    """Stages of one step each, for runbooks whose steps all depend on the one before."""
    return [[step] for step in steps]
