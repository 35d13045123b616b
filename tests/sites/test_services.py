"""`failover local up` over Debian VMs, through the real CLI: the toolkit's services on the hosts (the
app under supervisor as postgres, the protector on the primary), the seed and its manifest, drop and
restore-site, and a `local down` that leaves nothing behind (VMs on 127.0.70.x, DNS on .53/.54)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.request
import xmlrpc.client
import xmlrpc.server
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import secrets
from infra.data import integrity
from infra.data import media as media_config
from infra.data.storage import Store, StoreError
from infra.sites import services
from infra.sites.contract import Inventory, MediaRemote, Repository, SiteOutputs
from infra.sites.fleet import INVENTORY_COPY, Fleet
from infra.sites.localvms import LocalVms
from infra.sites.processes import wait_for
from infra.sites.site import APP_PROGRAM, PATHS, PROTECTOR_PROGRAM
from infra.sites.vm import _mounts_under
from infra.spec import load_spec
from tests.conftest import ENCRYPTION_KEYS, ROOT, failover, process_running, processes_rooted_under, remove_unmounted

pytestmark = pytest.mark.integration

PREFIX = "127.0.70"
SPEC = load_spec(ROOT / "Pulumi.yaml")
PASSWORD_ENV = "FAILOVER_REPLICATION_PASSWORD"
GENERATED = (PASSWORD_ENV, *ENCRYPTION_KEYS)  # what `local up` makes when they are not set
MEDIA = os.urandom(2048)  # a media object posted through the app


@dataclass
class Cloud:
    workdir: Path
    summary: dict
    fleet: Fleet
    up_seconds: float

    @property
    def vms(self) -> LocalVms:
        return LocalVms(self.workdir / "vms")

    def store(self, name: str) -> Store:
        return Store(self.fleet.inventory().site(name))

    def read_media(self, site: str, key: str) -> bytes | None:
        """An object as the site's crypt remote decrypts it, read from this machine (the stores
        are directories here), or None."""
        conf = self.workdir / "test-rclone.conf"
        conf.write_text(media_config.render(self.fleet.inventory()))
        conf.chmod(0o600)
        result = subprocess.run(["rclone", f"--config={conf}", "cat", f"{media_config.bucket(self.fleet.inventory(), site)}{key}"],
                                capture_output=True, timeout=60)
        return result.stdout if result.returncode == 0 else None

    def write_media(self, site: str, key: str, data: bytes) -> bool:
        conf = self.workdir / "test-rclone.conf"
        conf.write_text(media_config.render(self.fleet.inventory()))
        conf.chmod(0o600)
        result = subprocess.run(["rclone", f"--config={conf}", "rcat", f"{media_config.bucket(self.fleet.inventory(), site)}{key}"],
                                input=data, capture_output=True, timeout=60)
        return result.returncode == 0


@pytest.fixture(scope="module")
def cloud():
    workdir = Path(tempfile.mkdtemp(prefix="helperA-services-"))
    workdir.chmod(0o755)
    saved = {name: os.environ.pop(name, None) for name in GENERATED}  # `local up` must make its own
    try:
        started = time.monotonic()
        result = failover("local", "up", "--sites", "3", "--prefix", PREFIX, "--seed-mb", "5", "--json",
                          workdir=workdir)
        fleet = Fleet(workdir, app_port=SPEC.app.port)
        yield Cloud(workdir, json.loads(result.stdout), fleet, round(time.monotonic() - started, 1))
        fleet.close()
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        take_down(workdir)


def take_down(workdir: Path) -> None:
    """`local down`, then the directory goes, but never while something is mounted below it:
    rmtree would follow a VM's bind mount of /dev into the machine's own."""
    failover("local", "down", workdir=workdir, check=False)
    remove_unmounted(workdir)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def app_url(site: str, path: str) -> str:
    address = {"aws": f"{PREFIX}.1", "gcp": f"{PREFIX}.2", "azure": f"{PREFIX}.3"}[site]
    return f"http://{address}:{SPEC.app.port}{path}"


def test_local_up_writes_an_inventory_of_its_own_and_a_generated_secret(cloud):
    print(f"\nlocal up --sites 3: {cloud.up_seconds} s ({cloud.summary['seconds']})")
    inventory = cloud.fleet.inventory()
    assert inventory.active == "aws" and inventory.epoch == 1
    assert [(s.site, s.db_host) for s in inventory.sites] == [("aws", f"{PREFIX}.1"), ("gcp", f"{PREFIX}.2"),
                                                               ("azure", f"{PREFIX}.3")]
    assert cloud.vms.wrote_inventory(cloud.fleet.inventory_file)
    for name in inventory.names:  # a failover needs no single site: every store has the whole list
        assert Inventory.from_json(cloud.store(name).get(INVENTORY_COPY).decode()).names == inventory.names
    secret = cloud.workdir / "vms" / "secrets.env"
    assert secret.stat().st_mode & 0o777 == 0o600
    made = secrets.parse_env(secret.read_text())
    assert set(made) == set(GENERATED) and all(len(value) >= 32 for value in made.values())
    assert all(os.environ[name] == made[name] for name in GENERATED)  # the Fleet loaded them from the workdir


def test_the_app_takes_writes_at_epoch_1_on_the_primary_and_serves_reads_on_the_warm_site(cloud):
    aws, gcp = cloud.fleet.site("aws"), cloud.fleet.site("gcp")
    assert aws.healthz() == {"site": "aws", "writable": True, "epoch": 1, "db_epoch": 1, "in_recovery": False,
                             "superseded": False}
    status, post = http("POST", app_url("aws", "/posts"), {"user_id": 1, "body": "written through the app"})
    assert status == 201, post
    def read_on_warm():
        status, body = http("GET", app_url("gcp", f"/posts/{post['id']}"))
        return body if status == 200 else None

    assert wait_for(read_on_warm, 10, "the post to be readable on the warm site")["body"] == "written through the app"
    assert gcp.healthz()["writable"] is False and gcp.healthz()["in_recovery"] is True
    # The app is a supervisor program run as postgres, reading its database over the unix socket.
    for site in (aws, gcp):
        assert site.program_running(APP_PROGRAM)
        assert site.app_config()["dsn"].startswith(f"host={PATHS.socket_dir} ")
        owner = site.root().run(f"stat -c %U /proc/$(supervisorctl pid {APP_PROGRAM})").stdout.strip()
        assert owner == "postgres"


def test_the_protector_runs_on_the_primary_and_copies_new_media_encrypted_to_every_bucket(cloud):
    aws = cloud.fleet.site("aws")
    assert aws.program_running(PROTECTOR_PROGRAM)
    assert not cloud.fleet.site("gcp").program_running(PROTECTOR_PROGRAM)
    data = os.urandom(4096)
    assert cloud.write_media("aws", "protector-test.bin", data)  # as the app writes it
    for name in ("aws", "gcp", "azure"):
        wait_for(lambda: cloud.read_media(name, "protector-test.bin") == data, 15,
                 f"the protector to copy the object into {name}'s bucket")
        assert not _plaintext_in(cloud.workdir / "vms" / "stores" / name, [data]), name


def _plaintext_in(store: Path, needles: list[bytes]) -> list[str]:
    """The files of a store (a directory here) holding any of `needles` as they are."""
    found = []
    for path in store.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            found += [str(path) for needle in needles if needle in content]
    return found


def test_no_store_holds_a_seeded_row_or_media_object_in_plaintext(cloud):
    """Every repository file is pgBackRest ciphertext (OpenSSL's `Salted__` header), every media
    object rclone crypt's (`RCLONE\\0\\0`), and neither a row written through the app nor a seeded
    media object appears in any store, WAL and backups included."""
    aws = cloud.fleet.site("aws")
    body = os.urandom(96).hex()  # incompressible: lz4 would leave it readable without encryption
    status, post = http("POST", app_url("aws", "/posts"), {"user_id": 1, "body": body})
    assert status == 201, post
    failover("snapshot", workdir=cloud.workdir)  # a backup and a WAL switch into every repository
    seeded = cloud.read_media("aws", "seed/000000.bin")
    assert seeded and len(seeded) > 1000
    assert not aws.service().run(f"find {PATHS.media_staging} -type f | grep -q .", warn=True).ok, \
        "the seed's plaintext staging copy was kept"
    media_post = http("POST", app_url("aws", "/posts"), {"user_id": 1, "body": "with media",
                                                         "media": base64.b64encode(MEDIA).decode()})
    assert media_post[0] == 201, media_post
    assert wait_for(lambda: all(cloud.read_media(n, media_post[1]["media_key"]) == MEDIA
                                for n in cloud.fleet.inventory().names), 15, "the post's media in every bucket")
    needles = [body.encode(), seeded[:256], MEDIA[:256]]
    for name in cloud.fleet.inventory().names:
        store = cloud.workdir / "vms" / "stores" / name
        assert not _plaintext_in(store, needles), f"plaintext in {name}'s store"
        repository = [p for p in (store / "pgbackrest").rglob("*") if p.is_file()]
        assert repository and all(p.read_bytes()[:8] == b"Salted__" for p in repository), name
        sealed = [p for p in (store / "media" / "sealed").rglob("*") if p.is_file()]
        assert sealed and all(p.read_bytes()[:8] == b"RCLONE\0\0" for p in sealed), name
        outside = [p for p in (store / "media").iterdir() if p.name not in ("sealed", ".failover")]
        assert not outside, f"{name}'s bucket holds objects outside its crypt folder: {outside}"
        assert cloud.read_media(name, "seed/000000.bin") == seeded


def test_the_seed_its_checksum_manifest_and_a_backup_are_in_every_store(cloud):
    aws = cloud.fleet.site("aws")
    db = SPEC.database.name
    assert cloud.summary["seed"]["users"] > 0 and cloud.summary["seed"]["media"] > 0
    for name in cloud.fleet.inventory().names:
        manifest = json.loads(cloud.store(name).get(integrity.MANIFEST))
        assert manifest["site"] == "aws"
        # Later writes (the app test's post) do not matter: the rows the manifest covers must match.
        now = integrity.checksums_of(aws, db, integrity.max_ids(manifest["tables"]))
        assert all(entry["match"] for entry in integrity.compare(now, manifest["tables"]).values()), name
    rows = [line.split("|") for line in aws.psql("SELECT key, sha256 FROM media", db).stdout.split()]
    for key, digest in rows[:3]:  # decrypted from every bucket: the seed's media went to each
        for name in cloud.fleet.inventory().names:
            assert hashlib.sha256(cloud.read_media(name, key) or b"").hexdigest() == digest, (name, key)
    for index in (1, 2, 3):
        info = aws.service().run(f"pgbackrest --config={PATHS.config} --stanza=social --repo={index} "
                                 "--output=json info").stdout
        assert json.loads(info)[0]["backup"], f"repo{index} holds no backup"


def test_drop_cuts_azure_off_and_restore_site_gives_it_back(cloud):
    vms = {vm.site: vm for vm in cloud.vms.vms()}
    aws = cloud.fleet.site("aws")
    config = lambda: aws.service().run(f"cat {PATHS.config}").stdout  # noqa: E731
    assert vms["azure"].pids() and "repo3-path" in config()
    failover("local", "drop", "--site", "azure", workdir=cloud.workdir)
    assert not vms["azure"].pids() and vms["aws"].pids() and vms["gcp"].pids()
    with pytest.raises(StoreError, match="site azure"):
        cloud.store("azure").get(INVENTORY_COPY)
    assert not cloud.fleet.site("azure").reachable(timeout=3)
    wait_for(lambda: "repo3-path" not in config(), 10, "the protector to leave azure's repository out")

    failover("local", "restore-site", "--site", "azure", workdir=cloud.workdir)
    assert Inventory.from_json(cloud.store("azure").get(INVENTORY_COPY).decode()).active == "aws"
    azure = cloud.fleet.site("azure")
    assert azure.reachable() and not azure.db_running()  # its database waits for the engine
    wait_for(lambda: "repo3-path" in config(), 10, "the protector to archive into azure's repository again")


def pulled_inventory() -> Inventory:
    """An Inventory as `failover inventory pull` writes it: cloud sites, object stores."""
    return Inventory([SiteOutputs(
        site=name, cloud=name, region="r1", role=role, public_addresses=(f"203.0.113.{i}",),
        ssh_hosts=(f"203.0.113.{i}",), ssh_user="admin", db_host=f"203.0.113.{i}", db_port=5432,
        repository=Repository("s3", {"s3-bucket": f"{name}-backups", "s3-key": "env/KEY",
                                     "s3-key-secret": "env/SECRET"}),
        media_remote=MediaRemote("s3", {"provider": "AWS"}, f"{name}-media"))
        for i, (name, role) in enumerate((("aws", "primary"), ("gcp", "warm"), ("azure", "pilot-light")), 1)],
        active="aws")


def test_local_up_refuses_an_inventory_it_did_not_write_and_leaves_it_alone():
    workdir = Path(tempfile.mkdtemp(prefix="helperA-foreign-"))
    try:
        pulled = workdir / "inventory.json"
        pulled_inventory().save(pulled)
        before = (pulled.read_bytes(), pulled.stat().st_mtime_ns)
        refused = failover("local", "up", "--prefix", "127.0.71", workdir=workdir, check=False)
        assert refused.returncode == 2
        assert "inventory.json was not written by `failover local up`" in " ".join(refused.stderr.split())
        assert not (workdir / "vms").exists()
        down = failover("local", "down", workdir=workdir, check=False)
        assert down.returncode == 0, down.stderr
        assert (pulled.read_bytes(), pulled.stat().st_mtime_ns) == before
    finally:
        take_down(workdir)  # had it not refused, a whole cloud would be up here


def test_local_down_leaves_no_mount_and_no_process(cloud):
    """Last: it takes the module's cloud down."""
    knots = [int(p.read_text().split()[0]) for p in (cloud.workdir / "pids").glob("dns-*.pid")]
    assert len(knots) == 2 and all(process_running(pid) for pid in knots)
    started = time.monotonic()
    failover("local", "down", workdir=cloud.workdir)
    print(f"\nlocal down: {time.monotonic() - started:.1f} s")
    assert not _mounts_under(cloud.workdir)
    assert not processes_rooted_under(cloud.workdir)
    assert not [pid for pid in knots if process_running(pid)]
    assert not cloud.fleet.inventory_file.exists() and not (cloud.workdir / "vms").exists()


def test_app_config_reads_over_the_socket_and_mirrors_media_only_from_the_active_site():
    inventory = pulled_inventory()
    primary = services.app_config(inventory, "aws", SPEC, 1)
    assert primary["dsn"] == f"host={PATHS.socket_dir} port=5432 user=postgres dbname={SPEC.database.name}"
    assert (primary["address"], primary["port"], primary["media_remote"]) == ("203.0.113.1", SPEC.app.port, "aws-crypt:")
    assert primary["media_mirrors"] == (["gcp-crypt:"] if SPEC.database.replication == "sync" else [])
    assert primary["rclone_config"] == f"{PATHS.pgbackrest_dir}/rclone.conf"
    assert primary["peers"] == [f"http://203.0.113.{i}:{SPEC.app.port}/healthz" for i in (2, 3)]
    assert services.app_config(inventory, "aws", SPEC, 1, unreachable={"gcp"})["media_mirrors"] == []
    # Only the active site's app mirrors: another site's app takes no writes to mirror.
    assert services.app_config(inventory, "azure", SPEC, 1, fenced=True)["media_mirrors"] == []


def test_the_toolkit_ships_sources_only_and_its_version_follows_their_content(tmp_path):
    files = [str(p) for p in services.toolkit_files()]
    assert "infra/app/schema.sql" in files and "infra/clouds/bootstrap.sh" in files and "playbooks/host.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    for package in services.PACKAGES:  # a copy: others may edit the tree meanwhile
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    version = services.toolkit_archive(tmp_path)[1]
    (tmp_path / "infra/__pycache__").mkdir()
    (tmp_path / "infra/__pycache__/x.pyc").write_bytes(b"cache")
    (tmp_path / "infra/app/.#seed.py").write_text("an editor's lock file")
    (tmp_path / "infra/app/seed.py~").write_text("an editor's backup")
    # Caches and editors' files change nothing: no needless re-install, nothing stray on the hosts.
    assert services.toolkit_archive(tmp_path)[1] == version
    (tmp_path / "infra/app/seed.py").write_text("# changed\n")
    assert services.toolkit_archive(tmp_path)[1] != version


class FakeSupervisor:
    """supervisord's XML-RPC methods that the launch and stop scripts call, recorded."""

    def __init__(self, reload: list, state: str = "STOPPED", fault: str | None = None):
        self.reload, self.state, self.fault, self.calls = reload, state, fault, []

    def _dispatch(self, method: str, params: tuple):
        self.calls.append((method.removeprefix("supervisor."), *params))
        if method == "supervisor.stopProcess" and self.fault:
            raise xmlrpc.client.Fault(70, self.fault)
        if method == "supervisor.reloadConfig":
            return [self.reload]
        return {"statename": self.state} if method == "supervisor.getProcessInfo" else True


def run_rpc(tmp_path: Path, fake: FakeSupervisor, body: str) -> list:
    """services.rpc_script's program against `fake` on a unix socket of its own."""
    class Handler(xmlrpc.server.SimpleXMLRPCRequestHandler):
        disable_nagle_algorithm = False  # a unix socket has no TCP options

    class UnixServer(socketserver.UnixStreamServer, xmlrpc.server.SimpleXMLRPCDispatcher):
        logRequests = False

        def __init__(self, path: str):
            xmlrpc.server.SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
            socketserver.UnixStreamServer.__init__(self, path, Handler)

    path = str(tmp_path / "supervisor.sock")
    server = UnixServer(path)
    server.register_instance(fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = services.RPC_CLIENT.replace(services.SUPERVISOR_SOCKET, path) + body
        done = subprocess.run(["python3", "-S", "-c", script, "failover-walstream"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
        server.server_close()
        os.unlink(path)
    return fake.calls


def test_launching_restarts_a_changed_program_adds_a_new_one_and_starts_a_stopped_one(tmp_path):
    name = "failover-walstream"
    changed = run_rpc(tmp_path, FakeSupervisor([[], [name], []]), services.RPC_LAUNCH)
    assert changed == [("reloadConfig",), ("stopProcessGroup", name), ("removeProcessGroup", name),
                       ("addProcessGroup", name)]
    assert run_rpc(tmp_path, FakeSupervisor([[name], [], []]), services.RPC_LAUNCH)[-1] == ("addProcessGroup", name)
    same = run_rpc(tmp_path, FakeSupervisor([[], [], []]), services.RPC_LAUNCH)
    assert same[-1] == ("startProcess", name, False)  # it does not wait out startsecs
    running = run_rpc(tmp_path, FakeSupervisor([[], ["other"], []], state="RUNNING"), services.RPC_LAUNCH)
    assert running == [("reloadConfig",), ("getProcessInfo", name)]  # another program's change is not applied


def test_holding_a_program_that_is_not_running_is_done(tmp_path):
    assert run_rpc(tmp_path, FakeSupervisor([], fault="NOT_RUNNING"), services.RPC_STOP) == [
        ("stopProcess", "failover-walstream")]
    with pytest.raises(AssertionError, match="SPAWN_ERROR"):
        run_rpc(tmp_path, FakeSupervisor([], fault="SPAWN_ERROR: x"), services.RPC_STOP)
