"""`fab` tasks over the same host steps the engine runs, for operators working by hand.

    fab -H postgres@db1.example -f playbooks/fabfile.py pg-status --pgdata /var/lib/postgresql/15/main
    fab -H root@db1.example -f playbooks/fabfile.py backup --config /etc/pgbackrest/pgbackrest.conf --repo 2

Each task is a thin wrapper: the logic lives in playbooks.postgres / pgbackrest / media.
"""
from __future__ import annotations

import json

from fabric import task

from playbooks import pgbackrest, postgres


@task
def pg_status(c, pgdata):
    """Is the cluster at PGDATA running?"""
    print("running" if postgres.is_running(c, pgdata) else "stopped")


@task
def promote(c, pgdata, host, port=5432):
    """Promote the standby at PGDATA (no-op on a primary); prints seconds until it takes writes."""
    print(f"promoted in {postgres.promote(c, pgdata, host, int(port)):.2f}s")


@task
def backup(c, config, repo, kind="full"):
    """A pgBackRest backup of the stanza into repository REPO."""
    result = pgbackrest.backup(c, config, int(repo), kind)
    print("ok" if result.ok else f"failed: {result.stderr.strip()}")


@task
def info(c, config, repo):
    """pgBackRest info for repository REPO, as JSON."""
    data, error = pgbackrest.info(c, config, int(repo))
    print(json.dumps(data, indent=2) if data else f"error: {error}")
