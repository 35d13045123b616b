"""Shared fixtures: work directories the `postgres` service user can reach, and the CLI."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import socket
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAILOVER = [sys.executable, "-m", "infra.cli"]
SSH_ADDRESS = "127.0.0.1"

# The backup and media encryption keys the operator holds (infra/data/encryption.py): one pair
# per test session, unless the environment brings its own. Tests of `local up` generating them
# unset these themselves.
ENCRYPTION_KEYS = ("FAILOVER_BACKUP_KEY", "FAILOVER_MEDIA_KEY")
for _name in ENCRYPTION_KEYS:
    os.environ.setdefault(_name, __import__("secrets").token_urlsafe(36))


@pytest.fixture(autouse=True, scope="module")
def _environment_per_module():
    """Each test module gets the environment back as it found it. Emulator fixtures put their
    credentials and their CA (RCLONE_CA_CERT, in a directory they delete) into os.environ; left
    there, they reached a later module's `failover` subprocesses, whose Fleet keeps an inherited
    variable over the work directory's secrets.env, so `status` read an emulated VM cloud's stores
    with another cloud's CA and keys (seen in two full runs, never in the module alone)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def loopback_prefix(default: str) -> str:
    """A VM test module's loopback prefix: its own default, or FAILOVER_TEST_PREFIX when several
    clouds share the machine and each run is given a prefix of its own."""
    return os.environ.get("FAILOVER_TEST_PREFIX") or default


def service_dir(prefix: str) -> Path:
    """A temp dir the postgres user can traverse (pytest's tmp_path is mode 700)."""
    path = Path(tempfile.mkdtemp(prefix=f"failover-{prefix}-"))
    os.chmod(path, 0o755)
    return path


def remove_unmounted(path: Path) -> None:
    """Removes a work directory unless something is still mounted below it (a VM's /dev is the
    host's: rmtree would follow it); then fails the test instead."""
    from infra.sites.vm import _mounts_under

    left = _mounts_under(Path(path))
    if left:
        raise AssertionError(f"mounts left behind under {path} (not removed): {left}")
    shutil.rmtree(path, ignore_errors=True)


def processes_rooted_under(path: Path) -> list[int]:
    """PIDs whose root directory (/proc/PID/root) lies below `path`: a VM's processes."""
    rooted = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root").startswith(str(path)):
                    rooted.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile
    return rooted


def free_port_on(addresses: list[str]) -> int:
    """A port free for TCP and UDP on every address (probed by binding, nothing is sent): DNS
    servers listen on both, on several addresses at one port."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for address in addresses:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no port free on all of {', '.join(addresses)}")


def process_running(pid: int) -> bool:
    """The PID is a live process. A zombie counts as ended: it runs nothing and holds no socket,
    and its parent (init, once the starter exited) reaps it when it gets round to it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind((SSH_ADDRESS, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd():
    """sshd on 127.0.0.1 with its own host key, config and port; yields (its dir, port).

    The client key is root/client and root/known_hosts holds the host key, as for a cloud VM.
    """
    root = service_dir("ssh")
    port = free_port()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / "host_ed25519"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / "client"], check=True)
    shutil.copy(root / "client.pub", root / "authorized_keys")
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress {SSH_ADDRESS}\nHostKey {root}/host_ed25519\nPidFile {root}/sshd.pid\n"
        f"AuthorizedKeysFile {root}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "X11Forwarding no\nPrintMotd no\n")
    host_key = (root / "host_ed25519.pub").read_text().split()
    (root / "known_hosts").write_text(f"[{SSH_ADDRESS}]:{port} {host_key[0]} {host_key[1]}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", root / "sshd_config"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex((SSH_ADDRESS, port)) != 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode() if proc.poll() else "timeout"
        time.sleep(0.05)
    yield root, port
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(root, ignore_errors=True)
