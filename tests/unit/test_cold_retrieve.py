"""The truth about a transfer (pure): statuses, sub-operation counts and instances received."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.fetch import Outcome, Tally
from niffler.cold_extraction.plan import Query, RowError
from niffler.cold_extraction.report import ReportRow, Summary, report_rows, write_outputs
from niffler.cold_extraction.resolve import Resolved, resolve
from niffler.cold_extraction.retrieve import (
    CFIND_ONLY_KEYS,
    RESOLVE_KEYS,
    PacsSession,
    Receipts,
    describe_status,
    distinct_matches,
)
from niffler.cold_extraction.rows import row_detail
from niffler.cold_extraction.run import listen_address
from niffler.cold_extraction.verdict import Target, Transfer, list_groups, verify_transfer, whole_in_list
from niffler.common.errors import ConfigError
from niffler.common.ledger import Entry, State
from niffler.net.address import AEAddress
from niffler.net.writer import StoredInstance

T = TypeVar("T")


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
    with receipts.exclusive(("STUDY", "A")):
        receipts.on_stored(stored("A", "1"))
        receipts.on_stored(stored("B", "2"))
        receipts.on_stored(stored("A", "3"))
        assert (receipts.count(("STUDY", "A")), receipts.count(("STUDY", "B"))) == (
            2,
            0,
        )  # B is not in transfer
    with receipts.exclusive(("STUDY", "A")):
        assert receipts.count(("STUDY", "A")) == 0
    assert (receipts.deliveries, receipts.bytes) == (3, 30)


def test_an_instance_sent_twice_counts_once() -> None:
    receipts = Receipts()
    with receipts.exclusive_all([("STUDY", "B"), ("STUDY", "A"), ("STUDY", "B")]):
        for sop in ("1", "2", "1"):
            receipts.on_stored(stored("A", sop))
        receipts.on_stored(stored("B", "9"))
        assert (receipts.count(("STUDY", "A")), receipts.count(("STUDY", "B"))) == (2, 1)


def test_list_transfers_in_opposite_orders_do_not_deadlock() -> None:
    receipts = Receipts()
    done: list[str] = []

    def hold(uids: list[tuple[str, str]], name: str) -> None:
        for _ in range(200):
            with receipts.exclusive_all(uids):
                pass
        done.append(name)

    threads = [
        threading.Thread(target=hold, args=([("STUDY", "S1"), ("STUDY", "S2"), ("STUDY", "S3")], "up")),
        threading.Thread(target=hold, args=([("STUDY", "S3"), ("STUDY", "S2"), ("STUDY", "S1")], "down")),
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
        with receipts.exclusive(("STUDY", "S")):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        inside.wait(5)
        with receipts.exclusive(("STUDY", "S")):
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
        with receipts.exclusive(("STUDY", "S")):
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


# --- C-FIND de-duplication and resolution --------------------------------------------------


def test_matches_are_distinct_by_uid_and_a_later_duplicate_fills_empty_fields() -> None:
    per_instance = [
        {"StudyInstanceUID": "S1", "PatientID": "P", "NumberOfStudyRelatedInstances": ""},
        {"StudyInstanceUID": "S1", "PatientID": "P", "NumberOfStudyRelatedInstances": "10"},
        {"StudyInstanceUID": "S2", "PatientID": "P", "NumberOfStudyRelatedInstances": ""},
        {"StudyInstanceUID": "S1", "PatientID": "other", "NumberOfStudyRelatedInstances": "99"},
        {"StudyInstanceUID": "", "PatientID": "P"},
        {"StudyInstanceUID": "", "PatientID": "P"},
    ]
    assert distinct_matches(per_instance, "StudyInstanceUID") == [
        {"StudyInstanceUID": "S1", "PatientID": "P", "NumberOfStudyRelatedInstances": "10"},
        {"StudyInstanceUID": "S2", "PatientID": "P", "NumberOfStudyRelatedInstances": ""},
        {"StudyInstanceUID": "", "PatientID": "P"},  # unusable matches are kept, to be reported
        {"StudyInstanceUID": "", "PatientID": "P"},
    ]


class CannedPacs(PacsSession):
    """A PacsSession whose C-FIND answers come from a table: one match per instance, like qrscp's."""

    def __init__(self, instances: list[dict[str, str]]) -> None:
        super().__init__(peer=None, calling_aet="NIFFLER", mode="move", timeout=1)
        self.instances = instances
        self.finds: list[tuple[str, dict[str, str]]] = []

    def find(
        self, identifiers: Mapping[str, str], return_keys: Sequence[str], level: str = "STUDY"
    ) -> list[dict[str, str]]:
        self.finds.append((level, dict(identifiers)))
        hits = [i for i in self.instances if all(not v or i.get(k) == v for k, v in identifiers.items())]
        return [{k: i.get(k, "") for k in (*return_keys, *identifiers)} for i in hits]


