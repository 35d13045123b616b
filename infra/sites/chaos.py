"""Cutting a local site off the way a provider would: processes gone, storage unreachable."""
from __future__ import annotations

import os

from infra.sites.local import LocalCloud


def drop(cloud: LocalCloud, name: str) -> dict:
    """Kills the site's processes (SIGKILL, by PID) and makes its directory unreadable to the service user.

    With emulated object stores the site's emulator is killed too: its store goes with it.
    """
    site = cloud.site(name)
    processes = (f"pg-{name}", f"app-{name}", f"receivewal-{name}", f"emulator-{name}", f"emulator-{name}-tls")
    killed = [p for p in processes if cloud.processes.kill(p)]
    os.chmod(site.root, 0o000)
    cloud.mark_dropped(name)
    return {"site": name, "killed": killed, "storage": "unreachable"}


def restore(cloud: LocalCloud, name: str) -> dict:
    """The provider gives a dropped site back: its storage is reachable again, nothing is started.

    Its data is as stale as at the cut-off and is never trusted: `failover back` re-seeds it.
    """
    site = cloud.site(name)
    was_dropped = name in cloud.dropped()
    os.chmod(site.root, 0o755)
    cloud.mark_dropped(name, False)
    return {"site": name, "was_dropped": was_dropped, "storage": "reachable", "processes": "none started"}
