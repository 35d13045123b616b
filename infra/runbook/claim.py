"""The runbook's first step: claim the run's epoch (infra/data/claims.py, docs/claims.md).

Epoch N belongs to the run that created N's claim object, by a conditional create, in a
majority of the sites' stores. A run claims before it writes its journal or touches a site, so
a run that loses has changed nothing: it stops with an error that names the winner (target,
run id and host) and the way past a winner that is dead (a higher epoch, claimed explicitly
with `--epoch`). A resumed run claims its journal's epoch again with its own run id: its own
objects count as its own, so it goes on, unless a later epoch was claimed meanwhile (it is
outranked, and stops).

The claim objects are created from the operator's machine, with the stores' own HTTP APIs
(or a posix link): the sites' hosts take no part, and the dropped provider's store, which does
not answer, counts for nobody.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from infra.data import claims, lease
from infra.data.storage import Store
from infra.errors import FailoverError
from infra.sites.contract import Inventory

if TYPE_CHECKING:  # the steps module lists this step; importing it here would be a cycle
    from infra.runbook.steps import Run

CLAIM = "claim"


class ClaimFailed(FailoverError):
    """This run does not own its epoch, and has changed nothing. `cause` is the claims error;
    `lost` is True when another run owns the epoch (or a later one) for good."""

    def __init__(self, message: str, cause: claims.ClaimError):
        super().__init__(message)
        self.cause = cause
        self.lost = isinstance(cause, claims.ClaimLost)


# ---------------------------------------------------------------- pure decisions

def epoch_for(inventory_epoch: int, explicit: int | None) -> int:
    """The epoch a new run claims: the one after the Inventory's, unless --epoch names one.

    Not above the highest claim found: two runs that read the same Inventory must race for
    the same epoch, or the later one would win the next epoch and both would go on."""
    return explicit if explicit is not None else inventory_epoch + 1


def epoch_problems(explicit: int | None, inventory_epoch: int, highest: int, holder: claims.Claimant | None,
                   command: str) -> list[str]:
    """What is wrong with `--epoch explicit` for a new run: it must lie above the Inventory's
    epoch and above every claimed epoch (`highest`, held by `holder` somewhere), since it is
    meant to outrank them."""
    if explicit is None:
        return []
    if explicit <= inventory_epoch:
        return [f"--epoch {explicit} is not above the Inventory's epoch {inventory_epoch}: "
                f"use `{command} --epoch {max(inventory_epoch, highest) + 1}`"]
    if explicit <= highest:
        by = f" by {holder}" if holder else ""
        return [f"--epoch {explicit} is not above the highest claimed epoch, {highest} (claimed{by}): "
                f"use `{command} --epoch {highest + 1}`"]
    return []


def resume_problems(explicit: int | None, journal_epoch: int, run_id: str) -> list[str]:
    if explicit is not None and explicit != journal_epoch:
        return [f"run {run_id} is open and claimed epoch {journal_epoch}: resume it without --epoch (or with "
                f"--epoch {journal_epoch})"]
    return []


def plan_note(epoch: int, store_names: list[str], holdings: list[claims.Holding], resumed_run: str | None,
              explicit: bool) -> str:
    """What the claim step will claim, for the plan, and who holds that epoch already."""
    n = len(store_names)
    where = f"in a majority ({n // 2 + 1} of {n}) of the stores of {', '.join(sorted(store_names))}"
    if resumed_run:
        return f"epoch {epoch} again {where}: run {resumed_run}'s own claim, recognised by its run id"
    why = "given by --epoch" if explicit else "the Inventory's epoch + 1"
    note = f"epoch {epoch} ({why}) {where}"
    held = [f"{h.site}: {h.holder}" for h in holdings if h.holder]
    if held:
        note += "; already claimed there: " + "; ".join(held) + " (this run loses to a run holding a majority)"
    unreachable = [h.site for h in holdings if h.error]
    if unreachable:
        note += f"; not answering now: {', '.join(unreachable)} (counts for nobody)"
    return note


def won_detail(won: claims.Claim, run_id: str) -> dict:
    """The journal's record of a won claim: each store's state, and whether the run found
    its own objects there already (a resumed run recognising its claim)."""
    stores = {}
    for h in won.holdings:
        if h.created:
            stores[h.site] = "created"
        elif h.holder and h.holder.run_id == run_id:
            stores[h.site] = "this run's own, from before"
        elif h.holder:
            stores[h.site] = f"held by {h.holder}"
        else:
            stores[h.site] = h.error or ("not asked" if h.unread else "no claim")
    return {"epoch": won.epoch, "run_id": run_id, "host": won.claimant.host, "majority": won.majority,
            "held": won.held_by(run_id), "recognised": any(v == "this run's own, from before" for v in stores.values()),
            "stores": stores}


def fix_for_lost(error: claims.ClaimError, command: str) -> str:
    """How to get past a winner that is dead: claim a higher epoch explicitly."""
    claim = error.claim
    if not isinstance(error, claims.ClaimLost) or claim is None or claim.outcome != claims.LOST:
        return ""
    return (f". If that run is dead (it stopped and will not be resumed: its journal is on its host, with a copy "
            f"in the stores), claim the next epoch explicitly: `{command} --epoch {claim.epoch + 1} --yes`; "
            "it outranks the dead run's")


# ---------------------------------------------------------------- the step

def stores(inventory: Inventory) -> list[Store]:
    """Every site's store and every witness's, the dropped ones included: an unreachable store
    counts for nobody, and every claimer and the lease's holder count majorities over this same
    set (lease.stores)."""
    return lease.stores(inventory)


def claim(run: "Run") -> dict:
    """Claims the run's epoch in a majority of the stores; raises ClaimFailed otherwise.

    `run.epoch` becomes the won epoch (higher than asked only after epochs that split)."""
    if not run.run_id:
        raise ValueError("a claim needs the run's id (the journal's)")
    # A failback's source keeps serving until stop_writes fences it: its lease ignores this claim.
    me = claims.Claimant(run.target, run.run_id, switchover_from=run.source if run.kind == "failback" else "")
    command = f"failover {'back' if run.kind == 'failback' else 'run'} --to {run.target}"
    try:
        won = claims.claim_epoch(stores(run.inventory), run.epoch, me)
    except claims.ClaimError as error:
        raise ClaimFailed(str(error) + fix_for_lost(error, command), error) from None
    run.epoch = won.epoch
    return won_detail(won, run.run_id)
