"""Media host steps with rclone: copy a bucket to another site's bucket, and check them."""
from __future__ import annotations

import json
import subprocess

from playbooks.host import run

# Each store keeps its own copies of the toolkit's objects (inventory, journal, manifest), put
# there by the engine: a media copy must neither carry one site's over another's nor count them.
TOOLKIT_OBJECTS = "--exclude=/.failover/**"

def _rclone(config: str, *args: str) -> list[str]:
    # This machine exports AWS_CA_BUNDLE, which breaks rclone 1.60's S3 backend: clear it.
    return ["env", "-u", "AWS_CA_BUNDLE", "rclone", f"--config={config}", "--contimeout=5s", "--timeout=30s",
            "--low-level-retries=2", "--retries=1", *args]


def copy(c, config: str, source: str, dest: str):
    """Copies new and changed objects (never deletes at the destination: history is kept)."""
    return run(c, _rclone(config, "copy", "--transfers=8", TOOLKIT_OBJECTS, source, dest), warn=True, timeout=3600)


def check(c, config: str, source: str, dest: str) -> dict:
    """rclone check --one-way: objects of source missing or different at dest (two crypt remotes
    share no hash: they are compared by name and size)."""
    result = run(c, _rclone(config, "check", TOOLKIT_OBJECTS, "--one-way", "--missing-on-dst=-", "--differ=-", source, dest),
                 warn=True, timeout=600)
    missing = [line for line in result.stdout.splitlines() if line.strip()]
    error = "" if result.exited in (0, 1) else (result.stderr.strip().splitlines() or ["rclone failed"])[-1]
    return {"missing": missing, "ok": result.exited == 0, "error": error}


def count(c, config: str, remote: str) -> int | None:
    result = run(c, _rclone(config, "size", TOOLKIT_OBJECTS, "--json", remote), warn=True, timeout=300)
    return json.loads(result.stdout)["count"] if result.ok else None


def list_keys(c, config: str, remote: str) -> set[str] | None:
    """Every object key in a bucket, or None if it cannot be listed."""
    result = run(c, _rclone(config, "lsf", TOOLKIT_OBJECTS, "-R", "--files-only", remote), warn=True, timeout=600)
    return set(result.stdout.split()) if result.ok else None



def cat(c, config: str, remote_path: str) -> str | None:
    result = run(c, _rclone(config, "cat", remote_path), warn=True, timeout=300)
    return result.stdout if result.ok else None


def put(config: str, remote_path: str, data: bytes, seconds: float = 10) -> str:
    """Writes one object (rclone rcat, the data on stdin) from this process, not over a context:
    the app mirrors each media object before it acknowledges a post. "" or the reason it failed."""
    argv = _rclone(config, "--contimeout=2s", "--timeout=5s", "--low-level-retries=1", "rcat", remote_path)
    try:
        result = subprocess.run(argv, input=data, capture_output=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return f"no answer within {seconds:.0f} s"
    return "" if result.returncode == 0 else (result.stderr.decode(errors="replace").strip().splitlines()
                                               or [f"rclone exit {result.returncode}"])[-1][-200:]