def qrscp_like() -> list[dict[str, str]]:
    """Patient P: 2 studies, 20 instances; study S1 has a CT and an MR series, S2 one CT series."""
    out = []
    for study, series, modality, n in (
        ("S1", "S1.1", "CT", 6),
        ("S1", "S1.2", "MR", 4),
        ("S2", "S2.1", "CT", 10),
    ):
        for k in range(n):
            uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": f"{series}.{k}"}
            out.append({"PatientID": "P", "Modality": modality, **uids})
    return out


def run_once(call: Callable[[], T]) -> T:
    return call()


def test_a_study_row_resolves_to_distinct_studies_not_one_per_instance() -> None:
    pacs = CannedPacs(qrscp_like())
    resolved = resolve(pacs, Query(2, {"PatientID": "P"}), RESOLVE_KEYS, run_once)
    assert [(t.level, t.uid, t.expected) for t in resolved.targets] == [
        ("STUDY", "S1", None),
        ("STUDY", "S2", None),
    ]
    assert (resolved.studies, resolved.series) == (2, None)
    assert pacs.finds == [("STUDY", {"PatientID": "P"})]


def test_a_series_uid_row_is_one_series_level_find_of_any_study() -> None:
    pacs = CannedPacs(qrscp_like())
    resolved = resolve(pacs, Query(2, {"SeriesInstanceUID": "S1.2"}), RESOLVE_KEYS, run_once)
    assert [(t.level, t.uid, t.study_uid) for t in resolved.targets] == [("SERIES", "S1.2", "S1")]
    assert (resolved.studies, resolved.series) == (1, 1)
    assert pacs.finds == [("SERIES", {"StudyInstanceUID": "", "SeriesInstanceUID": "S1.2"})]


def test_a_modality_row_finds_studies_then_series_within_each() -> None:
    pacs = CannedPacs(qrscp_like())
    resolved = resolve(pacs, Query(2, {"PatientID": "P", "Modality": "CT"}), RESOLVE_KEYS, run_once)
    assert [(t.uid, t.study_uid) for t in resolved.targets] == [("S1.1", "S1"), ("S2.1", "S2")]
    assert (resolved.studies, resolved.series) == (2, 2)
    assert pacs.finds == [
        ("STUDY", {"PatientID": "P"}),
        ("SERIES", {"StudyInstanceUID": "S1", "Modality": "CT"}),
        ("SERIES", {"StudyInstanceUID": "S2", "Modality": "CT"}),
    ]


def test_a_series_row_in_a_query_only_mode_describes_the_studies_of_its_series() -> None:
    pacs = CannedPacs(qrscp_like())
    resolved = resolve(pacs, Query(2, {"Modality": "MR"}), CFIND_ONLY_KEYS, run_once, describe_studies=True)
    assert [t.uid for t in resolved.targets] == ["S1.2"]
    assert [m["StudyInstanceUID"] for m in resolved.matches] == ["S1"]
    assert pacs.finds[-1] == ("STUDY", {"StudyInstanceUID": "S1"})


def test_a_target_reads_its_uid_and_count_from_a_match() -> None:
    assert Target.from_match(
        "STUDY", {"StudyInstanceUID": "S", "NumberOfStudyRelatedInstances": "4"}
    ) == Target("STUDY", "S", "S", 4)
    series = Target.from_match(
        "SERIES", {"SeriesInstanceUID": "X", "NumberOfSeriesRelatedInstances": ""}, "S"
    )
    assert series == Target("SERIES", "X", "S", None) and series.key == ("SERIES", "X")


# --- the verdict -----------------------------------------------------------------------------


