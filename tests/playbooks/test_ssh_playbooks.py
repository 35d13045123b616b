"""The protection steps run over real SSH: Fabric to an sshd started here on 127.0.0.1.

sshd has its own host key, config and port; the client checks the host key against its own
known_hosts (an unknown key is rejected), as it would against a cloud VM.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import paramiko
import pytest
from fabric import Connection

from infra.data import protection
from infra.data.pgbackrest import HostPaths
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from playbooks import pgbackrest, postgres
from playbooks.host import ensure_dir
from tests.conftest import SSH_ADDRESS as ADDRESS
from tests.conftest import service_dir

pytestmark = pytest.mark.integration
DB_ADDRESS = "127.0.21.1"
DB_PORT = 15433


def connect(root: Path, port: int, known_hosts: Path) -> Connection:
    conn = Connection(ADDRESS, user="root", port=port, connect_kwargs={"key_filename": str(root / "client"),
                                                                      "look_for_keys": False, "allow_agent": False})
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(known_hosts))
    return conn


def test_unknown_host_key_is_rejected(sshd, tmp_path):
    root, port = sshd
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        connect(root, port, empty).run("true", hide=True)


def test_protection_steps_run_over_ssh(sshd):
    root, port = sshd
    site = service_dir("ssh-site")
    c = connect(root, port, root / "known_hosts")
    paths = HostPaths(pgdata=f"{site}/pg", socket_dir=f"{site}/run", pgbackrest_dir=f"{site}/pgbackrest")
    outputs = SiteOutputs("vm", "local", "loopback", "primary", (DB_ADDRESS,), (ADDRESS,), "root", DB_ADDRESS, DB_PORT,
                          Repository("posix", {"path": f"{site}/repo"}), MediaRemote("local", {}, f"{site}/media"))
    inventory = Inventory([outputs], active="vm")
    try:
        for directory in (str(site), paths.socket_dir, f"{site}/repo", f"{site}/logs"):
            ensure_dir(c, directory, "755")
        assert postgres.init_cluster(c, paths.pgdata) is True
        assert postgres.init_cluster(c, paths.pgdata) is False  # idempotent: checks before acting
        postgres.configure(c, paths.pgdata, protection.pg_settings(DB_ADDRESS, DB_PORT, paths), protection.HBA)
        protection.install_pgbackrest(c, inventory, "vm", paths, DB_PORT)
        postgres.start(c, paths.pgdata, f"{site}/logs/pg.log")
        assert postgres.psql(c, DB_ADDRESS, DB_PORT, "SELECT current_user").stdout.strip() == "postgres"
        assert all(r.ok for r in protection.create_stanzas(c, inventory, paths)), "stanza-create over SSH"
        results = protection.backup_all(c, inventory, paths)
        assert [(r.repo, r.ok) for r in results] == [("repo1", True)], results
        info, error = pgbackrest.info(c, paths.config, 1)
        assert error == "" and info["backup"][-1]["type"] == "full"
    finally:
        postgres.stop(c, paths.pgdata, "immediate")
        c.close()
        shutil.rmtree(site, ignore_errors=True)
