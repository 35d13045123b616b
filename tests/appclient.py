"""A test client of the reference app and the local cloud's DNS, shared by the runbook tests."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

APP_PORT = 18080  # config.app.port in Pulumi.yaml


def post(address: str, seq: int | None) -> tuple[int, dict]:
    """POST /posts with a canary sequence number; returns (HTTP status, body)."""
    request = urllib.request.Request(f"http://{address}:{APP_PORT}/posts",
                                     json.dumps({"canary_seq": seq, "body": "test"}).encode(),
                                     {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def health(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}:{APP_PORT}/healthz", timeout=5) as reply:
        return json.loads(reply.read())


def dns(workdir: Path) -> list[tuple[str, int]]:
    """The local cloud's authoritative DNS servers as (address, port)."""
    from infra.dns.local import local_providers
    from infra.drill.canary import dns_servers

    return dns_servers(local_providers(workdir))


def resolve(workdir: Path) -> str:
    """The app's apex name as a client of the local cloud's DNS sees it."""
    from infra.drill.canary import TtlResolver

    return TtlResolver(dns(workdir)).resolve("social.example.")
