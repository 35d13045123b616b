"""Reachability of the process-based local cloud's sites (LocalCloud).

Sites reached over SSH (a `Fleet`: cloud VMs and the local Debian VMs) have one definition:
`Fleet.reachable`, an SSH round trip to the site's database host; status, snapshot and
restore use it. What follows is the LocalCloud's, kept while the runbook and the replicator
still run on that cloud.

A site is reachable when its provider has not cut it off (it is not dropped) and its store
answers: a directory the service user can read, or an object store's endpoint (each storage
type's `reachable` hook in infra/data/storage.py). Everything on that cloud that skips
"sites that are gone" (the runbook, the protector) asks this one question, so they all agree
about a site whose emulator stopped. Whether its database answers is another
question (`database_answers`): a pilot-light site is reachable without a running database.
"""
from __future__ import annotations

from infra.data.storage import storage_for
from playbooks import postgres


def reachable(c, cloud, name: str, inventory=None) -> bool:
    """Not dropped, and the site's store answers the service user (`inventory`: read if not given)."""
    if name in cloud.dropped():
        return False
    repo = (inventory or cloud.inventory()).site(name).repository
    return storage_for(repo.type).reachable(c, repo)


def unreachable(c, cloud, inventory=None) -> set[str]:
    """The inventory's sites that are not reachable (dropped, or their store does not answer)."""
    inventory = inventory or cloud.inventory()
    return {n for n in inventory.names if not reachable(c, cloud, n, inventory)}


def database_answers(c, site, port: int) -> bool:
    """The site's PostgreSQL answers a query on its address."""
    return postgres.psql(c, site.address, port, "SELECT 1", warn=True).ok
