"""rclone configuration for media buckets, generated from the Inventory (pure)."""
from __future__ import annotations

from infra.data.storage import storage_for
from infra.sites.contract import Inventory


def render(inventory: Inventory) -> str:
    """An rclone.conf with one remote per site, named after the site."""
    sections = []
    for outputs in inventory.sites:
        remote = outputs.media_remote
        # A site's bucket lives in the same store as its repository, so the storage type is shared.
        options = storage_for(outputs.repository.type).rclone_section(remote, outputs.site, outputs.writer_credentials)
        sections.append(f"[{outputs.site}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return "\n".join(sections)


def bucket(inventory: Inventory, site: str) -> str:
    """The rclone path of a site's media bucket, e.g. `site-a:/srv/store/media`."""
    return f"{site}:{inventory.site(site).media_remote.path}"
