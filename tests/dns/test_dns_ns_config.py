"""Which NS are a provider's, and the spec keys that say so (pure: no servers, no queries)."""
from __future__ import annotations

import pytest

from infra.dns import providers
from infra.spec import DnsProvider, SpecError, spec_from_config

ZONE = "social.test."


def test_several_providers_without_a_hint_are_refused_by_name():
    entry = DnsProvider("x", "octodns_example.ExampleProvider", {}, "x")
    error = providers.owned_ns(entry, ["a.example.", "b.example."], alone=False)
    assert isinstance(error, str) and error.startswith("dns provider x: cannot tell which")
    assert providers.owned_ns(entry, ["a.example.", "b.example."], alone=True) == ["a.example.", "b.example."]
    cloudflare = DnsProvider("cf", "octodns_cloudflare.CloudflareProvider", {}, "cloudflare")
    assert providers.owned_ns(cloudflare, ["ada.ns.cloudflare.com.", "dns1.p01.nsone.net."], alone=False) == [
        "ada.ns.cloudflare.com."]


def test_ns_names_is_a_toolkit_argument():
    entry = DnsProvider("x", "octodns_example.ExampleProvider", {"token": "t", "ns_names": ["*.ns.x.test"]}, "x")
    assert providers.resolved_args(entry) == {"token": "t"}


def dns_values(**changes) -> dict:
    provider = {"class": "octodns_example.ExampleProvider", "vendor": "x", "args": {"token": "env/X"}}
    dns = {"zone": ZONE, "names": [""], "providers": {"x": provider}, **changes}
    return {"app": {"image": "app:1", "port": 8080}, "database": {"name": "social", "version": 15},
            "media": {"bucket": "media"}, "dns": dns}


def test_spec_reads_resolvers_into_every_provider():
    spec = spec_from_config(dns_values(resolvers=["127.0.90.1:5353", "::1", "[::1]:53"]), "a",
                            {"cloud": "local", "region": "lo", "role": "primary"})
    assert spec.dns.resolvers == ("127.0.90.1:5353", "::1", "[::1]:53")
    assert spec.dns.providers[0].resolvers == spec.dns.resolvers


@pytest.mark.parametrize("changes, key, message", [
    ({"resolvers": ["dns.example:53"]}, "config.dns.resolvers", "'dns.example:53' is not a resolver address"),
    ({"resolvers": ["127.0.0.1:99999"]}, "config.dns.resolvers", "is not a resolver address"),
    ({"resolvers": "127.0.0.1"}, "config.dns.resolvers", "must be list"),
    ({"providers": {"x": {"class": "a.B", "vendor": "x", "args": {"ns_names": ["bad name"]}}}},
     "config.dns.providers.x.args.ns_names", "'bad name' is not an NS name"),
    ({"providers": {"x": {"class": "a.B", "vendor": "x", "args": {"ns_names": {}}}}},
     "config.dns.providers.x.args.ns_names", "must be a list of NS names"),
])
def test_spec_refuses_bad_resolvers_and_ns_names_naming_the_key(changes, key, message):
    with pytest.raises(SpecError) as raised:
        spec_from_config(dns_values(**changes), "a", {"cloud": "local", "region": "lo", "role": "primary"})
    assert any(key in p and message in p for p in raised.value.problems), raised.value.problems
