"""rclone configuration for media buckets, generated from the Inventory (pure, but for `obscure`).

Each site has two remotes: `<site>`, its bucket as the store sees it, and `<site>-crypt`, an
rclone crypt remote over the bucket's SEALED folder (infra/data/encryption.py). Media only
ever travels through the crypt remotes, so every bucket holds ciphertext.
"""
from __future__ import annotations

from infra.data import encryption
from infra.data.storage import storage_for
from infra.sites.contract import Inventory


def render(inventory: Inventory) -> str:
    """An rclone.conf with each site's bucket remote and its crypt remote (a secret file)."""
    sections = []
    obscured = encryption.obscured_passwords()
    for outputs in inventory.sites:
        remote = outputs.media_remote
        # A site's bucket lives in the same store as its repository, so the storage type is shared.
        options = storage_for(outputs.repository.type).rclone_section(remote, outputs.site, outputs.writer_credentials)
        sections.append(_section(outputs.site, options))
        sections.append(_section(encryption.crypt_remote(outputs.site),
                                 encryption.crypt_section(outputs.site, remote.path, obscured)))
    return "\n".join(sections)


def _section(name: str, options: dict[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())


def bucket(inventory: Inventory, site: str) -> str:
    """The rclone path of a site's media, through its crypt remote: `site-a-crypt:`."""
    inventory.site(site)  # an unknown site raises here, naming it
    return f"{encryption.crypt_remote(site)}:"
