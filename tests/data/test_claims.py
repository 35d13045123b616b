"""Claimed epochs against posix stores (directories): winning, losing with the winner named,
resuming, splits, stalled claimers, unreachable stores, superseded claims and conflicts; and
posix's conditional create itself, raced by threads and by processes.
"""
from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from infra.data import claims
from infra.data.claims import (LOST, SPLIT, SUPERSEDED, UNDECIDED, WON, Claimant, ClaimConflict, ClaimLost,
                               ClaimUndecided, claim, claim_epoch)
from infra.data.storage import Store, StoreError
from infra.sites.contract import MediaRemote, Repository, SiteOutputs

SITES = ("aws", "azure", "gcp")  # the claim order is by name
A, B, C, D = (Claimant(f"target-{n}", f"run-{n}", f"host-{n}") for n in "abcd")


def _store(root: Path, name: str) -> Store:
    site = SiteOutputs(name, "local", "loopback", "primary", ("127.0.0.1",), ("127.0.0.1",), "postgres",
                       "127.0.0.1", 5432, Repository("posix", {"path": str(root)}), MediaRemote("local", {}, str(root)))
    return Store(site)


@pytest.fixture
def stores(tmp_path) -> list[Store]:
    for name in SITES:
        (tmp_path / name).mkdir()
    return [_store(tmp_path / name, name) for name in SITES]


def _seed(store: Store, epoch: int, holder: Claimant, names=SITES) -> None:
    """A claim object as another claimer would have left it."""
    body = {"version": 1, "epoch": epoch, "target": holder.target, "run_id": holder.run_id, "host": holder.host,
            "stores": sorted(names), "at": "2024-01-01T00:00:00.000+00:00"}
    assert store.create(claims.key(epoch), json.dumps(body).encode()) is None


# --- posix's conditional create ---------------------------------------------------------------

def test_posix_create_refuses_a_second_writer_and_returns_the_first(stores):
    store = stores[0]
    assert store.create(".failover/claims/x.json", b"first") is None
    assert store.create(".failover/claims/x.json", b"second") == b"first"
    assert store.get(".failover/claims/x.json") == b"first"
    assert store.read(".failover/claims/absent.json") is None
    assert store.list(".failover/") == [".failover/claims/x.json"]  # no temp file left behind


def test_posix_create_in_a_missing_directory_names_the_site(tmp_path):
    store = _store(tmp_path / "unmounted", "gcp")
    for action in (lambda: store.create("k.json", b"1"), lambda: store.read("k.json")):
        with pytest.raises(StoreError, match=f"^site gcp: posix storage directory {tmp_path / 'unmounted'}: "):
            action()


def test_posix_create_has_one_winner_among_racing_threads(stores):
    store, barrier, results = stores[0], threading.Barrier(16), []

    def racer(n: int) -> None:
        barrier.wait()
        results.append((n, store.create("race.json", b"%d" % n * 1000)))

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, existing in results if existing is None]
    assert len(winners) == 1
    # every loser read the winner's whole object, never a part of it
    assert {existing for _, existing in results if existing is not None} == {b"%d" % winners[0] * 1000}


# --- claiming ---------------------------------------------------------------------------------

def test_a_lone_claimer_wins_every_store(stores):
    result = claim(stores, 7, A)
    assert result.outcome == WON and result.won and result.winner == A and result.majority == 2
    assert [h.created for h in result.holdings] == [True, True, True]
    doc = json.loads(stores[0].get(".failover/claims/epoch-000007.json"))
    assert {k: doc[k] for k in ("epoch", "target", "run_id", "host", "stores")} == {
        "epoch": 7, "target": "target-a", "run_id": "run-a", "host": "host-a", "stores": list(SITES)}


