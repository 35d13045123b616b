"""Pure record planning: which records the toolkit owns and wants, no servers involved."""
from __future__ import annotations

from pathlib import Path

import pytest
from octodns.record import Record
from octodns.zone import Zone

from infra.dns import providers, records, sync
from infra.sites.contract import MediaRemote, Repository, SiteOutputs
from infra.spec import DnsProvider

ROOT = Path(__file__).resolve().parents[2]

NAMES = ("", "www", "api", "media")


def site(name: str, *addresses: str) -> SiteOutputs:
    return SiteOutputs(site=name, cloud="local", region="lo", role="warm", public_addresses=addresses,
                       ssh_hosts=(), ssh_user="app", db_host="127.0.0.1", db_port=5432,
                       repository=Repository("posix", {"path": "/tmp/r"}),
                       media_remote=MediaRemote("local", {}, "/tmp/m"))


def test_desired_records_point_every_name_at_the_site():
    wanted = records.desired_records(site("b", "127.0.2.10", "127.0.2.11"), NAMES, 30)
    assert [(r.name, r.type, r.ttl, r.values) for r in wanted] == [
        (n, "A", 30, ("127.0.2.10", "127.0.2.11")) for n in NAMES]


def test_ipv6_addresses_become_aaaa_records():
    wanted = records.desired_records(site("b", "2001:db8::1", "127.0.2.10"), ("www",), 60)
    assert {(r.type, r.values) for r in wanted} == {("A", ("127.0.2.10",)), ("AAAA", ("2001:db8::1",))}


@pytest.mark.parametrize("addresses, message", [((), "public_addresses is empty"),
                                                (("not-an-ip",), "'not-an-ip' is not an IP address")])
def test_bad_site_addresses_are_named(addresses, message):
    with pytest.raises(ValueError, match=message) as error:
        records.desired_records(site("b", *addresses), NAMES, 30)
    assert "'b'" in str(error.value)


def test_ttl_out_of_range_is_refused():
    with pytest.raises(ValueError, match="between 1 and 86400"):
        records.desired_records(site("b", "127.0.2.10"), NAMES, 0)


def test_only_a_and_aaaa_at_app_names_are_owned():
    assert records.is_owned("", "A", NAMES) and records.is_owned("www", "AAAA", NAMES)
    assert not records.is_owned("", "MX", NAMES)
    assert not records.is_owned("", "TXT", NAMES)
    assert not records.is_owned("mail", "A", NAMES)


def test_owned_records_processor_hides_everything_else():
    zone = Zone("social.test.", [])
    for name, data in [("", {"type": "A", "ttl": 30, "value": "127.0.1.10"}),
                       ("", {"type": "MX", "ttl": 300, "value": {"preference": 10, "exchange": "mx.example.net."}}),
                       ("", {"type": "TXT", "ttl": 300, "value": "v=spf1 -all"}),
                       ("mail", {"type": "A", "ttl": 300, "value": "127.0.9.9"})]:
        zone.add_record(Record.new(zone, name, data))
    kept = sync.OwnedRecords(NAMES).process_target_zone(zone, target=None)
    assert [(r.name, r._type) for r in kept.records] == [("", "A")]


def test_plan_against_a_zone_with_foreign_records_touches_only_owned():
    existing = Zone("social.test.", [])
    existing.add_record(Record.new(existing, "", {"type": "A", "ttl": 30, "value": "127.0.1.10"}))
    existing.add_record(Record.new(existing, "", {"type": "TXT", "ttl": 300, "value": "keep me"}))
    existing = sync.OwnedRecords(NAMES).process_target_zone(existing, target=None)
    desired = sync.desired_zone("social.test.", [records.RecordSet("", "A", 30, ("127.0.2.10",))])
    changes = existing.changes(desired, target=_Supports())
    assert [sync.describe(c) for c in changes] == ["Update social.test. A 127.0.1.10 -> 127.0.2.10 ttl 30"]


class _Supports:
    """The minimum of a target that Zone.changes() asks about."""

    SUPPORTS_GEO = SUPPORTS_DYNAMIC = False
    id = "test"

    def supports(self, record):
        return True


def test_toolkit_args_are_not_passed_to_octodns_and_name_the_authority(monkeypatch):
    monkeypatch.setenv("TEST_PDNS_KEY", "s3cret-api-key")
    entry = DnsProvider("pdns", "octodns_powerdns.PowerDnsProvider",
                        {"host": "127.0.3.3", "port": 8081, "api_key": "env/TEST_PDNS_KEY",
                         "dns_address": "127.0.3.3", "dns_port": 5300}, "local")
    assert providers.resolved_args(entry) == {"host": "127.0.3.3", "port": 8081, "api_key": "s3cret-api-key"}
    assert providers.authority(entry) == providers.Authority(("127.0.3.3",), 5300)
    knot = DnsProvider("knot-a", "octodns_bind.Rfc2136Provider", {"host": "127.0.3.1", "port": 5301}, "local")
    assert providers.authority(knot) == providers.Authority(("127.0.3.1",), 5301)
    cloud = DnsProvider("cf", "octodns_cloudflare.CloudflareProvider", {"token": "env/X"}, "cloudflare")
    assert providers.authority(cloud) is None


def test_missing_provider_package_and_secret_fail_as_results_naming_the_provider(monkeypatch):
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    entries = [DnsProvider("cf", "octodns_cloudflare_missing.CloudflareProvider", {"token": "env/X"}, "cloudflare"),
               DnsProvider("pdns", "octodns_powerdns.PowerDnsProvider",
                           {"host": "127.0.3.3", "api_key": "env/NOT_SET_TOKEN"}, "local")]
    results = sync.sync(entries, "social.test.", NAMES, sync.fixed([]), apply=False)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "pip install octodns-cloudflare-missing" in results[0].error
    assert "env/NOT_SET_TOKEN is not set" in results[1].error and "dns provider pdns" in results[1].error


def test_the_shipped_configs_providers_are_installed_and_build(monkeypatch):
    """Every provider class Pulumi.yaml names loads (its package is a dependency) and takes its
    shipped args; building one contacts nothing."""
    from octodns.provider.base import BaseProvider

    from infra.spec import load_spec

    entries = load_spec(ROOT / "Pulumi.yaml").dns.providers
    assert {e.class_ for e in entries} >= {"octodns_cloudflare.CloudflareProvider", "octodns_ns1.Ns1Provider"}
    for entry in entries:
        assert issubclass(providers.provider_class(entry), BaseProvider), entry.class_
        for value in entry.args.values():
            if isinstance(value, str) and value.startswith("env/"):
                monkeypatch.setenv(value[4:], "placeholder-credential")
        assert providers.build(entry).id == entry.name