def test_without_an_expected_count_status_and_sub_operations_decide_but_nothing_is_not_success() -> None:
    assert verify_transfer(Transfer(0x0000, 8, 0, 0, 8), expected=None) is None
    assert "no instance arrived" in (verify_transfer(Transfer(0x0000, 0, 0, 0, 0), expected=None) or "")
    problem = verify_transfer(Transfer(0x0000, 3, 0, 0, 3), 4, "C-GET", "NumberOfSeriesRelatedInstances")
    assert problem == "retrieved 3 instance(s) but C-FIND reported NumberOfSeriesRelatedInstances 4"


def test_a_list_transfer_is_judged_per_target() -> None:
    a, b, c = Target("STUDY", "A", "A", 4), Target("STUDY", "B", "B", None), Target("STUDY", "C", "C", None)
    counts = {a.key: 4, b.key: 2, c.key: 0}
    whole, problem = whole_in_list(Transfer(0x0000, 6, 0, 0, 6), [a, b, c], counts)
    assert (whole, problem) == ([a, b], None)  # C got nothing: it goes alone
    whole, problem = whole_in_list(Transfer(0xB000, 6, 1, 0, 6), [a, b, c], counts)
    assert whole == [a] and problem is not None and "0xB000" in problem  # B is not known to be whole


def test_series_share_a_transfer_only_with_series_of_their_study() -> None:
    s1 = [Target("SERIES", f"1.{k}", "S1") for k in range(3)]
    s2 = [Target("SERIES", "2.0", "S2")]
    studies = [Target("STUDY", f"T{k}", f"T{k}") for k in range(3)]
    assert list_groups([*s1, *s2, *studies], 2) == [s1[:2], studies[:2]]
    assert list_groups([*s1, *s2, *studies], 10) == [s1, studies]


def test_what_arrived_counts_distinct_instances_over_every_transfer_of_a_target() -> None:
    receipts = Receipts()
    series = ("SERIES", "se")
    with receipts.exclusive(series):
        for sop in ("1", "2"):
            receipts.on_stored(stored("st", sop))
    with receipts.exclusive(series):  # a retry re-delivers 2 and brings 3
        for sop in ("2", "3"):
            receipts.on_stored(stored("st", sop))
        assert receipts.count(series) == 2
    assert receipts.arrived(series) == 3 and receipts.deliveries == 4
    receipts.forget(series)
    assert receipts.arrived(series) == 0


def test_the_tally_counts_a_target_settled_twice_once() -> None:
    tally = Tally()
    tally.settle(("STUDY", "A"), 4)
    tally.settle(("STUDY", "B"), 3)
    tally.settle(("STUDY", "B"), 5)  # failed for one row, then retrieved for another
    assert tally.total == 9


def test_a_row_reports_what_arrived_and_no_expected_count_unless_every_target_has_one() -> None:
    targets = [Target("STUDY", "A", "A", 4), Target("STUDY", "B", "B", None)]
    row = Resolved(Query(7, {"PatientID": "P"}), targets)
    outcomes = {targets[0].key: Outcome(4), targets[1].key: Outcome(2, "C-MOVE ended with status 0xB000")}
    detail, errors = row_detail(row, outcomes)
    assert detail == {"line": 7, "studies": 2, "series": None, "expected": None, "received": 6}
    assert errors == ["C-MOVE ended with status 0xB000"]
    counted = Resolved(
        Query(8, {"PatientID": "P"}), [Target("STUDY", "A", "A", 4), Target("STUDY", "C", "C", 0)]
    )
    assert row_detail(counted, {("STUDY", "A"): Outcome(4), ("STUDY", "C"): Outcome(0)})[0]["expected"] == 4


# --- the report -------------------------------------------------------------------------------


