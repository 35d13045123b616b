"""Conditional create (`Storage.create`) and direct read against the real emulators, and claims
across all three. The first test sends the create request twice by hand: it shows that the
emulator itself refuses the second writer (412 or 409), not a read-then-write in our code.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from infra.data import claims, objecthttp
from infra.data.claims import Claimant, ClaimLost, claim_epoch
from infra.data.storage import StoreError
from infra.sites import emulators
from tests.data.claimcloud import SITES, three_emulators

HOSTS = ("127.0.96.20", "127.0.96.21", "127.0.96.22")
KINDS = ["s3", "gcs", "azure"]
WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
REFUSAL = {"s3": (412, "PreconditionFailed"), "gcs": (412, ""), "azure": (409, "BlobAlreadyExists")}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud():
    with three_emulators(HOSTS, "conditional") as cloud:
        yield cloud


def _assert_clean(cloud, message: str, index: int) -> None:
    emu = cloud.emulator(index)
    assert message.startswith(f"site {emu.site}: {emu.kind} storage "), message
    assert "fix: " in message, message
    for secret in [*cloud.secret_values(), WRONG_KEY, "sig="]:
        assert secret not in message, f"{message} leaks a credential"


@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_the_emulator_itself_refuses_a_second_create(cloud, index):
    store = cloud.store(index)
    api, storage = store.storage.objects, store.storage
    name = objecthttp.object_name(store.site, f".failover/raw-{index}.json")
    answers = []
    for body in (b"first", b"second"):
        request = api.create_request(storage, store.site, name, body)
        answers.append(objecthttp.session().request(request.method, request.url, headers=request.headers,
                                                    data=request.body, verify=objecthttp.tls_verify(store.site)))
    assert answers[0].status_code in (200, 201)
    status, code = REFUSAL[KINDS[index]]
    assert answers[1].status_code == status and objecthttp.error_code(answers[1]) == code
    assert store.read(f".failover/raw-{index}.json") == b"first"


@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_create_returns_the_object_already_there(cloud, index):
    store = cloud.store(index)
    assert store.read(".failover/claims/absent.json") is None
    assert store.create(".failover/claims/one.json", b'{"n": 1}') is None
    assert store.create(".failover/claims/one.json", b'{"n": 2}') == b'{"n": 1}'
    assert store.get(".failover/claims/one.json") == b'{"n": 1}'  # rclone sees the same object
    assert ".failover/claims/one.json" in store.list(".failover/claims/")


@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_racing_creates_have_one_winner(cloud, index):
    store, barrier, results = cloud.store(index), threading.Barrier(12), []

    def racer(n: int) -> None:
        barrier.wait()
        results.append((n, store.create(".failover/race.json", b"racer %d" % n)))

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, existing in results if existing is None]
    assert len(results) == 12 and len(winners) == 1, winners
    assert {existing for _, existing in results if existing is not None} == {b"racer %d" % winners[0]}


@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_a_missing_bucket_is_named_and_never_created(cloud, index):
    store = cloud.store(index, path="absent-bucket/media")
    for action in (lambda: store.create(".failover/x.json", b"1"), lambda: store.read(".failover/x.json")):
        with pytest.raises(StoreError) as error:
            action()
        _assert_clean(cloud, str(error.value), index)
        # S3 answers 403 for a bucket the writer may not use, as AWS does
        assert ("refused the credentials" if KINDS[index] == "s3" else "does not exist") in str(error.value)


@pytest.mark.parametrize("index", [0, 2], ids=["s3", "azure"])  # fake-gcs-server accepts every credential
def test_a_refused_key_is_named_without_the_key(cloud, index):
    emu = cloud.emulator(index)
    os.environ["FAILOVER_TEST_CLAIMS_WRONG"] = WRONG_KEY
    if emu.kind == "s3":
        wrong = {"s3-key-secret": "env/FAILOVER_TEST_CLAIMS_WRONG"}
    else:
        os.environ["FAILOVER_TEST_CLAIMS_WRONG_SAS"] = (f"https://{emu.host}:{emu.port}/{emulators.AZURE_ACCOUNT}?"
                                                        + emulators.account_sas(emulators.AZURE_ACCOUNT, WRONG_KEY))
        wrong = {"media-sas-url": "env/FAILOVER_TEST_CLAIMS_WRONG_SAS"}
    store = cloud.store(index, credentials=wrong)
    for action in (lambda: store.create(".failover/x.json", b"1"), lambda: store.read(".failover/x.json")):
        with pytest.raises(StoreError) as error:
            action()
        _assert_clean(cloud, str(error.value), index)
        assert "refused the credentials" in str(error.value)


@pytest.mark.parametrize("index", [0, 1, 2], ids=KINDS)
def test_a_stopped_store_is_named_fast_and_claims_go_on_without_it(cloud, index):
    emu, store = cloud.emulator(index), cloud.store(index)
    assert emu.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as error:
            store.create(".failover/x.json", b"1")
        assert time.monotonic() - started < 5
        _assert_clean(cloud, str(error.value), index)
        assert "did not answer" in str(error.value)
        won = claim_epoch(cloud.stores(), 100 + index, Claimant("gcp", f"run-{index}", "h"))
        assert won.held_by(f"run-{index}") == [s for i, s in enumerate(sorted(SITES)) if s != emu.site]
        assert "did not answer" in next(h.error for h in won.holdings if h.site == emu.site)
    finally:
        cloud.start(index)


def test_claims_across_the_three_emulators(cloud):
    stores = cloud.stores()
    a, b = Claimant("gcp", "run-a", "host-a"), Claimant("azure", "run-b", "host-b")
    won = claim_epoch(stores, 1, a)
    assert won.epoch == 1 and won.held_by("run-a") == sorted(SITES)
    with pytest.raises(ClaimLost) as error:
        claim_epoch(stores, 1, b, settle=0.5)
    assert error.value.winner == a and "epoch 1 belongs to run run-a (target gcp, host host-a)" in str(error.value)
    assert claim_epoch(stores, 1, a).won  # resumed
    assert [h.holder for h in claims.holdings(stores, 1)] == [a, a, a]
    assert claims.highest(stores) >= 1
