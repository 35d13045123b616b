"""Knot and PowerDNS as plain processes on a loopback address, for the local cloud and tests.

Each server gets its own directory, config and ports, and is started and stopped by PID
through ProcessTable. Nothing here binds or sends outside 127.0.0.0/8.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets as random
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from infra.dns.records import RecordSet
from infra.sites.processes import ProcessTable, wait_for

PDNS_SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
TSIG_ALGORITHM = "hmac-sha256"
START_TIMEOUT = 15.0


def check_loopback(address: str) -> None:
    """Refuses any address outside 127.0.0.0/8: servers here must never face a network."""
    if not ipaddress.ip_address(address).is_loopback or ":" in address:
        raise ValueError(f"DNS servers here bind to 127.0.0.0/8 only, got {address!r}")


def tsig_secret(key_name: str) -> str:
    """A new hmac-sha256 secret (base64) from tsig-keygen, or Knot's keymgr where BIND's is absent."""
    if shutil.which("tsig-keygen"):
        out = subprocess.run(["tsig-keygen", "-a", TSIG_ALGORITHM, key_name],
                             check=True, capture_output=True, text=True).stdout
        return out.split('secret "', 1)[1].split('"', 1)[0]
    if shutil.which("keymgr"):
        out = subprocess.run(["keymgr", "-t", key_name, TSIG_ALGORITHM],
                             check=True, capture_output=True, text=True).stdout
        return out.split("secret:", 1)[1].split()[0]
    # Same strength as both tools: 32 random bytes, base64.
    return base64.b64encode(random.token_bytes(32)).decode()


def write_private(path: Path, text: str) -> None:
    """Writes a file readable by its owner only (it holds a secret), created 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


def soa_answers(address: str, port: int, zone: str) -> bool:
    """True once the server answers authoritatively for the zone."""
    try:
        reply = dns.query.udp(dns.message.make_query(zone, "SOA"), address, port=port, timeout=0.3)
    except (OSError, dns.exception.DNSException):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


# --- Knot -------------------------------------------------------------------------------

def knot_config(directory: Path, address: str, port: int, zone: str, key_name: str, secret: str) -> str:
    # Updates and transfers need the TSIG key: an unsigned or wrongly signed one is refused.
    return f"""server:
    rundir: "{directory}/run"
    listen: {address}@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{directory}/db"
control:
    listen: "{directory}/run/knot.sock"
key:
  - id: {key_name}
    algorithm: {TSIG_ALGORITHM}
    secret: {secret}
acl:
  - id: toolkit_update
    key: {key_name}
    action: [update, transfer]
template:
  - id: default
    storage: "{directory}/zones"
    file: "%s.zone"
zone:
  - domain: {zone}
    acl: toolkit_update
"""


def zone_file(zone: str, address: str, seeds: list[RecordSet]) -> str:
    """SOA and NS (the server itself as ns1) plus any seed records; the serial is the time."""
    lines = [f"$ORIGIN {zone}", "$TTL 300",
             f"@ 300 IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 604800 60",
             f"@ 300 IN NS ns1.{zone}", f"ns1 300 IN A {address}"]
    for seed in seeds:
        lines.extend(seed.zone_file_lines())
    return "\n".join(lines) + "\n"


def start_knot(table: ProcessTable, name: str, directory: Path, address: str, port: int, zone: str,
               key_name: str, secret: str, seeds: list[RecordSet] = ()) -> None:
    """Starts knotd serving `zone` on address@port (a fresh zone file only on the first start)."""
    check_loopback(address)
    for sub in ("run", "db", "zones"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    write_private(directory / "knot.conf", knot_config(directory, address, port, zone, key_name, secret))
    zone_path = directory / "zones" / f"{zone}zone"
    if not zone_path.exists():
        zone_path.write_text(zone_file(zone, address, list(seeds)))
    table.start(name, ["knotd", "-c", str(directory / "knot.conf")], directory / "knotd.log")
    wait_for(lambda: soa_answers(address, port, zone), START_TIMEOUT, f"knotd {name} on {address}:{port}")


# --- PowerDNS ---------------------------------------------------------------------------

def pdns_config(directory: Path, address: str, dns_port: int, api_port: int, api_key: str) -> str:
    # security-poll-suffix must stay empty, or pdns asks the machine's resolver for news.
    return f"""launch=gsqlite3
gsqlite3-database={directory}/pdns.sqlite3
local-address={address}:{dns_port}
socket-dir={directory}/run
daemon=no
guardian=no
disable-syslog=yes
log-timestamp=yes
loglevel=4
disable-axfr=yes
api=yes
api-key={api_key}
webserver=yes
webserver-address={address}
webserver-port={api_port}
webserver-allow-from=127.0.0.0/8
primary=no
default-soa-content=ns1.@ hostmaster.@ 0 3600 600 604800 60
security-poll-suffix=
"""


def start_pdns(table: ProcessTable, name: str, directory: Path, address: str, dns_port: int,
               api_port: int, api_key: str, zone: str, seeds: list[RecordSet] = ()) -> None:
    """Starts pdns_server (sqlite3 backend, HTTP API) and creates `zone` through the API if absent."""
    check_loopback(address)
    (directory / "run").mkdir(parents=True, exist_ok=True)
    database = directory / "pdns.sqlite3"
    if not database.exists():
        with sqlite3.connect(database) as db:
            db.executescript(PDNS_SCHEMA.read_text())
    write_private(directory / "pdns.conf", pdns_config(directory, address, dns_port, api_port, api_key))
    table.start(name, ["pdns_server", f"--config-dir={directory}"], directory / "pdns.log")
    api = PdnsApi(address, api_port, api_key)
    wait_for(api.ready, START_TIMEOUT, f"pdns_server {name} API on {address}:{api_port}")
    if not api.has_zone(zone):
        api.create_zone(zone, address, list(seeds))
    wait_for(lambda: soa_answers(address, dns_port, zone), START_TIMEOUT, f"pdns_server {name} on {address}:{dns_port}")


class PdnsApi:
    """Just enough of the PowerDNS HTTP API to create a zone with seed records (no proxies)."""

    def __init__(self, address: str, port: int, api_key: str):
        self.base = f"http://{address}:{port}/api/v1/servers/localhost"
        self.key = api_key
        # An empty ProxyHandler: loopback API calls must never go through an environment proxy.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        with self.opener.open(request, timeout=3) as reply:
            return json.loads(reply.read() or b"null")

    def ready(self) -> bool:
        try:
            return bool(self.request("GET", ""))
        except (OSError, ValueError):
            return False

    def has_zone(self, zone: str) -> bool:
        return any(z["name"] == zone for z in self.request("GET", "/zones"))

    def create_zone(self, zone: str, address: str, seeds: list[RecordSet]) -> None:
        rrsets = [{"name": s.fqdn(zone), "type": s.type, "ttl": s.ttl, "changetype": "REPLACE",
                   "records": [{"content": v, "disabled": False} for v in s.values]}
                  for s in [RecordSet("ns1", "A", 300, (address,)), *seeds]]
        self.request("POST", "/zones", {"name": zone, "kind": "Native", "nameservers": [f"ns1.{zone}"],
                                        "rrsets": rrsets})
