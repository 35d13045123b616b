"""A partition of one local-cloud VM from the others, with nftables, on loopback only.

Every connection to a 127.x address leaves from 127.0.0.1, whoever sends it, so `ip saddr` does
not tell the VMs apart; the sending socket's owner does. That needs a cloud whose VMs' service
user (PostgreSQL, pg_receivewal, pgBackRest, rclone, the protector, the app) has a UID of its own
in each VM: `failover local up --storage emulated` (infra/sites/vm.Vm.own_service_uid). Its
stores are emulators on the host, each on its own site's address, so the same rules cut a site's
store off with it. The partition of VM A from B and C is:
- A's service user reaches nothing at B's or C's address: their databases, apps and stores;
- B's and C's service users reach nothing at A's address: its database (replication,
  pg_receivewal), its app, its store;
- A's database sends nothing from its port: its replies go to 127.0.0.1 whoever asked, so this
  stops the WAL already on its way to a standby whose own packets are cut;
- nobody opens a new SSH connection to A (the runbook cannot fence A directly); connections
  opened before stay, and the harness reads A's files through its VM root anyway.
Root in a VM is the host's root, so it is never cut: the toolkit's traffic between sites runs as
the service user. The host (the canary, the operator's commands) still reaches A's app and every
store, as clients of a partitioned primary and an operator on the majority's side do.
One table per run, deleted in `finally` by `partition()`.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from infra.sites.layout import SERVICE_USER


def nft(*args: str) -> None:
    result = subprocess.run(["nft", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} failed: {result.stderr.strip()}")


def rules(cut: str, others: list[str], uids: dict[str, int], db_port: int = 5432) -> list[str]:
    """The rules (nft syntax, chain `out`) that cut the VM at `cut` off from the VMs at `others`;
    `uids`: address -> that VM's service UID. Loopback addresses only."""
    for address in [cut, *others]:
        assert address.startswith("127."), f"only loopback addresses may appear in a partition rule: {address}"
    if len({uids[a] for a in [cut, *others]}) != len(others) + 1:
        raise ValueError(f"the VMs share their service UIDs ({uids}): nftables cannot tell their sockets apart; "
                         "a partition needs `failover local up --storage emulated`")
    return [f"meta skuid {uids[cut]} ip daddr {_set(others)} drop",
            f"meta skuid {_set(str(uids[a]) for a in others)} ip daddr {cut} drop",
            f"ip saddr {cut} tcp sport {db_port} drop",
            f"ip daddr {cut} tcp dport 22 ct state new reject with tcp reset"]


@contextmanager
def partition(table: str, cut: str, others: list[str], uids: dict[str, int]):
    """Cuts `cut` off (the rules above) while the block runs; the table is deleted on the way
    out, whatever happened."""
    nft("add", "table", "inet", table)
    try:
        nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0; }")
        for rule in rules(cut, others, uids):
            nft("add", "rule", "inet", table, "out", *rule.split())
        yield
    finally:
        nft("delete", "table", "inet", table)


def service_uids(vms) -> dict[str, int]:
    """address -> the service user's UID in that VM, as its /etc/passwd says."""
    return {vm.address: uid_of(vm.root, SERVICE_USER) for vm in vms}


def uid_of(vm_root: Path, user: str) -> int:
    for line in (vm_root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise LookupError(f"no user {user} in {vm_root}/etc/passwd")


def table_name() -> str:
    return f"failover_test_partition_{os.getpid()}"


def _set(items) -> str:
    return "{ " + ", ".join(items) + " }"
