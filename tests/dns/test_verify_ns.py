"""Verification of providers without an address: their servers found through the zone's NS records.

Three Knot servers on loopback: 127.0.90.1 plays the resolver (it answers for the zones'
NS sets and for the NS names' addresses), 127.0.90.2 and .3 are the authoritative servers of
the providers "alpha" and "beta". Every query goes only to 127.0.90.x; servers are started
and stopped by PID through ProcessTable.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.dns import providers, servers, verify
from infra.dns.cli import app
from infra.dns.records import RecordSet
from infra.dns.site import CHOICE_ENV
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable, wait_for
from infra.spec import DnsProvider
from tests.conftest import free_port_on

ZONE = "social.test."
RESOLVER, ALPHA, BETA = "127.0.90.1", "127.0.90.2", "127.0.90.3"
NOBODY = "127.0.90.9"  # nothing listens here
OLD, NEW = "127.0.1.10", "127.0.2.10"  # site a's and site b's public address
# Both providers serve the app's names at NEW; only alpha has also moved "canary" (beta is stale).
SEEDS = {ALPHA: [RecordSet("", "A", 30, (NEW,)), RecordSet("www", "A", 30, (NEW,)),
                 RecordSet("canary", "A", 30, (NEW,))],
         BETA: [RecordSet("", "A", 30, (NEW,)), RecordSet("www", "A", 30, (NEW,)),
                RecordSet("canary", "A", 30, (OLD,))]}
MOVED = [RecordSet("", "A", 30, (NEW,)), RecordSet("www", "A", 30, (NEW,))]
CANARY = [RecordSet("canary", "A", 30, (NEW,))]

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd")]


def parent_zones(port_address: str) -> dict[str, str]:
    """What the resolver knows: the zones' NS sets, and the NS names' addresses (like glue)."""
    soa = "@ 300 IN SOA ns.test. hostmaster.test. 1 3600 600 604800 60"
    return {
        ZONE: f"$ORIGIN {ZONE}\n{soa}\n@ 300 IN NS a1.ns.alpha.test.\n@ 300 IN NS b1.ns.beta.test.\n",
        # A zone delegated to alpha twice over, once to a name that has no address.
        "broken.test.": f"$ORIGIN broken.test.\n{soa}\n@ 300 IN NS a1.ns.alpha.test.\n@ 300 IN NS x9.ns.alpha.test.\n",
        "test.": (f"$ORIGIN test.\n{soa}\n@ 300 IN NS ns.test.\nns 300 IN A {port_address}\n"
                  f"a1.ns.alpha 300 IN A {ALPHA}\nb1.ns.beta 300 IN A {BETA}\n"),
    }


def start_resolver(table: ProcessTable, directory: Path, port: int) -> None:
    """One knotd answering for several zones (start_knot serves one; its config takes more)."""
    zones = parent_zones(RESOLVER)
    for sub in ("run", "db", "zones"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    config = servers.knot_config(directory, RESOLVER, port, ZONE, "parent-key", servers.tsig_secret("parent-key"))
    config += "".join(f"  - domain: {zone}\n" for zone in zones if zone != ZONE)
    servers.write_private(directory / "knot.conf", config)
    for zone, text in zones.items():
        (directory / "zones" / f"{zone}zone").write_text(text)
    table.start("dns-resolver", ["knotd", "-c", str(directory / "knot.conf")], directory / "knotd.log")
    for zone in zones:
        wait_for(lambda z=zone: servers.soa_answers(RESOLVER, port, z), servers.START_TIMEOUT, f"resolver knotd {zone}")


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port_on([RESOLVER, ALPHA, BETA])
        self.table = ProcessTable(root)
        self.resolver = f"{RESOLVER}:{self.port}"

    def start(self) -> None:
        start_resolver(self.table, self.root / "resolver", self.port)
        for name, address in (("alpha", ALPHA), ("beta", BETA)):
            servers.start_knot(self.table, f"dns-{name}", self.root / name, address, self.port, ZONE,
                               f"{name}-key", servers.tsig_secret(f"{name}-key"), SEEDS[address])

    def stop(self) -> None:
        for name in ("dns-resolver", "dns-alpha", "dns-beta"):
            self.table.stop(name)

    def provider(self, name: str, ns_names=None, resolvers=None, **args) -> DnsProvider:
        """A provider entry without an address, as a cloud service's would be."""
        args = {"token": f"env/TEST_{name.upper()}_TOKEN", "dns_port": self.port, **args}
        if ns_names is not None:
            args["ns_names"] = ns_names
        return DnsProvider(name, "octodns_example.ExampleProvider", args, name,
                           resolvers=(self.resolver,) if resolvers is None else tuple(resolvers))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("verify-ns"))
    try:
        env.start()
        yield env
    finally:
        env.stop()


def by_name(checks: list[verify.Verification]) -> dict[str, verify.Verification]:
    return {c.name: c for c in checks}


def test_each_provider_is_found_through_the_zones_ns_and_verified(env):
    alpha, beta = env.provider("alpha", ["*.ns.alpha.test"]), env.provider("beta", ["*.ns.beta.test."])
    assert verify.find_authority(alpha, ZONE, False) == providers.Authority((ALPHA,), env.port)
    assert verify.find_authority(beta, ZONE, False) == providers.Authority((BETA,), env.port)
    checks = verify.verify([alpha, beta], ZONE, MOVED, timeout=2)
    assert [(c.name, c.ok, c.error) for c in checks] == [("alpha", True, ""), ("beta", True, "")]


