"""The local cloud's machines: Debian 12 "VMs" on loopback, reached only over SSH.

A VM is a chroot over an overlayfs root: the shared image (built once by mmdebstrap from
Debian's packages, cached, never written) below, and an upper layer of its own. It runs its own
sshd on the site's loopback address with host keys generated ahead (so the toolkit's
known_hosts is right before first contact), has a non-root sudo user, Debian's layout
(/etc/postgresql/15/main, pg_ctlcluster, /var/lib/postgresql) and boots with the same
bootstrap file that cloud VMs run from user-data (infra/clouds/bootstrap.sh).

Object stores stay outside the VM, as a cloud's do: each site's store is a host directory that
reaches every VM as a bind mount at the same path (think NFS), so a posix repository's path in
the Inventory means the same store to the VMs and to the operator. Dropping a store unmounts it
everywhere; the empty mount point below is root-owned mode 000, so nothing writes into it.

A VM's processes are the ones whose root is its root directory (`/proc/PID/root`): that is how
`drop` and `stop` find them, by PID, never by name. Every mount is listed from
/proc/self/mountinfo on the way down, so none outlives the VM.
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.clouds.base import BOOTSTRAP
from infra.errors import FailoverError
from infra.sites.layout import SERVICE_USER
from infra.spec import Database

SUITE = "bookworm"
# What every site VM carries; cloud VMs get the same from cloud-init's package list.
PACKAGES = ("postgresql-15", "postgresql-contrib", "pgbackrest", "rclone", "openssh-server", "sudo",
            "python3", "python3-psycopg", "python3-invoke", "curl", "supervisor", "ca-certificates", "openssl", "procps")
IMAGE_CACHE_ENV = "FAILOVER_IMAGE_CACHE"
DEFAULT_IMAGE_CACHE = Path("/var/cache/failover/images")
USER = "failover"
TRUSTED_CA = "failover-stores.crt"  # the emulated stores' CA in a VM's system trust
# A VM's own service UID (`Vm.create(own_uid=True)`) is this plus the low 16 bits of its address:
# distinct for the VMs of one cloud (one /24) and of clouds on other 127.0.x prefixes, and above
# every UID the host or the image hands out (Debian's UID_MAX is 60000, nobody is 65534).
SERVICE_UID_BASE = 0x10000


class VmError(FailoverError):
    """A VM could not be built, booted or stopped; the message names the site and what to do."""


# ---------------------------------------------------------------- the shared image

def image_key(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> str:
    """The cache key of an image: a change of suite or package list builds a new one."""
    return hashlib.sha256(" ".join((suite, *sorted(packages))).encode()).hexdigest()[:16]


def image_cache() -> Path:
    return Path(os.environ.get(IMAGE_CACHE_ENV) or DEFAULT_IMAGE_CACHE)


def ensure_image(progress=lambda m: None, packages: tuple[str, ...] = PACKAGES) -> Path:
    """The image directory, built with mmdebstrap unless the cache has it (about 25 s, 800 MB).

    Built into a temporary directory and renamed when complete, under a lock: a failed or
    interrupted build never leaves a half image that later VMs would boot from.
    """
    cache = image_cache()
    image = cache / image_key(packages)
    if (image / "etc" / "debian_version").exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image / "etc" / "debian_version").exists():
            return image
        _build(image, packages, progress)
    return image


def _build(image: Path, packages: tuple[str, ...], progress) -> None:
    if not shutil.which("mmdebstrap"):
        raise VmError("mmdebstrap is not installed: run scripts/setup (or `apt-get install mmdebstrap`)")
    partial = image.with_name(image.name + ".partial")
    log = image.with_name(image.name + ".log")
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"building the Debian {SUITE} VM image with mmdebstrap into {image} (once, about 30 s)")
    argv = ["mmdebstrap", "--variant=apt", f"--include={','.join(packages)}", SUITE, str(partial)]
    with open(log, "w") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        tail = log.read_text().strip().splitlines()[-3:]
        raise VmError(f"the VM image build failed (mmdebstrap exit {result.returncode}): {' / '.join(tail)}; "
                      f"full log {log}; check that apt reaches Debian's packages (`apt-get update`)")
    # The package's cluster is the image's: each VM's upper layer gets its own copy on first write.
    partial.rename(image)


# ---------------------------------------------------------------- one VM

@dataclass(frozen=True)
class SshIdentity:
    """The toolkit's own SSH files for the local cloud: a client key and a known_hosts it owns."""

    key: Path
    known_hosts: Path

    @classmethod
    def in_dir(cls, directory: Path) -> "SshIdentity":
        return cls(directory / "id_ed25519", directory / "known_hosts")

    @property
    def public_key(self) -> str:
        return Path(f"{self.key}.pub").read_text().strip()


