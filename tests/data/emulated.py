"""What the emulator test suites share: their tools, a free block of ports, and the secrets not to leak."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from infra.sites import emulators
from infra.sites.processes import port_answers

BLOCK = 30  # ports one set of emulators takes from its base port
TOOLS = ("rclone", "stunnel4")  # what talks to the emulators (rclone) and gives them TLS (stunnel)


def require_tools() -> None:
    """Fails the test, naming the tool and the fix, when one of TOOLS is missing."""
    for tool in TOOLS:
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: run scripts/setup")


def free_block(hosts: list[str], first: int, last: int) -> int:
    """A base port whose whole block nothing answers on, at every host (tried in random order)."""
    candidates = list(range(first, last, BLOCK))
    random.shuffle(candidates)
    for base in candidates:
        if not any(port_answers(h, p, 0.2) for h in hosts for p in range(base, base + BLOCK)):
            return base
    raise RuntimeError(f"no free block of {BLOCK} ports in {first}-{last} on {', '.join(hosts)}")


def secret_values(workdir: Path) -> list[str]:
    """The emulators' credentials (not the CA path): none may appear in an error."""
    return list(emulators.secret_env(workdir).values())
