"""Strict CSV reading: a header is required, columns are known, the delimiter and quotes are checked.

Every refusal names a line (and a column); none quotes a cell, which may be PHI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from niffler.cold_extraction.cli import main
from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.plan import Query, RowError, read_plan
from niffler.common.config import load_config
from niffler.common.errors import ConfigError, InputError

#: Upstream's cold-extraction config.json (Emory-HITI/Niffler, modules/cold-extraction), verbatim keys.
UPSTREAM_CONFIG = {
    "NifflerSystem": "system.json",
    "StorageFolder": "/opt/data/new-study",
    "FilePath": "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm",
    "CsvFile": "csv/empi.csv",
    "NumberOfQueryAttributes": 1,
    "FirstAttr": "PatientID",
    "FirstIndex": 0,
    "SecondAttr": "AccessionNumber",
    "SecondIndex": 1,
    "ThirdAttr": "StudyDate",
    "ThirdIndex": 2,
    "DateFormat": "%Y%m%d",
    "SendEmail": True,
    "YourEmail": "test@test.test",
}


def write(tmp_path: Path, text: str, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def plan(tmp_path: Path, text: str, **config: object) -> list[Query | RowError]:
    return list(read_plan(write(tmp_path, text), ColdConfig(**config)))  # type: ignore[arg-type]


def refusal(tmp_path: Path, text: str, **config: object) -> str:
    with pytest.raises(InputError) as caught:
        plan(tmp_path, text, **config)
    return str(caught.value)


# --- a header row is always required ----------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"NumberOfQueryAttributes": 1}, {"NumberOfQueryAttributes": 2}])
def test_a_first_row_of_values_is_refused_at_line_1_not_eaten_as_a_header(
    tmp_path: Path, config: dict[str, object]
) -> None:
    message = refusal(tmp_path, "00012345,ACC1\n00012346,ACC2\n", **config)
    assert "line 1 is not a header" in message and "add a header row" in message
    for value in ("00012345", "ACC1", "00012346"):
        assert value not in message


def test_a_first_row_of_names_that_may_be_values_is_not_quoted(tmp_path: Path) -> None:
    message = refusal(tmp_path, "SMITH,DOE\n1,2\n")
    assert "line 1, column 1 is not a DICOM keyword" in message and "column 2" in message
    assert "SMITH" not in message and "DOE" not in message


@pytest.mark.parametrize("text", ["", "\n", "\r\n \n\n"])
def test_an_empty_file_is_refused_for_want_of_a_header(tmp_path: Path, text: str) -> None:
    assert "no header row" in refusal(tmp_path, text)


def test_blank_lines_before_the_header_are_skipped_and_lines_keep_their_numbers(tmp_path: Path) -> None:
    assert plan(tmp_path, "\n\r\nPatientID\n000123\n") == [Query(4, {"PatientID": "000123"})]


def test_a_header_alone_plans_nothing(tmp_path: Path) -> None:
    assert plan(tmp_path, "PatientID,AccessionNumber\n") == []


# --- columns: DICOM keywords a C-FIND can match on, and StudyMonth -----------------------------


def test_every_column_form_accepted_before_is_still_read(tmp_path: Path) -> None:
    header = (
        "PatientID,AccessionNumber,StudyInstanceUID,SeriesInstanceUID,Modality,PatientName,"
        "PatientBirthDate,PatientWeight,NumberOfStudyRelatedInstances,StudyTime,,StudyDescription"
    )
    row = "000123,ACC1,1.2.3,1.2.3.4,MR,DOE^JANE,19610203,72.5,12,101500,ignored,Head"
    (query,) = plan(tmp_path, f"{header}\n{row}\n")
    assert query == Query(
        2,
        {
            "PatientID": "000123",
            "AccessionNumber": "ACC1",
            "StudyInstanceUID": "1.2.3",
            "SeriesInstanceUID": "1.2.3.4",
            "Modality": "MR",
            "PatientName": "DOE^JANE",
            "PatientBirthDate": "19610203",
            "PatientWeight": "72.5",
            "NumberOfStudyRelatedInstances": "12",
            "StudyTime": "101500",
            "StudyDescription": "Head",
        },
    )
    assert plan(tmp_path, "StudyMonth\n202002\n") == [Query(2, {"StudyDate": "20200201-20200229"})]
    assert plan(tmp_path, "StudyDate,PatientID\n20200106,1\n") == [
        Query(2, {"StudyDate": "20200106", "PatientID": "1"})
    ]


@pytest.mark.parametrize(
    "header,named,meant",
    [
        ("PatientID,Modalty", "line 1, column 2 'Modalty'", "Modality"),
        ("PatientID,AccesionNumber", "line 1, column 2 'AccesionNumber'", "AccessionNumber"),
        ("patient id,AccessionNumber", "line 1, column 1 'patient id'", "PatientID"),
        ("PatientID,accession_number", "line 1, column 2 'accession_number'", "AccessionNumber"),
        ("StudyInstanceUID,SeriesUID", "line 1, column 2 'SeriesUID'", "SeriesInstanceUID"),
        ("EMPI,Accession", "line 1, column 1 'EMPI'", "PatientID"),
        ("PatientID,Study Month", "line 1, column 2 'Study Month'", "StudyMonth"),
    ],
)
def test_an_unknown_column_is_named_with_the_column_meant(
    tmp_path: Path, header: str, named: str, meant: str
) -> None:
    message = refusal(tmp_path, f"{header}\n000123,ACC1\n")
    assert named in message and f"did you mean {meant!r}?" in message, message
    assert "000123" not in message and "ACC1" not in message


def test_an_unknown_column_far_from_any_keyword_is_named_without_a_guess(tmp_path: Path) -> None:
    message = refusal(tmp_path, "PatientID,Notes\n1,x\n")
    assert "line 1, column 2 'Notes' is not a DICOM keyword or StudyMonth" in message
    assert "did you mean" not in message and "PatientID, AccessionNumber" in message


def test_a_header_with_no_keyword_points_to_the_legacy_keys(tmp_path: Path) -> None:
    assert "NumberOfQueryAttributes" in refusal(tmp_path, "EMPI,Acc\n1,A\n")
    assert "NumberOfQueryAttributes" not in refusal(tmp_path, "PatientID,Acc\n1,A\n")


@pytest.mark.parametrize(
    "keyword,why",
    [("Rows", "VR is US"), ("PixelData", "VR is OB or OW"), ("SpecificCharacterSet", "sets it")],
)
def test_a_keyword_no_c_find_can_match_a_cell_on_is_refused_in_the_header(
    tmp_path: Path, keyword: str, why: str
) -> None:
    message = refusal(tmp_path, f"PatientID,{keyword}\n1,\n")
    assert f"line 1, column 2 {keyword!r} can not be matched on" in message and why in message


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "PatientID,AccessionNumber,PatientID\n1,A,2\n")
    assert "line 1, columns 1 and 3 both name 'PatientID'" in message


# --- the legacy form: only when the config asks for it -----------------------------------------


def test_without_legacy_keys_a_foreign_header_is_an_error_never_a_silent_switch(tmp_path: Path) -> None:
    assert ColdConfig().NumberOfQueryAttributes == 0
    message = refusal(tmp_path, "EMPI,Acc,When\n0009,ACC1,20200105\n")
    assert "'EMPI'" in message and "0009" not in message


def test_an_upstream_config_loads_unchanged_and_reads_its_csv_by_position(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(UPSTREAM_CONFIG))
    (tmp_path / "system.json").write_text(json.dumps({"SrcAet": "PACS@127.0.0.1:104", "QueryAet": "Q:4243"}))
    config = load_config(ColdConfig, [tmp_path / "config.json"])
    # Upstream's own sample (modules/cold-extraction/book1.csv), its header read as names, not keywords.
    table = write(tmp_path, "EMPI,Accession\nAAAA,12345\n,23456\nAAAA,\n")
    assert list(read_plan(table, config)) == [
        Query(2, {"PatientID": "AAAA"}),
        RowError(3, "names no value to match on (empty: PatientID (column 1))"),
        Query(4, {"PatientID": "AAAA"}),
    ]


def test_the_legacy_form_reads_a_header_of_keywords_as_the_modern_form(tmp_path: Path) -> None:
    out = plan(tmp_path, "AccessionNumber,PatientID\nACC1,0009\n", NumberOfQueryAttributes=1)
    assert out == [Query(2, {"AccessionNumber": "ACC1", "PatientID": "0009"})]


def test_the_legacy_form_still_refuses_a_header_typo(tmp_path: Path) -> None:
    message = refusal(tmp_path, "PatientID,AccesionNumber\n1,A\n", NumberOfQueryAttributes=2)
    assert "did you mean 'AccessionNumber'?" in message


def test_the_legacy_form_refuses_a_column_headed_as_another_key(tmp_path: Path) -> None:
    message = refusal(tmp_path, "AccessionNumber,EMPI\nACC1,0009\n", NumberOfQueryAttributes=1)
    assert "column 1 is 'AccessionNumber', but FirstAttr reads it as 'PatientID'" in message


def test_the_legacy_form_refuses_a_column_past_the_header(tmp_path: Path) -> None:
    message = refusal(tmp_path, "EMPI,Acc\n1,A\n", NumberOfQueryAttributes=3)
    assert "ThirdIndex 2 picks column 3, but the header (line 1) has 2 column(s)" in message


@pytest.mark.parametrize(
    "keys,named",
    [
        ({"FirstAttr": "PatientId"},
         "FirstAttr 'PatientId' is not a DICOM keyword (did you mean 'PatientID'?)"),
        ({"FirstAttr": "Rows"}, "FirstAttr 'Rows' can not be matched on"),
        ({"NumberOfQueryAttributes": 2, "SecondAttr": "PatientID"}, "SecondAttr/SecondIndex"),
    ],
)  # fmt: skip
def test_a_legacy_key_that_can_not_be_read_is_a_config_error_naming_it(
    tmp_path: Path, keys: dict[str, object], named: str
) -> None:
    config = {"NumberOfQueryAttributes": 1, **keys}
    with pytest.raises(ConfigError, match=re.escape(named)):
        plan(tmp_path, "EMPI,Acc\n1,A\n", **config)


def test_the_shipped_config_asks_for_no_legacy_form() -> None:
    shipped = Path(__file__).parents[2] / "configs" / "cold_extraction.json"
    assert load_config(ColdConfig, [shipped]).NumberOfQueryAttributes == 0


# --- the delimiter ----------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_separated_file_is_read_as_such(tmp_path: Path, delimiter: str) -> None:
    text = f"PatientID{delimiter}StudyDate\r\n00012345{delimiter}20200106\r\n"
    assert plan(tmp_path, text) == [Query(2, {"PatientID": "00012345", "StudyDate": "20200106"})]


def test_a_semicolon_in_a_comma_separated_row_is_never_one_value(tmp_path: Path) -> None:
    (error,) = plan(tmp_path, "PatientID\n00012345;20200106\n")
    assert error == RowError(
        2,
        "PatientID (column 1) holds a semicolon outside quotes, but the file is comma-separated (as its "
        "header, line 1, is): quote the cell if the semicolon belongs to the value",
    )
    (error,) = plan(tmp_path, "PatientID,AccessionNumber\n1,ACC1;ACC2\n")
    assert isinstance(error, RowError) and "AccessionNumber (column 2) holds a semicolon" in error.message


def test_a_comma_in_a_semicolon_separated_row_is_never_one_value(tmp_path: Path) -> None:
    (error,) = plan(tmp_path, "PatientID;AccessionNumber\n00012345,20200106;A\n")
    assert isinstance(error, RowError) and error.line == 2
    assert "PatientID (column 1) holds a comma outside quotes" in error.message
    assert "semicolon-separated" in error.message and "00012345" not in error.message


def test_a_quoted_delimiter_is_part_of_the_value(tmp_path: Path) -> None:
    assert plan(tmp_path, 'PatientID\n"0001;2345"\n') == [Query(2, {"PatientID": "0001;2345"})]
    assert plan(tmp_path, 'PatientID;PatientName\n1;"DOE, JANE"\n') == [
        Query(2, {"PatientID": "1", "PatientName": "DOE, JANE"})
    ]


def test_a_value_past_the_header_is_refused(tmp_path: Path) -> None:
    out = plan(tmp_path, "PatientID\n00012345,20200106\n00012346,,\n")
    assert out == [
        RowError(2, "column 2 holds a value, but the header (line 1) names 1 column(s)"),
        Query(3, {"PatientID": "00012346"}),  # trailing empty cells are nothing
    ]


def test_a_header_with_semicolons_and_tabs_but_no_comma_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "PatientID;StudyDate\tAccessionNumber\n1;2\t3\n")
    assert "line 1, the header, holds semicolons and tabs but no comma" in message


# --- quotes -----------------------------------------------------------------------------------


def test_a_quote_never_closed_refuses_the_file_at_the_line_it_opens(tmp_path: Path) -> None:
    message = refusal(tmp_path, 'PatientID,AccessionNumber\n1,A\n2,"QZ7MARK\n3,C\n4,D\n')
    assert "line 3: the quoted cell in column 2 is never closed" in message
    assert "to line 5, the end of the file" in message and "QZ7MARK" not in message


def test_a_quoted_cell_over_several_lines_is_a_row_error_naming_them(tmp_path: Path) -> None:
    out = plan(tmp_path, 'PatientID,AccessionNumber\n"1,A\n2",B\n3,C\n')
    assert isinstance(out[0], RowError) and out[0].line == 2
    assert "column 1 runs over lines 2-3" in out[0].message
    assert out[1] == Query(4, {"PatientID": "3", "AccessionNumber": "C"})


def test_text_after_a_closing_quote_is_a_row_error_and_spaces_are_not(tmp_path: Path) -> None:
    out = plan(tmp_path, 'PatientID,AccessionNumber\n"1"x,A\n"2" , "B" \n3, "C"\n')
    assert out == [
        RowError(
            2,
            "text follows the closing quote of the quoted cell in column 1: a quoted cell ends at the "
            "delimiter (check the quotes; the row is not planned)",
        ),
        Query(3, {"PatientID": "2", "AccessionNumber": "B"}),
        Query(4, {"PatientID": "3", "AccessionNumber": "C"}),
    ]


# --- over-long values: the VR's maximum length ------------------------------------------------


@pytest.mark.parametrize(
    "keyword,vr_max,char",
    [
        ("PatientID", 64, "0"),  # LO
        ("StudyDescription", 64, "A"),  # LO
        ("AccessionNumber", 16, "A"),  # SH
        ("StudyID", 16, "7"),  # SH
        ("Modality", 16, "M"),  # CS
        ("StudyInstanceUID", 64, "1"),  # UI
        ("PatientName", 64, "D"),  # PN, per component group
    ],
)
def test_a_value_longer_than_its_vr_allows_is_a_row_error(
    tmp_path: Path, keyword: str, vr_max: int, char: str
) -> None:
    longest, too_long = char * vr_max, char * (vr_max + 1)
    out = plan(tmp_path, f"{keyword}\n{longest}\n{too_long}\n")
    assert out[0] == Query(2, {keyword: longest})
    assert isinstance(out[1], RowError) and out[1].line == 3
    assert keyword in out[1].message and "(column 1)" in out[1].message
    assert str(vr_max) in out[1].message and too_long not in out[1].message


def test_a_5000_character_patient_id_is_refused_by_line_and_column(tmp_path: Path) -> None:
    out = plan(tmp_path, f"AccessionNumber,PatientID\nA,{'9' * 5000}\nB,1\n")
    assert out == [
        RowError(2, "PatientID is longer than its VR LO allows: at most 64 characters (column 2)"),
        Query(3, {"AccessionNumber": "B", "PatientID": "1"}),
    ]


def test_a_person_name_is_held_to_64_characters_per_component_group(tmp_path: Path) -> None:
    name = "=".join(["D" * 64] * 3)
    assert plan(tmp_path, f"PatientName\n{name}\n") == [Query(2, {"PatientName": name})]


def test_a_long_accession_says_long_accession_would_shorten_it(tmp_path: Path) -> None:
    (error,) = plan(tmp_path, "AccessionNumber\nABCDEFG20191234567\n")
    assert isinstance(error, RowError) and "at most 16" in error.message and "LongAccession" in error.message
    assert plan(tmp_path, "AccessionNumber\nABCDEFG20191234567\n", LongAccession=True) == [
        Query(2, {"AccessionNumber": "ABCDEFG191234567"})
    ]


# --- blank lines, BOM, whitespace, line ends --------------------------------------------------


def test_bom_crlf_and_spaces_around_cells_are_read(tmp_path: Path) -> None:
    out = plan(tmp_path, "\ufeffPatientID , AccessionNumber \r\n 000123 ,\tACC1 \r\n")
    assert out == [Query(2, {"PatientID": "000123", "AccessionNumber": "ACC1"})]
    out = plan(tmp_path, "\ufeffEMPI,Acc\r\n000123,ACC1\r\n", NumberOfQueryAttributes=1)
    assert out == [Query(2, {"PatientID": "000123"})]  # the BOM is not part of the first name


def test_old_mac_line_ends_are_read(tmp_path: Path) -> None:
    assert plan(tmp_path, "PatientID\r1\r2\r") == [Query(2, {"PatientID": "1"}), Query(3, {"PatientID": "2"})]


def test_blank_lines_are_skipped_and_a_row_of_empty_cells_is_reported(tmp_path: Path) -> None:
    out = plan(tmp_path, "PatientID,AccessionNumber\n\n1,A\n   \n\r\n,\n2,B\n\n\n")
    assert out == [
        Query(3, {"PatientID": "1", "AccessionNumber": "A"}),
        RowError(6, "blank row"),
        Query(7, {"PatientID": "2", "AccessionNumber": "B"}),
    ]


# --- niffler-cold's exit codes: invalid rows 2, a file or config it can not use 1 ---------------


def cold(tmp_path: Path, text: str, *args: str, **keys: object) -> tuple[int, str]:
    config = tmp_path / "cold.json"
    config.write_text(
        json.dumps({"SrcAet": "PACS@127.0.0.1:1", "StorageFolder": str(tmp_path / "storage"), **keys})
    )
    table = write(tmp_path, text)
    result = CliRunner().invoke(main, ["--config", str(config), "--csv", str(table), *args])
    return result.exit_code, result.output


def test_dry_run_of_valid_rows_exits_0(tmp_path: Path) -> None:
    code, output = cold(tmp_path, "PatientID;StudyDate\n000123;20200106\n", "--dry-run")
    assert code == 0, output
    assert "line 2: C-FIND STUDY PatientID=000123 StudyDate=20200106 -> move" in output


def test_dry_run_with_an_invalid_row_exits_2(tmp_path: Path) -> None:
    code, output = cold(tmp_path, "PatientID\n000123\n00012345;20200106\n", "--dry-run")
    assert code == 2, output
    assert "line 3: invalid: PatientID (column 1) holds a semicolon" in output
    assert "20200106" not in output


@pytest.mark.parametrize(
    "text,said",
    [
        ("00012345,ACC1\n", "line 1 is not a header"),
        ("PatientID,AccesionNumber\n1,A\n", "did you mean 'AccessionNumber'?"),
        ('PatientID\n"00012345\n1\n', "line 2: the quoted cell in column 1 is never closed"),
    ],
)
@pytest.mark.parametrize("args", [(), ("--dry-run",)])
def test_a_csv_that_can_not_be_read_exits_1_before_anything_is_sent(
    tmp_path: Path, text: str, said: str, args: tuple[str, ...]
) -> None:
    code, output = cold(tmp_path, text, *args)
    assert code == 1, output
    assert said in output and "00012345" not in output
    assert not (tmp_path / "storage").exists()


def test_a_legacy_key_that_can_not_be_read_exits_1(tmp_path: Path) -> None:
    code, output = cold(tmp_path, "EMPI\n1\n", "--dry-run", NumberOfQueryAttributes=1, FirstAttr="Rows")
    assert code == 1 and "FirstAttr 'Rows' can not be matched on" in output, output
