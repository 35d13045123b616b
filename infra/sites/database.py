"""A local site's PostgreSQL as the toolkit reaches it: its connection string, and its
postmaster's PID in the cloud's process table (so `local down` and `drop` stop it by PID).

Bring-up, the runbook, restores and the bench all start clusters and connect to them; none of
them owns these two facts, so they live with the site.
"""
from __future__ import annotations

from pathlib import Path

from infra.sites.local import LocalCloud, LocalSite
from infra.spec import Spec


def dsn(site: LocalSite, spec: Spec, db: str | None = None) -> str:
    return f"host={site.address} port={spec.database.port} user=postgres dbname={db or spec.database.name}"


def record_postmaster(cloud: LocalCloud, site: LocalSite) -> None:
    """Adds the postmaster's PID (pg_ctl daemonizes it) to the PID table."""
    pid_file = Path(site.paths.pgdata) / "postmaster.pid"
    cloud.processes.record(f"pg-{site.name}", int(pid_file.read_text().split()[0]))
