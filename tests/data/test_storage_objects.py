"""A site's store as `Storage` put/get/list: a posix directory, and the real emulators
(moto behind stunnel, fake-gcs-server, Azurite) on their own loopback addresses, reached
with rclone. Round trips, absent keys and buckets, a stopped store and a refused key must
each give an error naming the site and the store, and never a credential.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from infra.data import storage
from infra.data.storage import MissingKey, Store, StoreError, put_all
from infra.runbook.journal import REMOTE_PATH, Journal, JournalStore, from_stores
from infra.sites import emulators
from infra.sites.contract import MediaRemote, Repository, SiteOutputs
from infra.sites.processes import ProcessTable, port_answers, wait_for
from tests.conftest import service_dir
from tests.data.emulated import free_block, secret_values

SITES = [(0, "aws", "s3"), (1, "gcp", "gcs"), (2, "azure", "azure")]
HOSTS = ["127.0.40.210", "127.0.40.211", "127.0.40.212"]  # one address per emulated site
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
BLOB = bytes(range(256)) * 40 + b"\n\x00end"  # binary, with a NUL and no trailing newline


def _site(name: str, repo: Repository, remote: MediaRemote, credentials: dict[str, str] | None = None) -> SiteOutputs:
    return SiteOutputs(name, "local", "loopback", "primary", ("127.0.0.1",), ("127.0.0.1",), "postgres",
                       "127.0.0.1", 5432, repo, remote, credentials or {})


def _posix(root: Path, name: str = "local") -> Store:
    return Store(_site(name, Repository("posix", {"path": str(root)}), MediaRemote("local", {}, str(root))))


def _round_trip(store: Store) -> None:
    store.put(".failover/inventory.json", b'{"active": "aws"}')
    store.put(".failover/journal.json", BLOB)
    store.put(".failover/runs/one.json", b"")
    store.put("other/x.bin", b"x")
    store.put(".failover/inventory.json", b'{"active": "gcp"}')  # replaced whole
    assert store.get(".failover/inventory.json") == b'{"active": "gcp"}'
    assert store.get(".failover/journal.json") == BLOB
    assert store.get(".failover/runs/one.json") == b""
    assert store.list(".failover/") == [".failover/inventory.json", ".failover/journal.json", ".failover/runs/one.json"]
    assert store.list(".failover/j") == [".failover/journal.json"]
    assert store.list("other") == ["other/x.bin"]
    assert store.list(".failover/nothing/") == []
    with pytest.raises(MissingKey, match=f"site {store.name}: .*holds no .failover/absent.json"):
        store.get(".failover/absent.json")


# --- posix --------------------------------------------------------------------------------------

def test_posix_round_trip(tmp_path):
    _round_trip(_posix(tmp_path))
    assert (tmp_path / ".failover" / "journal.json").read_bytes() == BLOB
    assert not list(tmp_path.rglob("*.tmp"))


def test_posix_objects_take_the_directory_owner(service_tmp):
    os.chown(service_tmp, 65534, 65534)
    _posix(service_tmp).put(".failover/a/b.json", b"1")
    assert {(p.stat().st_uid, p.stat().st_gid) for p in service_tmp.rglob("*")} == {(65534, 65534)}


def test_posix_missing_directory_names_site_and_store(tmp_path):
    store = _posix(tmp_path / "unmounted", "gcp")
    for action in (lambda: store.put(".failover/x", b"1"), lambda: store.get(".failover/x"), lambda: store.list("")):
        with pytest.raises(StoreError) as error:
            action()
        assert not isinstance(error.value, MissingKey)
        message = str(error.value)
        assert message.startswith(f"site gcp: posix storage directory {tmp_path / 'unmounted'}: "), message
        assert "fix: check that the directory exists" in message, message


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "dir/"])
def test_keys_stay_inside_the_store(tmp_path, key):
    with pytest.raises(ValueError, match="relative path inside the store"):
        _posix(tmp_path).put(key, b"1")


def test_put_all_reports_each_store_that_failed(tmp_path):
    (tmp_path / "a").mkdir()
    copied, errors = put_all([_posix(tmp_path / "a", "aws"), _posix(tmp_path / "gone", "gcp")], "k.json", b"1")
    assert copied == ["aws"] and len(errors) == 1 and errors[0].startswith("site gcp: posix storage")


def test_the_newest_journal_copy_is_read_back_from_the_stores(tmp_path):
    older, newer = (Journal.new("failover", "aws", "gcp", 2, ["a"], {}) for _ in range(2))
    older.record("a", "started")
    time.sleep(0.01)
    newer.record("a", "done")
    stores = [_posix(tmp_path / name, name) for name in ("aws", "gcp", "azure")]
    for path in (tmp_path / "aws", tmp_path / "gcp"):
        path.mkdir()
    stores[0].put(REMOTE_PATH, json.dumps(older.to_dict()).encode())
    stores[1].put(REMOTE_PATH, json.dumps(newer.to_dict()).encode())
    assert from_stores(stores).run_id == newer.run_id  # azure's store does not exist: skipped
    assert JournalStore(tmp_path / "work").latest(stores).run_id == newer.run_id


# --- the emulators --------------------------------------------------------------------------------

@dataclasses.dataclass
class Emulated:
    workdir: Path
    base: int

    def emulator(self, index: int) -> emulators.Emulator:
        return emulators.emulator(self.workdir, index, SITES[index][1], self.base, HOSTS[index])

    def store(self, index: int, credentials: dict[str, str] | None = None, **remote_changes) -> Store:
        """The site's store, its credentials (or `credentials` over them) as writer credentials."""
        emu = self.emulator(index)
        remote = dataclasses.replace(emu.media_remote(), **remote_changes)
        return Store(_site(emu.site, emu.repository(), remote, {**emu.writer_credentials(), **(credentials or {})}))

    def secret_values(self) -> list[str]:
        return secret_values(self.workdir)


