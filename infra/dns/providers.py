"""octoDNS provider objects built from DnsProvider entries, secrets resolved only at run time.

A DnsProvider's `args` are the octoDNS class's own arguments, plus toolkit-only keys that are
removed before the class is built (see docs/dns.md):

- `dns_address`: the provider's authoritative server(s) that verification queries directly
  (an address or a list of addresses). Rfc2136Provider defaults to its `host`.
- `dns_port`: their port (default 53; Rfc2136Provider defaults to its `port`).
- `ns_names`: which of the zone's NS names are this provider's (names or `*.` patterns), for
  a provider without an address; well-known classes have defaults (DEFAULT_NS_NAMES).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from fnmatch import fnmatchcase

from infra import secrets
from infra.spec import DnsProvider

TOOLKIT_ARGS = ("dns_address", "dns_port", "ns_names")
RFC2136_CLASSES = ("octodns_bind.Rfc2136Provider", "octodns_bind.BindProvider")
# The names each service gives the NS it assigns to a zone; args.ns_names replaces them.
DEFAULT_NS_NAMES = {
    "octodns_cloudflare.CloudflareProvider": ("*.ns.cloudflare.com",),
    "octodns_ns1.Ns1Provider": ("*.nsone.net",),
    "octodns_route53.Route53Provider": ("ns-*.awsdns-*",),
    "octodns_azure.AzureProvider": ("*.azure-dns.com", "*.azure-dns.net", "*.azure-dns.org", "*.azure-dns.info"),
    "octodns_googlecloud.GoogleCloudProvider": ("ns-cloud-*.googledomains.com",),
}


class ProviderConfigError(ValueError):
    """A provider entry that cannot be turned into an octoDNS provider."""


@dataclass(frozen=True)
class Authority:
    """Where a provider's authoritative answers can be asked for directly."""

    addresses: tuple[str, ...]
    port: int


def provider_class(entry: DnsProvider) -> type:
    module_name, _, class_name = entry.class_.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        package = module_name.replace("_", "-")
        raise ProviderConfigError(
            f"dns provider {entry.name}: cannot load class {entry.class_!r} ({error}); "
            f"install its package, for example `pip install {package}`") from None


def resolved_args(entry: DnsProvider) -> dict:
    """The octoDNS arguments with env/NAME references replaced by their values."""
    return {key: secrets.resolve(value, f"dns provider {entry.name} args.{key}")
            for key, value in entry.args.items() if key not in TOOLKIT_ARGS}


def build(entry: DnsProvider):
    """An octoDNS provider instance for one entry; the id is the entry's name."""
    cls = provider_class(entry)
    args = resolved_args(entry)
    # The toolkit never manages the root NS (it is not owned), so octoDNS's warning that the
    # desired zone has none is noise on every run.
    args.setdefault("root_ns_warnings", False)
    try:
        return cls(entry.name, **args)
    except TypeError as error:
        raise ProviderConfigError(
            f"dns provider {entry.name}: bad args for {entry.class_}: {secrets.redact(str(error))}; "
            f"see the class's documentation for its arguments") from None


def authority(entry: DnsProvider) -> Authority | None:
    """The authoritative server(s) to verify against, or None if the entry does not say."""
    args = entry.args
    is_rfc2136 = entry.class_ in RFC2136_CLASSES
    address = args.get("dns_address") or (args.get("host") if is_rfc2136 else None)
    if not address:
        return None
    addresses = tuple(address) if isinstance(address, (list, tuple)) else (str(address),)
    return Authority(addresses=addresses, port=authority_port(entry))


def authority_port(entry: DnsProvider) -> int:
    """The port of the provider's authoritative servers, however they are found."""
    args = entry.args
    if entry.class_ in RFC2136_CLASSES:
        return int(args.get("dns_port") or args.get("port", 53))
    return int(args.get("dns_port") or 53)


def ns_patterns(entry: DnsProvider) -> tuple[str, ...]:
    """The entry's args.ns_names, else its class's well-known NS names, else () (no hint)."""
    hint = entry.args.get("ns_names")
    if hint:
        return (hint,) if isinstance(hint, str) else tuple(str(h) for h in hint)
    return DEFAULT_NS_NAMES.get(entry.class_, ())


def _bare(name: str) -> str:
    return name.lower().rstrip(".")


def owned_ns(entry: DnsProvider, ns_names: list[str], alone: bool) -> list[str] | str:
    """The zone's NS names that are this provider's, or why none can be chosen.

    With no hint, the NS are all this provider's only if it is the zone's only provider.
    """
    patterns = ns_patterns(entry)
    if not patterns:
        if alone:
            return list(ns_names)
        return (f"dns provider {entry.name}: cannot tell which of the zone's NS ({', '.join(ns_names)}) are "
                f"this provider's; set args.ns_names (names or patterns such as *.ns.example.net) or args.dns_address")
    mine = [n for n in ns_names if any(fnmatchcase(_bare(n), _bare(p)) for p in patterns)]
    if mine:
        return mine
    return (f"dns provider {entry.name}: none of the zone's NS ({', '.join(ns_names)}) matches "
            f"{', '.join(patterns)}; delegate the zone to this provider at the registrar, "
            f"or correct args.ns_names or args.dns_address")
