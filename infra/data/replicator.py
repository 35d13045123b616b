"""The local cloud's media replicator: copies the active site's bucket to every other site, continuously.

Run as `python -m infra.data.replicator WORKDIR`. On a cloud VM the same copy runs from a
systemd timer; here it is a loop. A site that is dropped or unreachable is skipped and
logged by name; the others keep being protected.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from invoke import Context

from infra.data import protection
from infra.sites.local import LocalCloud

INTERVAL = 1.0


def once(cloud: LocalCloud) -> list:
    inventory = cloud.inventory()
    source = cloud.site(inventory.active)
    targets = [n for n in inventory.names if n != inventory.active and n not in cloud.dropped()]
    rclone_conf = f"{source.paths.pgbackrest_dir}/rclone.conf"
    return protection.sync_media(Context(), rclone_conf, inventory, inventory.active, targets)


def main(workdir: str) -> None:
    cloud = LocalCloud(Path(workdir))
    while True:
        try:
            for result in once(cloud):
                if not result.ok:
                    print(f"media copy to {result.site} ({result.location}) failed: {result.error}", flush=True)
        except Exception as error:  # keep protecting: a bad round is logged, the next one retries
            print(f"replicator round failed: {error}", flush=True)
        time.sleep(INTERVAL)


if __name__ == "__main__":
    main(sys.argv[1])
