"""Shared fixtures: work directories the `postgres` service user can reach, and the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAILOVER = [sys.executable, "-m", "infra.cli"]


def service_dir(prefix: str) -> Path:
    """A temp dir the postgres user can traverse (pytest's tmp_path is mode 700)."""
    path = Path(tempfile.mkdtemp(prefix=f"failover-{prefix}-"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def service_tmp():
    path = service_dir("t")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def failover(*args: str, workdir: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real `failover` CLI in a subprocess, as an operator or CI would."""
    env = {**os.environ, "FAILOVER_WORKDIR": str(workdir)}
    result = subprocess.run([*FAILOVER, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"failover {' '.join(args)} exited {result.returncode}:\n{result.stderr}\n{result.stdout}")
    return result


def failover_json(*args: str, workdir: Path, check: bool = True):
    return json.loads(failover(*args, "--json", workdir=workdir, check=check).stdout)


@contextmanager
def local_cloud(name: str, *up_args: str):
    """A local cloud for a test module, torn down by PID even when `local up` fails half-way."""
    from infra.sites.local import LocalCloud

    workdir = service_dir(name)
    try:
        failover("local", "up", *up_args, workdir=workdir)
        yield LocalCloud(workdir)
    finally:
        down = failover("local", "down", workdir=workdir, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    assert down.returncode == 0, down.stderr
