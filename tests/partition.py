"""A partition of one local-cloud VM from the others, with nftables, on loopback only.

The VMs share one image, so their service users share UIDs, and every connection to a 127.x
address leaves from 127.0.0.1: neither `meta skuid` nor `ip saddr` alone tells one VM's
sockets from another's. What does, without renumbering users: each flow between sites ends at
a service that only the *other* VMs use, on the cut-off VM's own address and port, and a
server's replies leave from the address it listens on. So the partition of VM A from B and C is:
- PostgreSQL on A (replication and pg_receivewal from B and C): `ip daddr A tcp dport 5432`
  and its replies `ip saddr A tcp sport 5432`. A's own app and protector use the unix socket,
  so A keeps its database;
- A's app asking its peers' /healthz (the app runs as the VMs' postgres user; the test
  harness, as root, still reaches every app): `meta skuid postgres ip daddr {B, C} tcp dport APP`;
- new SSH connections to A (the runbook cannot fence A directly); connections opened before
  stay, and the harness reads A's files through its VM root anyway;
- the other sites' stores, bind mounts that no packet filter sees: unmounted in A's VM
  (`Vm.unmount_store`), so A's protector reaches only its own store.
Clients on the host (the canary) still reach A's app, as clients of a partitioned primary do.
One table per run, deleted in `finally` by whoever calls `partition()`.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path


def nft(*args: str) -> None:
    result = subprocess.run(["nft", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} failed: {result.stderr.strip()}")


def rules(cut: str, others: list[str], service_uid: int, app_port: int, db_port: int = 5432) -> list[str]:
    """The rules (nft syntax, chain `out`) that cut `cut` off from `others`; loopback only."""
    for address in [cut, *others]:
        assert address.startswith("127."), f"only loopback addresses may appear in a partition rule: {address}"
    peers = "{ " + ", ".join(others) + " }"
    return [f"ip daddr {cut} tcp dport {db_port} drop",
            f"ip saddr {cut} tcp sport {db_port} drop",
            f"meta skuid {service_uid} ip daddr {peers} tcp dport {app_port} drop",
            f"ip daddr {cut} tcp dport 22 ct state new reject with tcp reset"]


@contextmanager
def partition(table: str, cut: str, others: list[str], service_uid: int, app_port: int, vm=None,
              other_stores: list[Path] = ()):
    """Cuts `cut` off (the rules above, and `other_stores` unmounted in `vm`) while the block runs;
    the table is deleted on the way out, whatever happened."""
    nft("add", "table", "inet", table)
    try:
        nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0; }")
        for rule in rules(cut, others, service_uid, app_port):
            nft("add", "rule", "inet", table, "out", *rule.split())
        for store in other_stores:
            vm.unmount_store(store)
        yield
    finally:
        nft("delete", "table", "inet", table)


def uid_of(vm_root: Path, user: str) -> int:
    for line in (vm_root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise LookupError(f"no user {user} in {vm_root}/etc/passwd")


def table_name() -> str:
    return f"failover_lease_partition_{os.getpid()}"