def test_a_server_serving_stale_records_fails_and_the_other_still_passes(env):
    alpha, beta = env.provider("alpha", ["*.ns.alpha.test"]), env.provider("beta", ["*.ns.beta.test"])
    checks = by_name(verify.verify([alpha, beta], ZONE, CANARY, timeout=0.3))
    assert checks["alpha"].ok
    assert not checks["beta"].ok and checks["beta"].seconds is None
    assert f"{BETA}:{env.port} serves canary.{ZONE} A {OLD} ttl 30, want {NEW} ttl 30" in checks["beta"].error


def test_the_only_provider_without_a_hint_is_asked_at_every_ns(env):
    only = env.provider("only")
    assert verify.find_authority(only, ZONE, True) == providers.Authority((ALPHA, BETA), env.port)
    assert verify.verify([only], ZONE, MOVED, timeout=1)[0].ok
    assert not verify.verify([only], ZONE, CANARY, timeout=0.3)[0].ok  # beta, one of its NS, is stale


def test_a_configured_address_comes_first(env):
    # beta's NS serve the stale canary; an entry naming alpha's server is asked there instead.
    configured = env.provider("beta", ["*.ns.beta.test"], dns_address=ALPHA)
    assert verify.find_authority(configured, ZONE, False) == providers.Authority((ALPHA,), env.port)
    assert verify.verify([configured, env.provider("alpha", ["*.ns.alpha.test"])], ZONE, CANARY, timeout=1)[0].ok


def test_a_provider_the_zone_is_not_delegated_to_is_named(env):
    gamma = env.provider("gamma", ["*.ns.gamma.test"])
    check = verify.verify([gamma, env.provider("alpha", ["*.ns.alpha.test"])], ZONE, MOVED, timeout=1)[0]
    assert not check.ok and check.error.startswith(verify.NO_AUTHORITY)
    assert "dns provider gamma: none of the zone's NS (a1.ns.alpha.test., b1.ns.beta.test.) matches *.ns.gamma.test" \
        in check.error
    assert "registrar" in check.error and "args.ns_names" in check.error


def test_a_zone_without_ns_and_an_ns_name_without_address_are_named(env):
    alpha = env.provider("alpha", ["*.ns.alpha.test"])
    missing = verify.verify_one(alpha, "nowhere.test.", MOVED, timeout=1)
    assert f"dns provider alpha: {env.resolver} know no NS records for nowhere.test." in missing.error
    broken = verify.verify_one(alpha, "broken.test.", MOVED, timeout=1)
    assert not broken.ok
    assert "dns provider alpha: NS x9.ns.alpha.test. of broken.test. does not resolve" in broken.error


def test_an_unreachable_resolver_is_named(env, monkeypatch):
    monkeypatch.setattr(verify, "RESOLVE_LIFETIME", 0.5)
    alpha = env.provider("alpha", ["*.ns.alpha.test"], resolvers=[f"{NOBODY}:{env.port}"])
    check = verify.verify_one(alpha, ZONE, MOVED, timeout=1)
    assert not check.ok and check.error.startswith(verify.NO_AUTHORITY)
    assert f"dns provider alpha: could not ask {NOBODY}:{env.port} for the NS of {ZONE}" in check.error
    assert "config.dns.resolvers" in check.error


def site_outputs(name: str, address: str) -> SiteOutputs:
    return SiteOutputs(site=name, cloud="local", region="lo", role="warm", public_addresses=(address,),
                       ssh_hosts=(), ssh_user="app", db_host=address, db_port=5432,
                       repository=Repository("posix", {"path": f"/tmp/{name}"}),
                       media_remote=MediaRemote("local", {}, f"/tmp/{name}-media"))


def write_project(root: Path, env: Env, resolvers: list[str]) -> Path:
    providers_config = {name: {"class": "octodns_example.ExampleProvider", "vendor": name,
                               "args": {"token": f"env/TEST_{name.upper()}_TOKEN", "dns_port": env.port,
                                        "ns_names": [f"*.ns.{name}.test"]}}
                        for name in ("alpha", "beta")}
    project = {"name": "failover", "runtime": "python", "stackConfigDir": "stacks", "config": {
        "app": {"value": {"image": "app:1", "port": 18080}},
        "database": {"value": {"name": "social", "version": 15}},
        "media": {"value": {"bucket": "media"}},
        "dns": {"value": {"zone": ZONE, "names": ["", "www"], "ttl": 30, "resolvers": resolvers,
                          "providers": providers_config}}}}
    (root / "stacks").mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text(yaml.safe_dump(project))
    for name, role in (("a", "primary"), ("b", "warm")):
        stack = {"config": {"failover:site": {"cloud": "local", "region": "lo", "role": role}}}
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(stack))
    return root / "Pulumi.yaml"


def test_dns_verify_uses_the_specs_resolvers_or_the_resolver_option(env, tmp_path, monkeypatch):
    monkeypatch.delenv(CHOICE_ENV, raising=False)
    monkeypatch.setattr(verify, "RESOLVE_LIFETIME", 0.5)
    workdir = tmp_path / "work"
    Inventory(sites=[site_outputs("a", OLD), site_outputs("b", NEW)], active="a").save(workdir / "inventory.json")

    def run(resolvers: list[str], *options: str):
        project = write_project(tmp_path, env, resolvers)
        result = CliRunner().invoke(app, ["verify", "--site", "b", "--timeout", "1", "--json", *options,
                                          "--workdir", str(workdir), "--project", str(project)])
        return result.exit_code, json.loads(result.stdout)

    code, body = run([env.resolver])
    assert code == 0, body
    assert [(p["name"], p["status"]) for p in body["providers"]] == [("alpha", "verified"), ("beta", "verified")]
    code, body = run([f"{NOBODY}:{env.port}"])
    assert code == 1 and all(f"could not ask {NOBODY}" in p["error"] for p in body["providers"]), body
    code, body = run([f"{NOBODY}:{env.port}"], "--resolver", env.resolver)
    assert code == 0, body
