"""Query planning from CSV rows: pure functions, every cell text, bad rows named by line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.plan import (
    Query,
    RowError,
    in_window,
    month_range,
    normalize_accession,
    parse_date,
    read_plan,
    seconds_until_window,
)


def plan(tmp_path: Path, text: str, **config: object) -> list[Query | RowError]:
    path = tmp_path / "rows.csv"
    path.write_text(text, encoding="utf-8")
    return list(read_plan(path, ColdConfig(**config)))  # type: ignore[arg-type]


def test_modern_header_names_keywords_and_keeps_leading_zeros(tmp_path: Path) -> None:
    out = plan(tmp_path, "PatientID,AccessionNumber\n000123,0042\n000124,\n")
    assert out == [
        Query(2, {"PatientID": "000123", "AccessionNumber": "0042"}),
        Query(3, {"PatientID": "000124"}),
    ]
    assert out[0].level == "FIND" and out[1].level == "PATIENT"  # type: ignore[union-attr]


def test_levels() -> None:
    assert Query(1, {"PatientID": "1", "StudyInstanceUID": "1.2"}).level == "STUDY"
    assert Query(1, {"AccessionNumber": "A"}).level == "FIND"
    assert Query(1, {"PatientID": "1", "StudyDate": "20200101"}).level == "FIND"


def test_study_month_is_one_range_query(tmp_path: Path) -> None:
    out = plan(tmp_path, "PatientID,StudyMonth\n7,202002\n8,202013\n")
    assert out[0] == Query(2, {"PatientID": "7", "StudyDate": "20200201-20200229"})
    assert isinstance(out[1], RowError) and out[1].line == 3 and "month 13" in out[1].message
    assert month_range("2021-12") == "20211201-20211231"


def test_dates_use_date_format_and_ranges(tmp_path: Path) -> None:
    out = plan(tmp_path, "PatientID,StudyDate\n1,01/31/2020\n2,01/01/2020-01/31/2020\n3,2020-01-31\n",
               DateFormat="%m/%d/%Y")  # fmt: skip
    assert out[0] == Query(2, {"PatientID": "1", "StudyDate": "20200131"})
    assert out[1] == Query(3, {"PatientID": "2", "StudyDate": "20200101-20200131"})
    assert isinstance(out[2], RowError) and out[2].line == 4 and "DateFormat" in out[2].message
    assert parse_date("2020-01-31", "%Y-%m-%d") == "20200131"
    with pytest.raises(ValueError, match="ends before"):
        parse_date("20200131-20200101")


def test_legacy_columns_by_index(tmp_path: Path) -> None:
    out = plan(tmp_path, "EMPI,Acc,Date\n0009,ACC1,20200105\nshort\n", NumberOfQueryAttributes=3,
               FirstAttr="PatientID", FirstIndex=0, SecondAttr="AccessionNumber", SecondIndex=1,
               ThirdAttr="StudyDate", ThirdIndex=2)  # fmt: skip
    assert out[0] == Query(2, {"PatientID": "0009", "AccessionNumber": "ACC1", "StudyDate": "20200105"})
    assert isinstance(out[1], RowError) and out[1].line == 3 and "column 2" in out[1].message


def test_long_accession() -> None:
    assert normalize_accession("ABCDEFG20191234567", True) == "ABCDEFG191234567"
    assert normalize_accession("ABCDEFG20191234567", False) == "ABCDEFG20191234567"
    assert normalize_accession("SHORT2019", True) == "SHORT2019"
    assert normalize_accession("ABCDEFGXX191234567", True) == "ABCDEFGXX191234567"


def test_hostile_and_blank_cells(tmp_path: Path) -> None:
    out = plan(tmp_path, 'PatientID,AccessionNumber\n*,A\n"1; rm -rf /",../../etc\n,\n1,A?\n')
    assert isinstance(out[0], RowError) and "wildcard" in out[0].message
    assert out[1] == Query(3, {"PatientID": "1; rm -rf /", "AccessionNumber": "../../etc"})  # just data
    assert out[2] == RowError(4, "blank row")
    assert isinstance(out[3], RowError) and out[3].line == 5
    assert all("rm -rf" not in e.message for e in out if isinstance(e, RowError))


def test_resume_key_ignores_row_order() -> None:
    assert (
        Query(2, {"PatientID": "1", "AccessionNumber": "A"}).key
        == Query(9, {"AccessionNumber": "A", "PatientID": "1"}).key
    )


@pytest.mark.parametrize(
    "hour,inside", [(18, False), (19, True), (23, True), (0, True), (6, True), (7, False), (12, False)]
)
def test_nightly_window_crosses_midnight(hour: int, inside: bool) -> None:
    assert in_window(datetime(2020, 1, 1, hour, 30), 19, 7) is inside


def test_seconds_until_window() -> None:
    assert seconds_until_window(datetime(2020, 1, 1, 18, 30), 19, 7) == 1800
    assert seconds_until_window(datetime(2020, 1, 1, 20, 0), 19, 7) == 0
    assert seconds_until_window(datetime(2020, 1, 1, 12, 0), 1, 5) == 13 * 3600
    assert in_window(datetime(2020, 1, 1, 12, 0), 8, 8)
