"""How a secondary follows a primary: the host steps both the engine (`sites protect`, the
runbook's re-protection, over SSH) and the rejoin agent (infra/data/rejoin.py, on the host
itself) run, each as `step(c, ...)` of a context that runs commands as the service user.

A warm site follows as a streaming replica: rewound with pg_rewind when its timeline diverged
(or it is merely behind: pg_rewind then changes nothing), cloned afresh with pg_basebackup
when pg_rewind cannot. A pilot-light site follows with pg_receivewal. Both connect over TLS
at verify-full with the passfile `sites protect` left on the host. Host-safe: psycopg-free,
no SSH, no cloud SDK.
"""
from __future__ import annotations

import shlex

from infra.data import protection
from infra.sites.layout import CONF_DIR, DB_VERSION, PATHS, WALSTREAM_PROGRAM  # noqa: F401 - re-exported

BIN = f"/usr/lib/postgresql/{DB_VERSION}/bin"
REPLICATION_USER = "replicator"
TLS_DIR = f"{PATHS.pgbackrest_dir}/tls"
PASSFILE = f"{PATHS.pgbackrest_dir}/pgpass"
TLS_SETTINGS = {"ssl": "on", "ssl_cert_file": f"{TLS_DIR}/server.crt", "ssl_key_file": f"{TLS_DIR}/server.key",
                "ssl_ca_file": f"{TLS_DIR}/ca.crt", "password_encryption": "scram-sha-256"}
# What pg_rewind reads on its source besides the replication protocol (PostgreSQL's docs,
# pg_rewind "Notes"): granted to the replication role, so no superuser crosses sites.
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text, boolean, boolean)", "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)")


def conninfo(host: str, port: int, application: str, database: str | None = None) -> str:
    """How a peer connects to the primary: TLS verified against the toolkit's CA, a passfile."""
    db = f" dbname={database}" if database else ""
    return (f"host={host} port={port} user={REPLICATION_USER} passfile={PASSFILE} sslmode=verify-full "
            f"sslrootcert={TLS_DIR}/ca.crt application_name={application}{db}")


def rewind_grants() -> list[str]:
    return [f"GRANT EXECUTE ON FUNCTION {f} TO {REPLICATION_USER}" for f in REWIND_FUNCTIONS]


def follower_settings(role: str, address: str, port: int, primary_host: str, primary_port: int, name: str,
                      synchronous: bool) -> dict[str, str]:
    """A secondary's settings: a warm site's replica settings streaming from the primary; a
    pilot-light's own (it runs no database, only the WAL receiver)."""
    if role == "pilot-light":
        values = protection.pg_settings(address, port, PATHS)
    else:
        values = protection.replica_settings(address, port, PATHS, synchronous)
        values["primary_conninfo"] = conninfo(primary_host, primary_port, name)
    return {**values, **TLS_SETTINGS}


def rewind(c, source: str, timeout: float = 3600):
    """pg_rewind of the (stopped) cluster onto `source`; the result, ok or not (warn=True).

    The config lives in /etc (Debian), so pg_rewind is told where: it starts the cluster in
    single-user mode for crash recovery first when it was not shut down cleanly (a dropped VM)."""
    argv = [f"{BIN}/pg_rewind", "-D", PATHS.pgdata, f"--config-file={CONF_DIR}/postgresql.conf",
            "--source-server", source]
    return c.run(shlex.join(argv), warn=True, timeout=timeout)


def clone(c, source: str, timeout: float = 3600) -> None:
    """A fresh data directory from `source` (pg_basebackup over TLS): the old one is never reused."""
    c.run(f"rm -rf {PATHS.pgdata} && mkdir -m 700 {PATHS.pgdata}")
    c.run(shlex.join([f"{BIN}/pg_basebackup", "-D", PATHS.pgdata, "-X", "stream", "-c", "fast", "-d", source]),
          timeout=timeout)


def mark_standby(c) -> None:
    c.run(f"touch {PATHS.pgdata}/standby.signal && rm -f {PATHS.archive_off}")


def walstream_command(slot: str, source: str) -> str:
    """pg_receivewal into the pilot-light's stream directory, from `source`, on its slot.

    `--synchronous`: it fsyncs what it receives at once and reports it flushed. Without it, it
    fsyncs only a complete segment, and under steady writes what the primary flushed last
    is never on the pilot-light's disk: after a warm failover (the pilot-light is then the only
    follower) the exposure window would never close."""
    return shlex.join([f"{BIN}/pg_receivewal", "-D", PATHS.wal_stream, "-S", slot, "-w", "--synchronous",
                       "-d", source])
