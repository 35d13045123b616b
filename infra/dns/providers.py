"""octoDNS provider objects built from DnsProvider entries, secrets resolved only at run time.

A DnsProvider's `args` are the octoDNS class's own arguments, plus two toolkit-only keys that
are removed before the class is built (see docs/dns.md):

- `dns_address`: the provider's authoritative server(s) that verification queries directly
  (an address or a list of addresses). Rfc2136Provider defaults to its `host`.
- `dns_port`: their port (default 53; Rfc2136Provider defaults to its `port`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from infra import secrets
from infra.spec import DnsProvider

TOOLKIT_ARGS = ("dns_address", "dns_port")
RFC2136_CLASSES = ("octodns_bind.Rfc2136Provider", "octodns_bind.BindProvider")


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
    port = args.get("dns_port") or (args.get("port", 53) if is_rfc2136 else 53)
    addresses = tuple(address) if isinstance(address, (list, tuple)) else (str(address),)
    return Authority(addresses=addresses, port=int(port))
