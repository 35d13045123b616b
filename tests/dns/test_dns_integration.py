"""DNS moved at three real providers on loopback: two Knot (RFC 2136 + TSIG) and one PowerDNS (API).

Everything binds to 127.0.3.1-3 on ports chosen free at start; every query goes only there.
Servers are started and stopped by PID through ProcessTable.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
import yaml
from typer.testing import CliRunner

from infra.dns.site import choose_providers
from infra.dns import local, servers
from infra.dns import site as dns_site
from infra.dns.cli import app
from infra.dns.records import RecordSet
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable
from infra.spec import DnsProvider
from tests.conftest import free_port_on

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("knotd") and shutil.which("pdns_server")),
                                 reason="needs knotd and pdns_server")]

ZONE = "social.test."
NAMES = ["", "www", "api", "media"]
KNOT_ADDRESSES = ["127.0.3.1", "127.0.3.2"]
PDNS_ADDRESS = "127.0.3.3"
ADDRESS = {"a": "127.0.1.10", "b": "127.0.2.10"}
PDNS_KEY = "pdns-api-key-" + os.urandom(8).hex()
# Records someone else owns: they must come through every apply unchanged.
FOREIGN = [RecordSet("", "MX", 300, ("10 mx.example.net.",)),
           RecordSet("", "TXT", 300, ('"v=spf1 -all"',)),
           RecordSet("www", "TXT", 300, ('"owned-by-marketing"',)),
           RecordSet("mail", "A", 300, ("127.0.9.9",))]


def site(name: str) -> SiteOutputs:
    return SiteOutputs(site=name, cloud="local", region="lo", role="warm", public_addresses=(ADDRESS[name],),
                       ssh_hosts=(), ssh_user="app", db_host=ADDRESS[name], db_port=5432,
                       repository=Repository("posix", {"path": f"/tmp/{name}"}),
                       media_remote=MediaRemote("local", {}, f"/tmp/{name}-media"))


def write_spec(root: Path) -> Path:
    project = {"name": "failover", "runtime": "python", "stackConfigDir": "stacks", "config": {
        "app": {"value": {"image": "app:1", "port": 18080}},
        "database": {"value": {"name": "social", "version": 15}},
        "media": {"value": {"bucket": "media"}},
        "dns": {"value": {"zone": ZONE, "names": NAMES, "ttl": 30, "providers": {}}}}}
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text(yaml.safe_dump(project))
    for name, role in (("a", "primary"), ("b", "warm")):
        stack = {"config": {"failover:site": {"cloud": "local", "region": "lo", "role": role}}}
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(stack))
    return root / "Pulumi.yaml"


class Env:
    """The servers, providers and files of one test module."""

    def __init__(self, root: Path):
        self.workdir = root / "work"
        self.project = write_spec(root)
        self.port = free_port_on([*KNOT_ADDRESSES, PDNS_ADDRESS])
        self.api_port = free_port_on([PDNS_ADDRESS])
        self.table = ProcessTable(self.workdir)
        self.inventory = Inventory(sites=[site("a"), site("b")], active="a")
        self.inventory.save(self.workdir / "inventory.json")

    def start_knots(self) -> None:
        """Starts whichever Knot is not running (idempotent, as `failover local up`)."""
        self.knots = local.start_local_dns(self.workdir, KNOT_ADDRESSES, self.port, ZONE, FOREIGN)
        choose_providers(self.workdir, "local")  # as `failover local up` does: explicitly
        if hasattr(self, "pdns"):
            self._add_to_providers_file(self.pdns)  # start_local_dns rewrites the file

    def start(self) -> None:
        self.start_knots()
        servers.start_pdns(self.table, "dns-pdns", self.workdir / "pdns", PDNS_ADDRESS, self.port,
                           self.api_port, PDNS_KEY, ZONE, FOREIGN)
        os.environ["TEST_DNS_PDNS_KEY"] = PDNS_KEY
        self.pdns = DnsProvider("pdns", "octodns_powerdns.PowerDnsProvider",
                                {"host": PDNS_ADDRESS, "port": self.api_port, "api_key": "env/TEST_DNS_PDNS_KEY",
                                 "dns_address": PDNS_ADDRESS, "dns_port": self.port}, "powerdns")
        self._add_to_providers_file(self.pdns)

    def _add_to_providers_file(self, entry: DnsProvider) -> None:
        # The CLI reads <workdir>/dns/providers.yaml; PowerDNS joins it as a third provider.
        path = self.workdir / "dns" / "providers.yaml"
        data = yaml.safe_load(path.read_text())
        data["providers"][entry.name] = {"class": entry.class_, "vendor": entry.vendor, "args": entry.args}
        path.write_text(yaml.safe_dump(data, sort_keys=True))

    @property
    def providers(self) -> list[DnsProvider]:
        return [*self.knots, self.pdns]

    def servers(self) -> dict[str, tuple[str, int]]:
        return {"knot-a": (KNOT_ADDRESSES[0], self.port), "knot-b": (KNOT_ADDRESSES[1], self.port),
                "pdns": (PDNS_ADDRESS, self.port)}

    def secrets(self) -> list[str]:
        tsig = [(self.workdir / "dns" / f"{n}.tsig").read_text().strip() for n in ("knot-a", "knot-b")]
        return [*tsig, PDNS_KEY]

    def cli(self, *args: str):
        result = CliRunner().invoke(app, [*args, "--workdir", str(self.workdir), "--project", str(self.project)])
        for secret in self.secrets():
            assert secret not in result.output and secret not in (result.stderr or "")
        return result


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("dns"))
    try:
        env.start()
        yield env
    finally:
        local.stop_local_dns(env.workdir)
        env.table.stop("dns-pdns")


def answer(address: str, port: int, name: str, rtype: str) -> tuple[int, set[str]]:
    fqdn = f"{name}.{ZONE}" if name else ZONE
    reply = dns.query.udp(dns.message.make_query(fqdn, rtype), address, port=port, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR, f"{address}:{port} {fqdn} {rtype}: {dns.rcode.to_text(reply.rcode())}"
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rtype):
            return rrset.ttl, {r.to_text() for r in rrset}
    return 0, set()


def assert_serves(env: Env, provider: str, site_name: str, ttl: int = 30) -> None:
    address, port = env.servers()[provider]
    for name in NAMES:
        assert answer(address, port, name, "A") == (ttl, {ADDRESS[site_name]}), f"{provider} {name or '@'}"


def apply_json(env: Env, site_name: str):
    result = env.cli("apply", "--site", site_name, "--yes", "--json", "--timeout", "5")
    return result.exit_code, json.loads(result.stdout)


def test_local_dns_files_hold_no_secret_values_and_keys_are_private(env):
    text = (env.workdir / "dns" / "providers.yaml").read_text()
    assert all(secret not in text for secret in env.secrets())
    assert "env/FAILOVER_DNS_KNOT_A_TSIG" in text
    for name in ("knot-a", "knot-b"):
        assert stat.S_IMODE((env.workdir / "dns" / f"{name}.tsig").stat().st_mode) == 0o600
    assert env.knots[0].args["key_secret"] != env.knots[1].args["key_secret"]  # independent keys


def test_apply_site_b_moves_every_provider_and_reports_propagation(env):
    code, first = apply_json(env, "a")
    assert code == 0, first
    code, body = apply_json(env, "b")
    assert code == 0, body
    assert body["site"] == "b"
    assert [(p["name"], p["status"]) for p in body["providers"]] == [
        ("knot-a", "updated"), ("knot-b", "updated"), ("pdns", "updated")]
    for provider in body["providers"]:
        assert set(provider) >= {"name", "status", "error", "propagation_seconds"}
        assert 0 <= provider["propagation_seconds"] < 5
        assert_serves(env, provider["name"], "b")
    code, again = apply_json(env, "b")
    assert code == 0 and {p["status"] for p in again["providers"]} == {"unchanged"}


def test_verify_reports_each_provider_and_fails_when_answers_differ(env):
    assert apply_json(env, "b")[0] == 0
    good = env.cli("verify", "--site", "b", "--json")
    assert good.exit_code == 0
    assert {p["status"] for p in json.loads(good.stdout)["providers"]} == {"verified"}
    bad = env.cli("verify", "--site", "a", "--json", "--timeout", "0.2")
    assert bad.exit_code == 1
    errors = [p["error"] for p in json.loads(bad.stdout)["providers"]]
    assert all(f"serves {ZONE} A {ADDRESS['b']}" in e and f"want {ADDRESS['a']}" in e for e in errors), errors


def test_plan_shows_changes_without_making_them(env):
    apply_json(env, "b")
    result = env.cli("plan", "--site", "a", "--json")
    body = json.loads(result.stdout)
    assert result.exit_code == 0
    assert {p["status"] for p in body["providers"]} == {"pending"}
    assert f"Update api.{ZONE} A {ADDRESS['b']} -> {ADDRESS['a']} ttl 30" in body["providers"][0]["changes"]
    for provider in env.servers():
        assert_serves(env, provider, "b")


def test_a_stopped_provider_fails_by_name_and_a_later_apply_completes_it(env):
    apply_json(env, "b")
    assert env.table.stop("dns-knot-b")
    code, body = apply_json(env, "a")
    status = {p["name"]: p for p in body["providers"]}
    assert code == 1
    assert status["knot-b"]["status"] == "failed" and "not reachable" in status["knot-b"]["error"]
    assert status["knot-a"]["status"] == status["pdns"]["status"] == "updated"
    assert_serves(env, "knot-a", "a")
    assert_serves(env, "pdns", "a")

    env.start_knots()  # knot-b is back
    assert_serves(env, "knot-b", "b")  # it kept its data and still points at the old site
    code, body = apply_json(env, "a")
    assert code == 0
    assert [p["status"] for p in body["providers"]] == ["unchanged", "updated", "unchanged"]
    assert_serves(env, "knot-b", "a")


def test_records_the_toolkit_does_not_own_survive_any_number_of_applies(env):
    for site_name in ("a", "b", "a", "b"):
        assert apply_json(env, site_name)[0] == 0
    assert env.cli("ttl", "--seconds", "7", "--yes").exit_code == 0
    assert env.cli("ttl", "--restore", "--yes").exit_code == 0
    for provider, (address, port) in env.servers().items():
        for record in FOREIGN:
            assert answer(address, port, record.name, record.type) == (record.ttl, set(record.values)), provider


def test_ttl_lowers_and_restores_the_served_ttl_keeping_the_values(env):
    assert apply_json(env, "b")[0] == 0
    shown = env.cli("ttl", "--seconds", "5", "--json")  # without --yes: the plan, nothing changed
    assert shown.exit_code == 0 and json.loads(shown.stdout)["applied"] is False, shown.output
    assert {p["status"] for p in json.loads(shown.stdout)["providers"]} == {"pending"}
    for provider in env.servers():
        assert_serves(env, provider, "b", ttl=30)
    result = env.cli("ttl", "--seconds", "5", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert {p["status"] for p in json.loads(result.stdout)["providers"]} == {"updated"}
    for provider in env.servers():
        assert_serves(env, provider, "b", ttl=5)
    assert env.cli("ttl", "--restore", "--yes").exit_code == 0
    for provider in env.servers():
        assert_serves(env, provider, "b", ttl=30)


def test_unsigned_or_wrongly_signed_updates_are_refused_by_the_server(env):
    apply_json(env, "b")
    address, port = env.servers()["knot-a"]
    unsigned = dns.update.Update(ZONE)
    unsigned.replace("www", 30, "A", "127.0.6.6")
    assert dns.query.tcp(unsigned, address, port=port, timeout=2).rcode() in (dns.rcode.REFUSED, dns.rcode.NOTAUTH)
    wrong = dns.update.Update(ZONE, keyring=dns.tsigkeyring.from_text({local.KEY_NAME: env.secrets()[1]}),
                              keyalgorithm=servers.TSIG_ALGORITHM)  # knot-b's key at knot-a
    wrong.replace("www", 30, "A", "127.0.6.6")
    with pytest.raises(dns.tsig.PeerError):
        dns.query.tcp(wrong, address, port=port, timeout=2)
    assert_serves(env, "knot-a", "b")


def test_the_toolkit_names_the_refusing_provider_and_why_without_secrets(env, caplog):
    os.environ["TEST_DNS_WRONG_TSIG"] = "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg="
    os.environ["TEST_DNS_WRONG_API"] = "wrong-api-key-" + os.urandom(4).hex()
    knot_a, knot_b = env.knots
    bad = [DnsProvider("knot-a", knot_a.class_, {**knot_a.args, "key_secret": "env/TEST_DNS_WRONG_TSIG"}, "x"),
           DnsProvider("knot-b", knot_b.class_, {k: v for k, v in knot_b.args.items()
                                                 if not k.startswith("key_")}, "x"),
           DnsProvider("pdns", env.pdns.class_, {**env.pdns.args, "api_key": "env/TEST_DNS_WRONG_API"}, "x")]
    results = dns_site.apply_site(env.inventory, "a", bad, ZONE, NAMES, 30, verify_timeout=1)
    by_name = {r.name: r for r in results}
    assert {r.status for r in results} == {"failed"}
    assert "signature" in by_name["knot-a"].error and "refused" in by_name["knot-a"].error
    assert "NOTAUTH" in by_name["knot-b"].error
    assert "refused the credentials" in by_name["pdns"].error
    shown = json.dumps([r.to_dict() for r in results]) + caplog.text
    for secret in [*env.secrets(), os.environ["TEST_DNS_WRONG_TSIG"], os.environ["TEST_DNS_WRONG_API"]]:
        assert secret not in shown
    for provider in env.servers():
        assert_serves(env, provider, "b")
