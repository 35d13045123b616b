"""The local cloud's DNS: one Knot server per loopback address, each an independent provider.

Layout under `<workdir>/dns/`:
  providers.yaml   the zone and the provider list (same shape as the spec's dns.providers);
                   secrets appear only as env/NAME references
  <name>.tsig      that server's TSIG secret, mode 0600
  <name>/          the server's config, zone file, journal and log
Each server has its own TSIG key, as two real providers would. Restarting reuses keys and
zone data, so records survive `local down`/`local up` like they would at a real provider.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from infra import secrets
from infra.dns import servers
from infra.dns.records import RecordSet
from infra.sites.processes import ProcessTable
from infra.spec import DnsProvider

DEFAULT_ADDRESSES = ("127.0.10.53", "127.0.10.54")
DEFAULT_PORT = 5353
KEY_NAME = "failover-local"
RFC2136 = "octodns_bind.Rfc2136Provider"


def dns_dir(workdir: Path) -> Path:
    return Path(workdir) / "dns"


def provider_name(index: int) -> str:
    return f"knot-{chr(ord('a') + index)}"


def secret_env(name: str) -> str:
    """The env var behind a local provider's key_secret reference, e.g. FAILOVER_DNS_KNOT_A_TSIG."""
    return f"FAILOVER_DNS_{name.upper().replace('-', '_')}_TSIG"


def _secret(workdir: Path, name: str) -> str:
    path = dns_dir(workdir) / f"{name}.tsig"
    if not path.exists():
        servers.write_private(path, servers.tsig_secret(KEY_NAME) + "\n")
    return path.read_text().strip()


def _entry(name: str, address: str, port: int) -> DnsProvider:
    args = {"host": address, "port": port, "key_name": KEY_NAME,
            "key_secret": f"env/{secret_env(name)}", "key_algorithm": servers.TSIG_ALGORITHM}
    return DnsProvider(name=name, class_=RFC2136, args=args, vendor=f"local-{name}")


def start_local_dns(workdir: Path, addresses: list[str], port: int, zone: str,
                    seeds: list[RecordSet] = ()) -> list[DnsProvider]:
    """Starts (or keeps) one Knot per address and writes providers.yaml; idempotent."""
    workdir = Path(workdir)
    table = ProcessTable(workdir)
    entries = []
    for index, address in enumerate(addresses):
        name = provider_name(index)
        secret = _secret(workdir, name)
        os.environ[secret_env(name)] = secret
        secrets.remember(secret)  # so redact() scrubs it even before anything resolves it
        servers.start_knot(table, f"dns-{name}", dns_dir(workdir) / name, address, port, zone,
                           KEY_NAME, secret, list(seeds))
        entries.append(_entry(name, address, port))
    _write_providers(workdir, zone, entries)
    return entries


def stop_local_dns(workdir: Path, remove: bool = False) -> list[str]:
    """Stops the local Knot servers by PID; `remove` also deletes their keys and zone data."""
    table = ProcessTable(Path(workdir))
    stopped = [n for n in table.names() if n.startswith("dns-knot-") and table.stop(n)]
    if remove:
        shutil.rmtree(dns_dir(workdir), ignore_errors=True)
    return stopped


def _write_providers(workdir: Path, zone: str, entries: list[DnsProvider]) -> None:
    data = {"zone": zone, "providers": {
        e.name: {"class": e.class_, "vendor": e.vendor, "args": dict(e.args)} for e in entries}}
    header = "# Written by `failover local up`. Secrets are env/NAME refs; values in <name>.tsig (0600).\n"
    (dns_dir(workdir) / "providers.yaml").write_text(header + yaml.safe_dump(data, sort_keys=True))


def _read_providers(workdir: Path) -> dict | None:
    path = dns_dir(workdir) / "providers.yaml"
    if not path.exists():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if "zone" not in data or not isinstance(data.get("providers"), dict):
        raise ValueError(f"{path}: needs keys zone and providers; run `failover local up` to rewrite it")
    return data


def local_zone(workdir: Path) -> str | None:
    data = _read_providers(Path(workdir))
    return data["zone"] if data else None


def local_providers(workdir: Path) -> list[DnsProvider] | None:
    """The local cloud's providers, or None if it has no DNS; makes their secrets resolvable."""
    data = _read_providers(Path(workdir))
    if data is None:
        return None
    entries = []
    for name, item in data["providers"].items():
        secret_file = dns_dir(workdir) / f"{name}.tsig"
        if secret_file.exists():
            # The file is the local cloud's source of truth, so it wins over a stale variable.
            os.environ[secret_env(name)] = secret_file.read_text().strip()
            secrets.remember(os.environ[secret_env(name)])
        entries.append(DnsProvider(name=name, class_=item["class"], args=dict(item["args"]),
                                   vendor=item.get("vendor", "local")))
    return entries
