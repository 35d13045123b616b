"""Debian's layout on every database host, and where the toolkit keeps its files there.

Host-safe (no SSH, no cloud SDK): the engine's Site and the programs that run on the hosts
(the protector, the rejoin agent, the app) read the same names from here.
"""
from __future__ import annotations

from infra.data.pgbackrest import HostPaths

SERVICE_USER = "postgres"
DB_VERSION = "15"
PATHS = HostPaths(pgdata=f"/var/lib/postgresql/{DB_VERSION}/main", socket_dir="/var/run/postgresql",
                  pgbackrest_dir="/var/lib/postgresql/failover")
CONF_DIR = f"/etc/postgresql/{DB_VERSION}/main"
SETTINGS_FILE = f"{CONF_DIR}/conf.d/50-failover.conf"  # what the engine sets (bootstrap's file is 00-)
TOOLKIT_DIR = "/opt/failover"  # the toolkit's code on the host, for the services below
APP_CONFIG = "/etc/failover/app.json"
INVENTORY_FILE = "/etc/failover/inventory.json"  # the Inventory the engine last left on this host
APP_PROGRAM, PROTECTOR_PROGRAM = "failover-app", "failover-protector"
WALSTREAM_PROGRAM, REJOIN_PROGRAM = "failover-walstream", "failover-rejoin"
PROGRAM_DIR = "/etc/supervisor/conf.d"
LOG_DIR = "/var/log/supervisor"
INVENTORY_COPY = ".failover/inventory.json"  # in every site's store (beside its media)
START_CONF = f"{CONF_DIR}/start.conf"  # Debian's: `manual` keeps the cluster from starting at boot


def program(name: str, command: str, autostart: bool = True, directory: str = TOOLKIT_DIR, user: str = SERVICE_USER,
            once: bool = False) -> str:
    """A supervisor program running `command` in `directory` as `user`, restarted whenever it
    exits (the app and the protector must outlive their own bugs and the database's).
    `autostart=False`: it starts only when the engine says so, not whenever supervisord starts.
    `once`: a program that does its job and exits 0 (the rejoin agent), restarted only when it
    fails."""
    restart, startsecs = ("unexpected", 0) if once else ("true", 1)
    return (f"[program:{name}]\ncommand={command}\ndirectory={directory}\nuser={user}\n"
            f"environment=HOME=\"/var/lib/postgresql\",PYTHONDONTWRITEBYTECODE=\"1\"\n"
            f"autostart={str(autostart).lower()}\nautorestart={restart}\nexitcodes=0\nstartsecs={startsecs}\n"
            f"startretries=1000\nstopasgroup=true\n"
            f"redirect_stderr=true\nstdout_logfile={LOG_DIR}/{name}.log\n")


REJOIN_UNIT = "/etc/systemd/system/failover-rejoin.service"


def rejoin_unit() -> str:
    """Where systemd runs (cloud VMs, whose bootstrap runs on the first boot only): a unit that
    starts the rejoin agent under supervisor on every boot, once supervisord answers (`$$` is
    systemd's literal `$`)."""
    start = (f"for i in $$(seq 40); do supervisorctl start {REJOIN_PROGRAM} && exit 0; sleep 0.5; done; exit 1")
    return ("[Unit]\nDescription=failover: the rejoin agent decides about the database at boot\n"
            "After=supervisor.service\nRequires=supervisor.service\n\n"
            f"[Service]\nType=oneshot\nExecStart=/bin/sh -c '{start}'\n\n[Install]\nWantedBy=multi-user.target\n")