@pytest.fixture(scope="module")
def cloud():
    """The three emulators, each on its own 127.0.40.x address; stopped by PID afterwards."""
    if not shutil.which("rclone"):
        pytest.fail("rclone is not installed: run scripts/setup")
    workdir, base = service_dir("objects"), free_block(HOSTS, 23100, 23900)
    try:
        for index, site, _ in SITES:
            emulators.start_emulated(workdir, index, site, base, HOSTS[index])
        yield Emulated(workdir, base)
    finally:
        table = ProcessTable(workdir)
        for name in table.names():
            table.stop(name)
        shutil.rmtree(workdir, ignore_errors=True)


KINDS = [kind for _, _, kind in SITES]


def _assert_names_the_store(cloud: Emulated, message: str, index: int, bucket: str) -> None:
    emu = cloud.emulator(index)
    noun = "container" if emu.kind == "azure" else "bucket"
    assert message.startswith(f"site {emu.site}: {emu.kind} storage {noun} {bucket} at {emu.host}:{emu.port}"), message
    assert "fix: " in message, message
    for secret in [*cloud.secret_values(), WRONG_KEY, "sig="]:
        assert secret not in message, f"{message} leaks a credential"


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_round_trip_through_the_emulator(cloud, index):
    store = cloud.store(index)
    assert type(store.storage).__name__.lower() == KINDS[index] and store.storage.remote
    _round_trip(store)


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_a_missing_bucket_is_named_and_never_created(cloud, index):
    store = cloud.store(index, path="absent-bucket/media")
    for action in (lambda: store.put(".failover/x.json", b"1"), lambda: store.get(".failover/x.json"),
                   lambda: store.list(".failover/"), lambda: store.put(".failover/x.json", b"1")):
        with pytest.raises(StoreError) as error:
            action()
        assert not isinstance(error.value, MissingKey)
        _assert_names_the_store(cloud, str(error.value), index, "absent-bucket")
        if KINDS[index] == "s3":  # the writer may use its own bucket only: any other answers 403, as on AWS
            assert "refused the credentials" in str(error.value) and "does not exist" in str(error.value)
        else:
            assert "does not exist" in str(error.value) and "fix: create the " in str(error.value)


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 2], ids=["s3", "azure"])  # fake-gcs-server accepts every credential
def test_a_refused_key_is_named_without_the_key(cloud, index):
    emu = cloud.emulator(index)
    os.environ["FAILOVER_TEST_OBJECTS_WRONG"] = WRONG_KEY
    if emu.kind == "s3":
        wrong = {"s3-key-secret": "env/FAILOVER_TEST_OBJECTS_WRONG"}
    else:
        os.environ["FAILOVER_TEST_OBJECTS_WRONG_SAS"] = (f"https://{emu.host}:{emu.port}/{emulators.AZURE_ACCOUNT}?"
                                                         + emulators.account_sas(emulators.AZURE_ACCOUNT, WRONG_KEY))
        wrong = {"media-sas-url": "env/FAILOVER_TEST_OBJECTS_WRONG_SAS"}
    store = cloud.store(index, credentials=wrong)
    for action in (lambda: store.put(".failover/x.json", b"1"), lambda: store.get(".failover/inventory.json")):
        with pytest.raises(StoreError) as error:
            action()
        _assert_names_the_store(cloud, str(error.value), index, emu.bucket)
        assert "refused the credentials" in str(error.value)


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_a_stopped_store_is_named_fast(cloud, index):
    emu = cloud.emulator(index)
    store = cloud.store(index)
    store.put(".failover/before.json", b"1")
    assert emu.stop()
    # Stopped means its port refuses: the errors below must come fast from then on (in two full
    # CI runs a gcs case once took rclone's whole 120 s, as if something still accepted there).
    wait_for(lambda: not port_answers(emu.host, emu.port), 10, f"the {emu.kind} emulator's port to close", 0.1)
    try:
        for action in (lambda: store.put(".failover/x.json", b"1"), lambda: store.get(".failover/before.json"),
                       lambda: store.list("")):
            started = time.monotonic()
            with pytest.raises(StoreError) as error:
                action()
            assert time.monotonic() - started < 5
            _assert_names_the_store(cloud, str(error.value), index, emu.bucket)
            assert "did not answer" in str(error.value)
        copied, errors = put_all([store, cloud.store((index + 1) % 3)], ".failover/all.json", b"1")
        assert copied == [SITES[(index + 1) % 3][1]] and len(errors) == 1
    finally:
        emulators.start_emulated(cloud.workdir, index, emu.site, cloud.base, HOSTS[index])


@pytest.mark.integration
def test_one_object_into_every_store_at_once(cloud, tmp_path):
    stores = [cloud.store(i) for i in range(3)] + [_posix(tmp_path)]
    copied, errors = put_all(stores, ".failover/inventory.json", b'{"epoch": 7}')
    assert errors == [] and copied == ["aws", "gcp", "azure", "local"]
    assert {s.get(".failover/inventory.json") for s in stores} == {b'{"epoch": 7}'}
    assert storage.storage_for("posix").remote is False