def test_a_later_claimer_loses_and_the_error_names_the_winner(stores):
    claim_epoch(stores, 3, A)
    result = claim(stores, 3, B, settle=0.2)
    assert result.outcome == LOST and result.winner == A
    assert not any(h.created for h in result.holdings)  # it deferred at the first store: wrote nothing
    with pytest.raises(ClaimLost) as error:
        claim_epoch(stores, 3, B, settle=0.2)
    assert error.value.winner == A
    message = str(error.value)
    assert "epoch 3 belongs to run run-a (target target-a, host host-a)" in message
    assert "holds its claim in aws, azure, gcp" in message and "stops before changing anything" in message


def test_a_resumed_run_recognises_its_own_claim(stores):
    first = claim_epoch(stores, 4, A)
    again = claim_epoch(stores, 4, Claimant(A.target, A.run_id, "another-host"))  # resumed elsewhere
    assert first.won and again.won and again.epoch == 4
    assert not any(h.created for h in again.holdings)


def test_a_resumed_run_completes_a_partial_claim(stores):
    _seed(stores[0], 5, A)  # it died after the first store
    result = claim_epoch(stores, 5, A)
    assert result.won and [h.created for h in result.holdings] == [False, True, True]


def test_the_same_run_for_another_target_is_refused(stores):
    claim_epoch(stores, 4, A)
    with pytest.raises(ClaimConflict, match="holds this run \\(run-a\\) for target target-a, but it now claims "
                                            "for other"):
        claim(stores, 4, Claimant("other", A.run_id, A.host))


def test_a_minority_is_not_a_win(stores):
    _seed(stores[1], 6, B)
    _seed(stores[2], 6, B)
    result = claim(stores, 6, A)  # A takes the first store, B holds the other two
    assert result.outcome == LOST and result.winner == B and result.held_by("run-a") == ["aws"]


def test_a_split_epoch_is_never_won_and_the_next_one_is_claimed(stores):
    for store, holder in zip(stores, (A, B, C)):
        _seed(store, 8, holder)
    assert claim(stores, 8, D).outcome == SPLIT
    for claimant in (A, B, C):  # not even a holder of one part can win it
        assert claim(stores, 8, claimant, settle=0).outcome == SPLIT
    result = claim_epoch(stores, 8, D)
    assert result.won and result.epoch == 9


def test_every_attempt_split_stops_the_run(stores):
    for epoch in (8, 9):
        for store, holder in zip(stores, (A, B, C)):
            _seed(store, epoch, holder)
    with pytest.raises(ClaimUndecided, match="epochs 8-9 all split between concurrent runs"):
        claim_epoch(stores, 8, D, attempts=2)


def test_a_stalled_claimer_is_waited_for_then_overtaken(stores):
    _seed(stores[0], 10, A)  # A died after its first store
    result = claim(stores, 10, B, settle=0.2)
    assert result.won and result.held_by("run-b") == ["azure", "gcp"]


def test_a_claimer_ahead_that_finishes_while_waited_for_wins(stores):
    _seed(stores[0], 11, A)
    timer = threading.Timer(0.3, lambda: [_seed(s, 11, A) for s in stores[1:]])
    timer.start()
    try:
        result = claim(stores, 11, B, settle=5)
    finally:
        timer.join()
    assert result.outcome == LOST and result.winner == A


def test_an_unreachable_store_is_not_won_and_can_leave_the_epoch_undecided(tmp_path, stores):
    gone = _store(tmp_path / "dropped", "azure")  # its directory does not exist
    stores = [stores[0], gone, stores[2]]
    assert claim_epoch(stores, 12, A).held_by("run-a") == ["aws", "gcp"]  # 2 of 3: won without azure

    _seed(stores[0], 13, A)  # A died after aws; azure is gone; B takes gcp: 1 and 1, azure open
    with pytest.raises(ClaimUndecided) as error:
        claim_epoch(stores, 13, B, settle=0.1)
    result = error.value.claim
    assert result.outcome == UNDECIDED and result.held_by("run-b") == ["gcp"]
    message = str(error.value)
    assert "epoch 13 has no owner yet" in message and "azure: site azure: posix storage directory" in message
    assert "run again once the unreachable stores answer" in message
    assert "claim epoch 14 explicitly" in message


