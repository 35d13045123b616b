"""A site's SSH host key: made by the toolkit, passed to its VMs, known to the engine first.

`failover inventory hostkeys` makes one ed25519 key per site and stores the private half as
the stack's secret config `failover:ssh_host_key`; the program hands it to cloud-init (the
only host key the VMs keep) and exports the public half, from which `failover inventory pull`
writes the known_hosts the engine trusts. So the engine never trusts a key on first use, and
the key, unlike an address, never changes with the role, the peers or a rebuilt VM.
"""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CONFIG_KEY = "ssh_host_key"  # failover:ssh_host_key, a secret: the OpenSSH private key
OUTPUT = "ssh_host_public_key"  # the stack output: "ssh-ed25519 AAAA... failover-<site>-host"


def generate(site: str) -> tuple[str, str]:
    """A new (private key in OpenSSH format, public key line) for `site`'s VMs."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    return private, _public_line(key, site)


def public_key(private: str, site: str) -> str:
    """The public key line of an OpenSSH ed25519 private key; ValueError naming the config key
    when it is not one (the message never holds the value)."""
    try:
        key = serialization.load_ssh_private_key(private.encode(), password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config failover:{CONFIG_KEY} of site {site}: not an unencrypted OpenSSH private key "
                         f"({type(error).__name__}); make one with `failover inventory hostkeys --stacks {site} --doit`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"config failover:{CONFIG_KEY} of site {site}: a {type(key).__name__}, not an ed25519 key; "
                         f"make one with `failover inventory hostkeys --stacks {site} --doit`")
    return _public_line(key, site)


def _public_line(key: Ed25519PrivateKey, site: str) -> str:
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{blob.decode()} failover-{site}-host"