def ensure_identity(directory: Path) -> SshIdentity:
    """The identity in `directory`, its key generated on first use."""
    identity = SshIdentity.in_dir(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not identity.key.exists():
        _keygen(identity.key, "failover-toolkit")
    identity.known_hosts.touch(mode=0o600)
    return identity


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Vm:
    """One site's VM under `directory` (upper/, work/, root/ and its host key)."""

    site: str
    role: str
    address: str
    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    def host_key_line(self) -> str:
        """The known_hosts line for this VM's sshd, known before it ever starts."""
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"{self.address} {kind} {key}"

    # -------------------------------------------------------- create and boot

    def create(self, image: Path, identity: SshIdentity, own_uid: bool = False) -> None:
        """Mounts the overlay root and /proc, /dev, /run, adds the user and the host key (idempotent).
        `own_uid`: the service user gets this VM's own UID (`own_service_uid`)."""
        for part in ("upper", "work", "root"):
            (self.directory / part).mkdir(parents=True, exist_ok=True)
        # A VM's files are its own, as a cloud VM's disk is: the operator reaches it over SSH only.
        self.directory.chmod(0o700)
        if not self.host_key.exists():
            _keygen(self.host_key, f"{self.site}-host")
        if not _mounted(self.root):
            _mount(["-t", "overlay", "overlay", "-o",
                    f"lowerdir={image},upperdir={self.directory / 'upper'},workdir={self.directory / 'work'}",
                    str(self.root)], self.site)
        if own_uid:
            self.own_service_uid()
        self._mount_kernel_dirs()
        self._configure(identity)

    @property
    def service_uid(self) -> int:
        """The UID this VM's service user gets with `own_service_uid`."""
        return SERVICE_UID_BASE + (int(ipaddress.ip_address(self.address)) & 0xFFFF)

    def own_service_uid(self) -> None:
        """Gives the service user (PostgreSQL, pg_receivewal, the protector, the app) this VM's own
        UID, before anything runs as it, so that nftables' `meta skuid` tells this VM's sockets from
        another's (every connection to a 127.x address leaves from 127.0.0.1, whoever sends it).
        What the image's UID owned in this root (the cluster, /etc/postgresql, its logs and
        spools) is handed over, copied up into the VM's own layer; the group keeps its GID, shared
        by every VM. /run is mounted after this and made for the user by name. Idempotent."""
        uid = self.service_uid
        old = self.chroot(["id", "-u", SERVICE_USER]).stdout.strip()
        if old == str(uid):
            return
        # usermod refuses a user with running processes, and `find -xdev` stays in the overlay root.
        self.chroot(["usermod", "-u", str(uid), SERVICE_USER])
        self.chroot(["find", "/", "-xdev", "-uid", old, "-exec", "chown", "-h", str(uid), "{}", "+"])

    def _mount_kernel_dirs(self) -> None:
        root = self.root
        if not _mounted(root / "proc"):
            _mount(["-t", "proc", "proc", str(root / "proc")], self.site)
        if not _mounted(root / "dev"):
            _mount(["--rbind", "/dev", str(root / "dev")], self.site)
            _mount(["--make-rslave", str(root / "dev")], self.site)
        if not _mounted(root / "run"):
            _mount(["-t", "tmpfs", "-o", "mode=755", "tmpfs", str(root / "run")], self.site)
        for directory in ("run/sshd", "run/postgresql"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        self.chroot(["chown", "postgres:postgres", "/run/postgresql"])

    def _configure(self, identity: SshIdentity) -> None:
        root = self.root
        # The host's name resolves inside (sudo looks it up); the network is the host's.
        shutil.copyfile("/etc/hosts", root / "etc/hosts")
        if self.chroot(["id", "-u", USER], check=False).returncode != 0:
            self.chroot(["useradd", "-m", "-s", "/bin/bash", "-G", "sudo", USER])
        sudoers = root / "etc/sudoers.d" / USER
        sudoers.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)
        ssh_dir = root / "home" / USER / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(identity.public_key + "\n")
        self.chroot(["chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh"])
        for old in (root / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        shutil.copyfile(self.host_key, root / "etc/ssh/ssh_host_ed25519_key")
        (root / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
        shutil.copyfile(f"{self.host_key}.pub", root / "etc/ssh/ssh_host_ed25519_key.pub")
        (root / "etc/ssh/sshd_config.d/failover.conf").write_text(
            f"ListenAddress {self.address}\nPort 22\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PidFile /run/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\nUseDNS no\nMaxSessions 64\nMaxStartups 64:30:128\n")

    def boot(self, database: Database) -> None:
        """Writes /etc/failover/site.env, runs the bootstrap as root (as cloud-init does), starts sshd."""
        root = self.root
        (root / "etc/failover").mkdir(parents=True, exist_ok=True)
        env = {"FAILOVER_SITE": self.site, "FAILOVER_TIERS": "db app",
               "DB_VERSION": str(database.version), "DB_PORT": str(database.port), "DB_LISTEN": self.address}
        (root / "etc/failover/site.env").write_text("".join(f"{k}={_shell_quote(v)}\n" for k, v in env.items()))
        shutil.copyfile(BOOTSTRAP, root / "usr/local/sbin/failover-bootstrap")
        (root / "usr/local/sbin/failover-bootstrap").chmod(0o755)
        result = self.chroot(["/usr/local/sbin/failover-bootstrap"], check=False)
        if result.returncode != 0:
            raise VmError(f"site {self.site}: the bootstrap failed in its VM ({self.root}), exit "
                          f"{result.returncode}: {result.stdout.strip()[-400:]}")
        self.start_sshd()

    def reboot(self) -> None:
        """Boots a VM whose processes are gone (dropped, given back): /run empty again, as a
        reboot leaves it, sshd, and the boot-time services (the bootstrap: supervisord and the
        programs it autostarts). Nothing is started that a rebooting cloud VM would not start."""
        if self.pids():  # it was never dropped: it runs already
            self.start_sshd()
            return
        if _mounted(self.root / "run"):
            _umount(self.root / "run")
        self._mount_kernel_dirs()
        self.start_sshd()
        result = self.chroot(["/usr/local/sbin/failover-bootstrap"], check=False)
        if result.returncode != 0:
            raise VmError(f"site {self.site}: its boot-time services failed, exit {result.returncode}: "
                          f"{result.stdout.strip()[-400:]}")

    def start_sshd(self) -> None:
        if self.sshd_pid() is not None:
            return
        result = self.chroot(["/usr/sbin/sshd"], check=False)
        if result.returncode != 0:
            raise VmError(f"site {self.site}: sshd did not start on {self.address}:22: {result.stdout.strip()}")

    def sshd_pid(self) -> int | None:
        pid_file = self.root / "run/sshd.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if pid in self.pids() else None

    def chroot(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["chroot", str(self.root), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and result.returncode != 0:
            raise VmError(f"site {self.site}: `{' '.join(argv)}` failed in its VM: {result.stdout.strip()[-300:]}")
        return result

    # -------------------------------------------------------- stores

    def mount_store(self, directory: Path) -> None:
        """A site's store, at the same path as on the host, as a network share would be mounted."""
        point = self.root / str(directory).lstrip("/")
        point.mkdir(parents=True, exist_ok=True)
        if _mounted(point):
            return
        point.chmod(0o000)  # unmounted, the point refuses writes instead of filling the VM's disk
        _mount(["--bind", str(directory), str(point)], self.site)

    def trust_ca(self, certificate: Path) -> None:
        """A private CA (the object-store emulators'): at the same path inside as on the host, where
        a repository's storage-ca-file names it for pgBackRest, and in the system trust, which rclone
        reads (as cloud-init's ca_certs gives a cloud VM); the certificate only, never a key."""
        inside = self.root / str(certificate).lstrip("/")
        for parent in reversed(inside.relative_to(self.root).parents[:-1]):
            (self.root / parent).mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(certificate, inside)
        inside.chmod(0o644)
        shutil.copyfile(certificate, self.root / "usr/local/share/ca-certificates" / TRUSTED_CA)
        self.chroot(["update-ca-certificates"])

    def unmount_store(self, directory: Path) -> None:
        point = self.root / str(directory).lstrip("/")
        if _mounted(point):
            _umount(point)

    # -------------------------------------------------------- processes and the way down

    def pids(self) -> list[int]:
        """Processes whose root is this VM's root: the VM's processes, and only those."""
        root = str(self.root)
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == root:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def kill(self) -> list[int]:
        """SIGKILL every process of the VM (a provider pulling the plug); returns their PIDs."""
        killed = self.pids()
        _signal(killed, signal.SIGKILL)
        _wait_gone(self, 10)
        return killed

    def stop(self) -> None:
        """A clean shutdown: PostgreSQL stops fast, then the rest is signalled (TERM, then KILL)."""
        if self.pids():
            self.chroot(["sh", "-c", '. /etc/failover/site.env && pg_ctlcluster "$DB_VERSION" main stop -m fast'],
                        check=False)
            _signal(self.pids(), signal.SIGTERM)
            if not _wait_gone(self, 5):
                self.kill()

    def unmount(self) -> None:
        """Unmounts everything under the VM's root, deepest first, then the root itself."""
        for point in sorted(_mounts_under(self.root), key=lambda p: len(p.parts), reverse=True):
            _umount(point)


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(vm: Vm, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not vm.pids():
            return True
        time.sleep(0.05)
    return not vm.pids()


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, from /proc/self/mountinfo (octal escapes decoded)."""
    base = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == base or point.startswith(base + "/"):
            points.append(Path(point))
    return points


def _mounted(path: Path) -> bool:
    return path in _mounts_under(path)


def _mount(args: list[str], site: str) -> None:
    result = subprocess.run(["mount", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise VmError(f"site {site}: `mount {' '.join(args)}` failed: {result.stdout.strip()}; "
                      "the local cloud needs root and overlayfs")


def _umount(point: Path) -> None:
    result = subprocess.run(["umount", str(point)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 and _mounted(point):
        # A process that escaped the kill still holds it: detach now, the kernel frees it when it goes.
        subprocess.run(["umount", "-l", str(point)], check=False)