def test_a_report_row_is_typed_and_blank_where_nothing_is_known() -> None:
    assert ReportRow.columns() == (
        "line", "status", "level", "query", "studies", "series", "instances_expected",
        "instances_received", "attempts", "error",
    )  # fmt: skip
    entry = Entry("cold.rows", "k", State.FAILED, 2, "1 of 2 stud(ies) not retrieved", {
        "line": 5, "studies": 2, "series": None, "expected": None, "received": 6,
    }, 0.0, 0.0)  # fmt: skip
    row = ReportRow.of(Query(5, {"PatientID": "000123"}), entry)
    assert row == ReportRow(5, "failed", "PATIENT", '{"PatientID": "000123"}', 2, None, None, 6, 2,
                            "1 of 2 stud(ies) not retrieved")  # fmt: skip
    assert row.cells() == ["5", "failed", "PATIENT", '{"PatientID": "000123"}', "2", "", "", "6", "2",
                           "1 of 2 stud(ies) not retrieved"]  # fmt: skip
    assert ReportRow.of(Query(6, {"SeriesInstanceUID": "1.2"}), None).cells() == [
        "6", "not-attempted", "SERIES", '{"SeriesInstanceUID": "1.2"}', "", "", "", "", "0", "",
    ]  # fmt: skip


def test_report_rows_name_invalid_and_duplicate_rows_by_line() -> None:
    items = [Query(2, {"PatientID": "1"}), RowError(3, "blank row"), Query(4, {"PatientID": "1"})]
    rows = [row for row, _ in report_rows(items, lambda key: None)]
    assert [(r.line, r.status, r.error) for r in rows] == [
        (2, "not-attempted", ""), (3, "invalid", "blank row"), (4, "duplicate", "same query as line 2"),
    ]  # fmt: skip


def test_an_error_while_writing_the_report_keeps_the_previous_one_and_leaves_no_part(tmp_path: Path) -> None:
    report, output = tmp_path / "retrieval-report.csv", tmp_path / "cfind-output.csv"
    write_outputs(report, [(ReportRow(2, "done"), None)], output, ("StudyInstanceUID",))
    before = (report.read_bytes(), output.read_bytes())
    assert before[0].decode().splitlines()[1] == "2,done,,,,,,,,"

    def failing() -> Iterator[tuple[ReportRow, Entry | None]]:
        yield ReportRow(2, "failed"), None
        raise OSError(28, "No space left on device")

    for cfind in (output, None):
        with pytest.raises(OSError, match="No space"):
            write_outputs(report, failing(), cfind, ("StudyInstanceUID",))
        assert (report.read_bytes(), output.read_bytes()) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cfind-output.csv", "retrieval-report.csv"]


def test_the_summary_names_distinct_instances_and_series() -> None:
    summary = Summary("move", Path("r.csv"), rows=2, retrieved=2, studies=1, series=2, transfers=1,
                      instances=64, bytes=2_000_000, seconds=2.0)  # fmt: skip
    text = summary.describe()
    assert "1 stud(ies), 2 series in 1 C-MOVE(s), 64 instance(s), 2.0 MB received" in text
    summary.add(failed=1, instances=1)
    assert (summary.failed, summary.instances, summary.ok) == (1, 65, False)


# --- the receiver -----------------------------------------------------------------------------


def test_the_receiver_accepts_the_pacs_and_the_listed_titles_only() -> None:
    assert ColdConfig(SrcAet="PACS@10.0.0.5:104").receiver_calling_aets == ["PACS"]
    both = ColdConfig(SrcAet="PACS@10.0.0.5:104", AllowedCallingAets=["PACS2", "PACS"])
    assert both.receiver_calling_aets == ["PACS", "PACS2"]
    assert ColdConfig(SrcAet="PACS@10.0.0.5:104", AllowedCallingAets=["*"]).receiver_calling_aets is None
    with pytest.raises(ConfigError, match="AllowedCallingAets entry"):
        ColdConfig(AllowedCallingAets=["A\\B"])
    with pytest.raises(ConfigError, match="BindAddress must be an IP address"):
        ColdConfig(BindAddress="pacs.example.org")


def test_the_receiver_listens_where_the_pacs_reaches_us_unless_told() -> None:
    assert listen_address("", AEAddress("PACS", "127.0.0.1", 104)) == "127.0.0.1"
    assert listen_address("", AEAddress("PACS", "localhost", 104)) in ("127.0.0.1", "::1")
    assert listen_address(" 0.0.0.0 ", AEAddress("PACS", "127.0.0.1", 104)) == "0.0.0.0"
    with pytest.raises(ConfigError, match="set BindAddress"):
        listen_address("", AEAddress("PACS", "no-such-host.invalid", 104))
