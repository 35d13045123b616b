"""The canary workload: sequence-numbered posts written through the DNS name, every ack recorded.

A thread resolves the app's name with dnspython against the DNS providers' own servers (no
system resolver), keeps the answer for its TTL as any client would, and posts
`{"canary_seq": n}` (every `media_every`-th with a small media object). Each attempt becomes
a `Write`: when it was sent, when it was answered, the address it went to, and whether it was
acknowledged (HTTP 201), by which site and at which epoch. The measurements are computed from
these records.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

import dns.exception
import dns.resolver


@dataclass
class Write:
    seq: int
    sent: float  # wall clock (time.time()) when sent
    answered: float
    address: str | None
    acked: bool
    site: str | None = None
    status: int | None = None
    error: str = ""
    media: bool = False
    media_key: str | None = None
    epoch: int | None = None  # the epoch the acknowledging site wrote at

    def to_dict(self) -> dict:
        return asdict(self)


class TtlResolver:
    """Resolves a name at the given authoritative servers and caches the answer for its TTL."""

    def __init__(self, servers: list[tuple[str, int]], clock=time.time):
        self.servers = servers
        self.clock = clock
        self._cache: dict[str, tuple[str, float]] = {}

    def resolve(self, name: str) -> str:
        cached = self._cache.get(name)
        if cached and cached[1] > self.clock():
            return cached[0]
        errors = []
        for address, port in self.servers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers, resolver.port, resolver.lifetime = [address], port, 1.0
            try:
                answer = resolver.resolve(name, "A")
            except dns.exception.DNSException as error:
                errors.append(f"{address}:{port}: {error}")
                continue
            value = sorted(r.to_text() for r in answer)[0]
            self._cache[name] = (value, self.clock() + answer.rrset.ttl)
            return value
        raise OSError(f"no DNS server answered {name}: {'; '.join(errors)}")


class Canary:
    """The workload thread. `start()`, then `stop()`; `writes` holds every attempt in order."""

    def __init__(self, name: str, port: int, servers: list[tuple[str, int]], interval: float = 0.05,
                 media_every: int = 10):
        self.name, self.port, self.interval, self.media_every = name, port, interval, media_every
        self.resolver = TtlResolver(servers)
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="canary", daemon=True)
        # Sequence numbers are unique across drills on the same data (canary_seq is UNIQUE).
        self._seq = int(time.time()) * 1000

    def start(self) -> "Canary":
        self._thread.start()
        return self

    def stop(self) -> list[Write]:
        self._stop.set()
        self._thread.join(10)
        return self.writes

    def acked_on(self, site: str) -> Write | None:
        return next((w for w in self.writes if w.acked and w.site == site), None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._seq += 1
            self.writes.append(self.write_once(self._seq))
            self._stop.wait(self.interval)

    def write_once(self, seq: int) -> Write:
        sent, address = time.time(), None
        with_media = self.media_every > 0 and seq % self.media_every == 0
        body = {"canary_seq": seq, "body": f"canary {seq}", "user_id": 1}
        if with_media:
            body["media"] = base64.b64encode(os.urandom(512)).decode()
        try:
            address = self.resolver.resolve(self.name)
            request = urllib.request.Request(f"http://{address}:{self.port}/posts", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=2) as reply:
                answer = json.loads(reply.read())
                return Write(seq, sent, time.time(), address, reply.status == 201, answer.get("site"),
                             reply.status, media=with_media, media_key=answer.get("media_key"),
                             epoch=answer.get("epoch"))
        except urllib.error.HTTPError as error:
            return Write(seq, sent, time.time(), address, False, None, error.code, _short(error), with_media)
        except (OSError, ValueError) as error:
            return Write(seq, sent, time.time(), address, False, None, None, _short(error), with_media)


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:160]


def read_back(address: str, port: int) -> set[int]:
    """Every canary sequence number the site's database holds."""
    with urllib.request.urlopen(f"http://{address}:{port}/canary", timeout=10) as reply:
        return set(json.loads(reply.read())["seqs"])


def dns_servers(providers) -> list[tuple[str, int]]:
    """(address, port) of every provider's authoritative server."""
    from infra.dns.providers import authority

    servers = []
    for provider in providers:
        where = authority(provider)
        if where is not None:
            servers += [(a, where.port) for a in where.addresses]
    return servers