def test_a_minority_of_reachable_stores_wins_nothing(tmp_path, stores):
    stores = [stores[0], _store(tmp_path / "x", "azure"), _store(tmp_path / "y", "gcp")]
    with pytest.raises(ClaimUndecided):
        claim_epoch(stores, 14, A)
    assert claims.holdings(stores, 14)[0].holder == A


def test_a_won_epoch_with_a_later_claim_is_superseded(stores):
    _seed(stores[2], 16, B)  # B gave up on 15 and went on
    result = claim(stores, 15, A)
    assert result.outcome == SUPERSEDED and result.winner == B and result.later == 16
    with pytest.raises(ClaimLost, match="epoch 16 is already claimed by run run-b"):
        claim_epoch(stores, 15, Claimant(A.target, A.run_id, A.host))  # resumed: its claim, but outranked


def test_a_claim_over_other_stores_is_refused(stores):
    _seed(stores[0], 17, B, names=("aws", "gcp"))  # B read an Inventory without azure
    with pytest.raises(ClaimConflict, match="made over stores aws, gcp, this run claims over aws, azure, gcp"):
        claim(stores, 17, A)


def test_an_object_that_is_not_a_claim_is_refused(stores):
    stores[0].create(claims.key(18), b"not json")
    with pytest.raises(ClaimConflict, match="site aws's claim for epoch 18 .* is not a claim object"):
        claim(stores, 18, A)


def test_duplicate_or_no_stores_are_refused(stores):
    with pytest.raises(ValueError, match="each site's store once"):
        claim([stores[0], stores[0]], 1, A)
    with pytest.raises(ValueError, match="at least one store"):
        claim([], 1, A)


def test_holdings_and_highest_read_without_claiming(stores):
    assert claims.highest(stores) == 0
    claim_epoch(stores, 2, A)
    _seed(stores[1], 30, B)
    assert [h.holder for h in claims.holdings(stores, 2)] == [A, A, A]
    assert [h.holder for h in claims.holdings(stores, 3)] == [None, None, None]
    assert claims.highest(stores) == 30


# --- many claimers at once --------------------------------------------------------------------

def _claimer(roots: list[str], index: int, epochs: int, settle: float, barrier, queue) -> None:
    stores = [_store(Path(root), name) for root, name in zip(roots, SITES)]
    me = Claimant("target", f"run-{index}", "host")
    for epoch in range(1, epochs + 1):
        barrier.wait()
        queue.put((epoch, index, claim(stores, epoch, me, settle=settle).outcome))


@pytest.mark.parametrize("settle", [claims.SETTLE, 0.0], ids=["deferring", "impatient"])
def test_racing_processes_never_give_an_epoch_two_winners(stores, settle):
    """12 processes race for 30 epochs; `impatient` claimers never wait for the one ahead."""
    processes, epochs = 12, 30
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(processes), context.Queue()
    roots = [s.site.media_remote.path for s in stores]
    workers = [context.Process(target=_claimer, args=(roots, i, epochs, settle, barrier, queue))
               for i in range(processes)]
    for w in workers:
        w.start()
    outcomes = [queue.get(timeout=60) for _ in range(processes * epochs)]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    for epoch in range(1, epochs + 1):
        won = [i for e, i, outcome in outcomes if e == epoch and outcome == WON]
        assert len(won) <= 1, f"epoch {epoch} has winners {won}"
        holders = _counts(claims.holdings(stores, epoch))
        if won:
            assert holders[f"run-{won[0]}"] >= 2
        else:
            assert all(count < 2 for count in holders.values())


def _counts(holdings) -> dict[str, int]:
    counts: dict[str, int] = {}
    for h in holdings:
        if h.holder:
            counts[h.holder.run_id] = counts.get(h.holder.run_id, 0) + 1
    return counts
