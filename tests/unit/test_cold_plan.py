"""Query planning from CSV rows: pure functions, every cell text, bad rows named by line."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.plan import (
    SERIES_KEYS,
    Query,
    RowError,
    in_window,
    month_range,
    normalize_accession,
    parse_date,
    read_plan,
    seconds_until_window,
)
from niffler.common.errors import InputError


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
    assert isinstance(out[1], RowError) and out[1].line == 3 and "month 01-12" in out[1].message
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


# --- messages about bad cells: line and column, never the value -------------------------------

MARK = "ZQ7MARK"  # in every bad cell below; no message may carry it


@pytest.mark.parametrize(
    "text,config,line,keyword,column",
    [
        # A date that does not match DateFormat: strptime's message quotes it ("time data '...'").
        (f"PatientID,StudyDate\n1,{MARK}\n", {}, 2, "StudyDate", 2),
        # ... or leaves a tail it quotes ("unconverted data remains: ...").
        (f"PatientID,StudyDate\n1,20200101\n2,20200102{MARK}\n", {}, 3, "StudyDate", 2),
        # Another DA attribute, with a custom DateFormat.
        ("PatientID,PatientBirthDate\n1,1961/02/03\n", {"DateFormat": "%Y%m%d"}, 2, "PatientBirthDate", 2),
        # A range that ends before it starts: the dates are the cell (and PHI).
        ("PatientID,StudyDate\n1,19990417-19870923\n", {}, 2, "StudyDate", 2),
        # StudyMonth: not YYYYMM, and no such month.
        (f"PatientID,StudyMonth\n1,{MARK}\n", {}, 2, "StudyMonth", 2),
        ("PatientID,StudyMonth\n1,202913\n", {}, 2, "StudyMonth", 2),
        # Both StudyDate and StudyMonth: both columns named.
        (f"StudyDate,PatientID,StudyMonth\n20200101,{MARK},202001\n", {}, 2, "StudyMonth", 3),
        # A wildcard, a backslash, a control character.
        (f"PatientID,AccessionNumber\n{MARK}*,A\n", {}, 2, "PatientID", 1),
        (f"PatientID,AccessionNumber\n1,{MARK}\\2\n", {}, 2, "AccessionNumber", 2),
        (f"PatientID,AccessionNumber\n1,{MARK}\t2\n", {}, 2, "AccessionNumber", 2),
        # LongAccession does not change what is refused, nor what is said.
        (f"PatientID,AccessionNumber\n1,ABCDEFG2019{MARK}?\n", {"LongAccession": True}, 2,
         "AccessionNumber", 2),
        # A short row (legacy columns by index).
        (f"EMPI,Acc\n{MARK}\n", {"NumberOfQueryAttributes": 2, "FirstAttr": "PatientID", "FirstIndex": 0,
                                  "SecondAttr": "AccessionNumber", "SecondIndex": 1}, 2,
         "AccessionNumber", 2),
        # A value pydicom can not hold as its VR: building the C-FIND would raise, quoting it.
        (f"PatientID,PatientWeight\n1,{MARK}\n", {}, 2, "PatientWeight", 2),
        (f"NumberOfStudyRelatedInstances,PatientID\n{MARK},1\n", {}, 2, "NumberOfStudyRelatedInstances", 1),
        # A character the C-FIND's character set (Latin-1) lacks: it would go as "?", a wildcard.
        (f"PatientID,AccessionNumber\n{MARK}\u0100,A\n", {}, 2, "PatientID", 1),
        (f"PatientID,PatientName\n1,{MARK}\u6f22\n", {}, 2, "PatientName", 2),
        # A UID that is not digits and dots, or is longer than 64; a CS that is not upper case.
        (f"PatientID,StudyInstanceUID\n1,1.2.{MARK}\n", {}, 2, "StudyInstanceUID", 2),
        (f"SeriesInstanceUID\n{'1.2' * 30}{MARK}\n", {}, 2, "SeriesInstanceUID", 1),
        (f"PatientID,Modality\n1,mr{MARK}\n", {}, 2, "Modality", 2),
        # A semicolon in a comma-separated file: a stray delimiter, named with the column it is in.
        (f"PatientID\n{MARK};20200106\n", {}, 2, "PatientID", 1),
        # Longer than the VR allows: LO 64 (PatientID), SH 16 (AccessionNumber), PN 64 per group.
        (f"PatientID,AccessionNumber\n{'0' * 5000}{MARK},A\n", {}, 2, "PatientID", 1),
        (f"PatientID,AccessionNumber\n1,AB{MARK}12345678\n", {}, 2, "AccessionNumber", 2),
        (f"PatientID,PatientName\n1,{'X' * 60}{MARK}\n", {}, 2, "PatientName", 2),
        # No value to match on: the marker sits in a column that is not queried.
        (f"PatientID,,AccessionNumber\n,{MARK},\n", {}, 2, "AccessionNumber", 3),
    ],
)  # fmt: skip
def test_a_bad_cell_is_named_by_line_and_column_never_by_value(
    tmp_path: Path, text: str, config: dict[str, object], line: int, keyword: str, column: int
) -> None:
    errors = [e for e in plan(tmp_path, text, **config) if isinstance(e, RowError)]
    assert len(errors) == 1
    error = errors[0]
    assert error.line == line and keyword in error.message and f"column {column}" in error.message, error
    assert str(error) == f"line {line}: {error.message}"
    cells = [c for row in text.splitlines()[1:] for c in row.split(",")]
    for secret in [MARK, *[c for c in cells if len(c) > 3]]:
        assert secret not in error.message and secret not in str(error), (secret, error)


def test_the_rule_broken_is_named(tmp_path: Path) -> None:
    text = f"PatientID,StudyDate,StudyMonth\n1,{MARK},\n2,20200102-20200101,\n3,,{MARK}\n4,,202013\n"
    messages = [e.message for e in plan(tmp_path, text) if isinstance(e, RowError)]
    assert messages == [
        "StudyDate does not match DateFormat '%Y%m%d' (column 2)",
        "StudyDate is a date range that ends before it starts (column 2)",
        "StudyMonth must be YYYYMM or YYYY-MM (column 3)",
        "StudyMonth must have a month 01-12 (column 3)",
    ]
    both = plan(tmp_path, "StudyDate,PatientID,StudyMonth\n20200101,1,202001\n")
    assert both == [
        RowError(2, "StudyMonth (column 3) and StudyDate (column 1) both give StudyDate: give one")
    ]
    assert (
        str(both[0]) == "line 2: StudyMonth (column 3) and StudyDate (column 1) both give StudyDate: give one"
    )
    weight = plan(tmp_path, "PatientID,PatientWeight\n1,72.5\n2,heavy\n")
    assert weight == [
        Query(2, {"PatientID": "1", "PatientWeight": "72.5"}),
        RowError(
            3, "PatientWeight is not a valid DS value: a decimal number, at most 16 characters (column 2)"
        ),
    ]
    empty = plan(tmp_path, "PatientID,,AccessionNumber\n,x,\n")
    assert empty == [
        RowError(2, "names no value to match on (empty: PatientID (column 1), AccessionNumber (column 3))")
    ]


def test_parse_date_and_month_range_never_quote_their_input() -> None:
    for call in (
        lambda: parse_date(f"2020{MARK}"),
        lambda: parse_date(f"20200101{MARK}"),
        lambda: month_range(f"{MARK}"),
    ):
        with pytest.raises(ValueError) as caught:
            call()
        assert MARK not in str(caught.value)
    with pytest.raises(ValueError) as caught:
        parse_date("19990417-19870923")
    assert "1999" not in str(caught.value) and "1987" not in str(caught.value)


def test_an_unreadable_csv_names_the_line_not_the_cell(tmp_path: Path) -> None:
    huge = MARK * 20000  # longer than the csv module's field limit
    with pytest.raises(InputError) as caught:
        plan(tmp_path, f"PatientID,AccessionNumber\n1,A\n2,{huge}\n")
    assert "line 3" in str(caught.value) and "field limit" in str(caught.value)
    assert MARK not in str(caught.value)
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"PatientID\n1\n\xe9{MARK}\xff\n".encode("latin-1"))
    with pytest.raises(InputError) as caught:
        list(read_plan(path, ColdConfig()))
    assert "not UTF-8" in str(caught.value) and MARK not in str(caught.value)
    assert "\\x" not in str(caught.value) and "0xe9" not in str(caught.value)


def test_series_keys_are_series_level_keywords_and_make_a_row_series_level(tmp_path: Path) -> None:
    from pydicom.datadict import tag_for_keyword

    assert all(tag_for_keyword(k) is not None for k in SERIES_KEYS)
    assert {
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
    } <= SERIES_KEYS
    assert (
        not {"PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate", "InstitutionName"} & SERIES_KEYS
    )
    out = plan(
        tmp_path, "PatientID,Modality,SeriesDate\n000123,MR,01/02/2020\n000124,,\n", DateFormat="%m/%d/%Y"
    )
    first, second = out
    assert isinstance(first, Query) and isinstance(second, Query)
    assert first.identifiers == {"PatientID": "000123", "Modality": "MR", "SeriesDate": "20200102"}
    assert first.level == "SERIES" and first.series_level
    assert first.study_identifiers == {"PatientID": "000123"}
    assert first.series_identifiers == {"Modality": "MR", "SeriesDate": "20200102"}
    # A row whose series cells are blank retrieves whole studies.
    assert second.level == "PATIENT" and not second.series_level and second.series_identifiers == {}


def test_a_series_uid_row_has_no_study_keys() -> None:
    query = Query(2, {"SeriesInstanceUID": "1.2.3"})
    assert query.level == "SERIES" and query.study_identifiers == {}
    with_study = Query(3, {"StudyInstanceUID": "1.2", "SeriesNumber": "4"})
    assert with_study.study_identifiers == {"StudyInstanceUID": "1.2"}
    assert with_study.series_identifiers == {"SeriesNumber": "4"}


def test_a_cell_outside_the_query_character_set_is_refused_by_rule(tmp_path: Path) -> None:
    text = "PatientID,PatientName,StudyInstanceUID\n\u0100,,\n1,M\u00fcller^J\u00f6rg,\n2,,1.2.\u0663\n"
    out = plan(tmp_path, text)
    assert out[0] == RowError(
        2,
        "PatientID holds characters outside the PACS query's character set, Latin-1 (ISO_IR 100) (column 1)",
    )
    assert out[1] == Query(3, {"PatientID": "1", "PatientName": "M\u00fcller^J\u00f6rg"})  # Latin-1: kept
    assert out[2] == RowError(
        4, "StudyInstanceUID is not a valid UI value: digits and dots, at most 64 (column 3)"
    )  # an Arabic-Indic digit is a digit to Python, not to DICOM


def test_a_latin1_query_is_sent_declaring_its_character_set() -> None:
    """QueryRetrieveSession.find declares ISO_IR 100 when a value is not ASCII, and only then."""
    import io
    import warnings
    from collections.abc import Iterator
    from typing import Any

    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import decode, encode

    from niffler.net.address import AEAddress
    from niffler.net.scu import QueryRetrieveSession

    sent: list[Dataset] = []

    class Association:
        ident = 0

        def send_c_find(self, query: Dataset, model: object) -> Iterator[tuple[Dataset, None]]:
            sent.append(query)
            status = Dataset()
            status.Status = 0x0000
            yield status, None

    session = QueryRetrieveSession(
        peer=AEAddress.parse("PACS@127.0.0.1:104", "x"), calling_aet="NIFFLER", mode="move", timeout=5
    )
    session._association = lambda: Association()  # type: ignore[assignment,method-assign,return-value]
    session.find({"PatientID": "1", "PatientName": "M\u00fcller"}, ["StudyInstanceUID"])
    session.find({"PatientID": "1"}, ["StudyInstanceUID"])
    latin1, ascii_only = sent
    assert latin1.SpecificCharacterSet == "ISO_IR 100" and "SpecificCharacterSet" not in ascii_only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not encode: replaced with ?" warning
        raw: Any = encode(latin1, True, True)
    assert b"M\xfcller" in raw
    assert str(decode(io.BytesIO(raw), True, True).PatientName) == "M\u00fcller"


def test_a_row_is_named_by_the_line_it_starts_on(tmp_path: Path) -> None:
    """A quoted cell spanning lines: later rows keep the file's line numbers, as an unreadable row does."""
    out = plan(tmp_path, 'PatientID,AccessionNumber\n"1\n2",A\n3,B*\n,\n4,C\n')
    assert [item.line for item in out] == [2, 4, 5, 6]
    assert isinstance(out[0], RowError) and "control character" in out[0].message
    assert "lines 2-3" in out[0].message and "column 1" in out[0].message
    assert isinstance(out[1], RowError) and "wildcard" in out[1].message
    assert out[2] == RowError(5, "blank row") and out[3] == Query(
        6, {"PatientID": "4", "AccessionNumber": "C"}
    )
    with pytest.raises(InputError, match=r"line 4 is not readable CSV \(field larger than field limit"):
        plan(tmp_path, 'PatientID\n"1\n2"\n"3\n' + "4" * 140_000 + '"\n')  # the row starting on line 4


def test_a_header_typo_is_an_error_with_a_suggestion_not_the_legacy_form(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("PatientID,AccesionNumber\n000123,ACC1\n")
    with pytest.raises(InputError, match=r"line 1, column 2 'AccesionNumber' .*mean 'AccessionNumber'"):
        list(read_plan(table, ColdConfig()))
    table.write_text("EMPI,Accession\n000123,ACC1\n")  # no keyword at all: upstream's legacy form...
    (query,) = list(read_plan(table, ColdConfig(NumberOfQueryAttributes=1)))
    assert query.identifiers == {"PatientID": "000123"}
    with pytest.raises(InputError, match=r"column 1 'EMPI' .*mean 'PatientID'"):  # ... if the config asks
        list(read_plan(table, ColdConfig()))
