"""The truth about a transfer (pure): statuses, sub-operation counts and instances received."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.retrieve import Receipts, Transfer, describe_status, verify_transfer
from niffler.common.errors import ConfigError
from niffler.net.writer import StoredInstance


def test_a_complete_verified_transfer_passes() -> None:
    assert verify_transfer(Transfer(0x0000, 4, 0, 0, 4), expected=4) is None
    assert verify_transfer(Transfer(0x0000, 4, 0, 0, None), expected=4) is None  # external AE
    assert verify_transfer(Transfer(0x0000, None, None, None, 3), expected=None) is None


@pytest.mark.parametrize(
    ("transfer", "expected", "message"),
    [
        (Transfer(0xB000, 3, 1, 0, 3), 4, "0xB000 (Warning: sub-operations complete"),
        (Transfer(0xC000, 0, 4, 0, 0), 4, "0xC000 (Failed: unable to process); 4 sub-operation(s) failed"),
        (Transfer(0xA801, None, None, None, 0), 4, "0xA801 (Refused: move destination unknown)"),
        (Transfer(0xA702, None, None, None, 0), None, "Refused: out of resources"),
        (Transfer(0x0000, 4, 0, 1, 4), 4, "reported Success but 0 failed and 1 warning"),
        (Transfer(0x0000, 4, 0, 0, 3), 4, "received 3 instance(s) but the PACS reported 4 completed"),
        (Transfer(0x0000, 3, 0, 0, 3), 4, "retrieved 3 instance(s) but C-FIND reported NumberOfStudy"),
        (Transfer(0x0000, None, None, None, None), 4, "no sub-operation counts"),
    ],
)
def test_anything_short_of_the_whole_study_is_a_failure(
    transfer: Transfer, expected: int | None, message: str
) -> None:
    problem = verify_transfer(transfer, expected)
    assert problem is not None and message in problem


def test_status_names() -> None:
    assert describe_status(0) == "0x0000 (Success)"
    assert describe_status(0xA7FE) == "0xA7FE (Refused: out of resources)"
    assert describe_status(0xC123) == "0xC123 (Failed: unable to process)"
    assert describe_status(0x1234) == "0x1234"


def stored(study: str, sop: str = "sop", size: int = 10) -> StoredInstance:
    return StoredInstance(Path("x"), study, "se", sop, "cls", "ts", "PACS", size)


def test_receipts_count_per_study_and_restart_at_zero_for_each_transfer() -> None:
    receipts = Receipts()
    with receipts.exclusive("A"):
        receipts.on_stored(stored("A", "1"))
        receipts.on_stored(stored("B", "2"))
        receipts.on_stored(stored("A", "3"))
        assert (receipts.count("A"), receipts.count("B")) == (2, 0)  # B is not in transfer
    with receipts.exclusive("A"):
        assert receipts.count("A") == 0
    assert (receipts.instances, receipts.bytes) == (3, 30)


def test_an_instance_sent_twice_counts_once() -> None:
    receipts = Receipts()
    with receipts.exclusive_all(["B", "A", "B"]):
        for sop in ("1", "2", "1"):
            receipts.on_stored(stored("A", sop))
        receipts.on_stored(stored("B", "9"))
        assert (receipts.count("A"), receipts.count("B")) == (2, 1)


def test_list_transfers_in_opposite_orders_do_not_deadlock() -> None:
    receipts = Receipts()
    done: list[str] = []

    def hold(uids: list[str], name: str) -> None:
        for _ in range(200):
            with receipts.exclusive_all(uids):
                pass
        done.append(name)

    threads = [
        threading.Thread(target=hold, args=(["S1", "S2", "S3"], "up")),
        threading.Thread(target=hold, args=(["S3", "S2", "S1"], "down")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == ["down", "up"]


def test_two_rows_resolving_to_one_study_are_serialised() -> None:
    receipts = Receipts()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with receipts.exclusive("S"):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        inside.wait(5)
        with receipts.exclusive("S"):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["first in", "first out", "second in"]


def test_mode_follows_upstream_filepath_sentinels() -> None:
    assert ColdConfig().mode == "move"
    assert ColdConfig(FilePath="CFIND-ONLY").mode == "cfind-only"
    assert ColdConfig(FilePath="CFIND-DETAILED", Mode="cfind-only").mode == "cfind-only"
    assert ColdConfig(Mode="get").mode == "get"
    with pytest.raises(ConfigError, match="needs a FilePath template"):
        ColdConfig(FilePath="CFIND-ONLY", Mode="get")


def test_a_row_arriving_after_the_first_left_still_waits_for_the_second() -> None:
    receipts = Receipts()
    entered = [threading.Event() for _ in range(3)]
    leave = [threading.Event() for _ in range(3)]

    def worker(i: int) -> None:
        with receipts.exclusive("S"):
            entered[i].set()
            leave[i].wait(5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    threads[0].start()
    assert entered[0].wait(5)
    threads[1].start()  # waits for the first
    leave[0].set()
    assert entered[1].wait(5)
    threads[2].start()  # arrives while the second holds the study
    assert not entered[2].wait(0.3)
    leave[1].set()
    assert entered[2].wait(5)
    leave[2].set()
    for t in threads:
        t.join(5)
