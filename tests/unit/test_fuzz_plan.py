"""Fuzzing the CSV planner: any CSV file is planned row by row or refused as a whole, with a located error.

Properties, for arbitrary CSV bytes (headers of real keywords and junk, cells of any text, quotes,
delimiters, control characters, very long values, blank lines, invalid UTF-8) and arbitrary configs:

- :func:`read_plan` raises nothing but :class:`~niffler.common.errors.InputError` (a refused file,
  naming a line) or a :class:`~niffler.common.errors.ConfigError` (a legacy key, named);
- every data row of a readable file that is not a blank line gives exactly one Query or RowError,
  in order, named by the line of the file it starts on (a quoted cell may span lines);
- no message (row error or refused file) quotes a cell: every cell carries a marker;
- a planned Query holds only non-empty values without wildcards or control characters, within
  their VR's length, that pydicom can hold as the C-FIND identifier's VR, and which are sent as
  they are: encoded as pynetdicom encodes the C-FIND identifier, each value reads back unchanged,
  none a wildcard;
- a first row of values is never taken for a header; a row split by another delimiter than the
  file's is never planned as one value; a quote never closed refuses the file at its line.

Run: ``.venv/bin/python -m pytest tests/unit/test_fuzz_plan.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value
from pynetdicom.dsutils import decode, encode

from niffler.cold_extraction.config import ColdConfig
from niffler.cold_extraction.plan import Query, RowError, read_plan
from niffler.common.errors import ConfigError, InputError

#: Examples each target ran, printed when the module ends (``-s`` not needed).
RUNS: Counter[str] = Counter()
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.function_scoped_fixture],
}  # fmt: skip

#: Header names Niffler reads as keywords: the usual ones, each date/time VR, numbers, odd VRs.
KEYWORDS = [
    "PatientID", "AccessionNumber", "StudyDate", "StudyMonth", "StudyInstanceUID", "PatientName",
    "PatientBirthDate", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDate", "StudyTime",
    "AcquisitionDateTime", "PatientAge", "PatientWeight", "SliceThickness", "InstanceNumber", "Rows",
    "NumberOfStudyRelatedInstances", "BodyPartExamined", "InstitutionName", "StudyDescription",
    "ReferencedSOPInstanceUID", "PixelData", "ContentSequence", "SpecificCharacterSet", "Laterality",
]  # fmt: skip
DATE_FORMATS = ["%Y%m%d", "%m/%d/%Y", "%Y-%m-%d", "%d.%m.%Y", "%Y%m%d%H%M", "%b %d %Y", "%Q", "%", "x"]

#: Cells without a marker: values the planner must accept or refuse by rule.
PLAIN_CELLS = [
    " ", "  \t ", "0", "000123", "1.2.840.10008.1.1", "MR", "42", "1e400", "nan", "-0", "20200101",
    "20200101-20200131", "202002", "2020-13", "01/31/2020", "20200131-20200101", "-20200101", "20200101-",
]  # fmt: skip
MARKER = re.compile(r"MRK\d{6}Z")
_PLAIN = st.characters(codec="utf-8")  # any Unicode scalar value: what a UTF-8 file can hold
_NASTY = st.sampled_from(list(",;\"'\t\r\n\x00\x01\x1b\x7f\\*?-/ .^=\ufeff\u2028\u00e9\u6f22\U0001f600"))


@st.composite
def markers(draw: st.DrawFn) -> str:
    return f"MRK{draw(st.integers(0, 999_999)):06d}Z"


@st.composite
def cells(draw: st.DrawFn) -> str:
    """A cell: one of the shapes a CSV of rows holds, nearly always carrying a marker."""
    mark = draw(markers())
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return ""
    if kind == 1:
        return draw(st.sampled_from(PLAIN_CELLS))
    if kind == 2:  # a date-like cell with a marker inside
        head = draw(st.sampled_from(["2020", "202001", "20200101", "01/31/", "2020-01-"]))
        return head + mark + draw(st.sampled_from(["", "01", "-20200102", "-"]))
    if kind == 3:  # very long: past the 16/64-character VR limits, sometimes past the csv field limit
        length = draw(st.one_of(st.integers(15, 300), st.integers(131_000, 132_000)))
        return "A" * length + mark
    text = st.text(st.one_of(_PLAIN, _NASTY), max_size=12)
    return draw(text) + mark + draw(text)


@st.composite
def headers(draw: st.DrawFn) -> list[str]:
    """A header row: keywords only (the modern form), or with junk (the legacy form picks by index)."""
    names = draw(st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=6))
    if draw(st.booleans()):
        junk = st.text(st.one_of(_PLAIN, _NASTY), max_size=10).filter(lambda s: "MRK" not in s)
        names += draw(st.lists(junk, min_size=1, max_size=3))
        names = draw(st.permutations(names))
    if draw(st.booleans()):
        names = [draw(st.sampled_from(["", " ", "\ufeff"])) + n + draw(st.sampled_from(["", " "]))
                 for n in names]  # fmt: skip
    return names


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    attrs = st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(["NoSuchKeyword", "", "patientid"]))
    index = st.integers(0, 7)
    return {
        "NumberOfQueryAttributes": draw(st.integers(0, 3)),
        "FirstAttr": draw(attrs), "FirstIndex": draw(index),
        "SecondAttr": draw(attrs), "SecondIndex": draw(index),
        "ThirdAttr": draw(attrs), "ThirdIndex": draw(index),
        "DateFormat": draw(st.sampled_from(DATE_FORMATS)),
        "LongAccession": draw(st.booleans()),
    }  # fmt: skip


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """CSV bytes: quoted by the csv module or raw-joined (broken quoting); blank lines, a BOM, bad bytes."""
    header = draw(headers())
    width = len(header)
    rows = draw(st.lists(st.lists(cells(), min_size=0, max_size=width + 2), min_size=0, max_size=8))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if draw(st.booleans()):
        buffer = io.StringIO()
        quoting: Any = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
        writer = csv.writer(buffer, quoting=quoting, lineterminator=ending)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            if draw(st.integers(0, 5)) == 0:
                buffer.write(ending)  # a blank line
        text = buffer.getvalue()
    else:  # cells as they are: commas, quotes and newlines inside them break the structure
        text = ending.join(",".join(row) for row in [header, *rows]) + draw(st.sampled_from(["", ending]))
    if draw(st.booleans()):
        text = "\ufeff" + text
    data = text.encode("utf-8")
    if data and draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
    return data


def _records(data: bytes) -> list[tuple[int, list[str]]] | None:
    """The records of a comma-separated *data* as the csv module reads them, each with the line it
    starts on, blank lines left out; None if it is not readable CSV."""
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), skipinitialspace=True)
        out, start = [], 1
        for row in reader:
            one_line = reader.line_num == start
            if not (one_line and (not row or (len(row) == 1 and not row[0].strip()))):
                out.append((start, row))
            start = reader.line_num + 1
        return out
    except (UnicodeDecodeError, csv.Error):
        return None


def _comma_separated(data: bytes) -> bool:
    """Whether the planner reads *data* as comma-separated: its header line has a comma, or no ; or tab."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    header = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    header = re.sub(r'"[^"]*"', "", header)  # a quoted header name may hold any delimiter
    return "," in header or not ({";", "\t"} & set(header))


def _plan(tmp_path: Path, data: bytes, config: dict[str, Any]) -> tuple[list[Query | RowError], str | None]:
    path = tmp_path / "rows.csv"
    path.write_bytes(data)
    try:
        cold = ColdConfig(**config)
    except ConfigError:
        return [], None
    try:
        return list(read_plan(path, cold)), None
    except InputError as exc:
        return [], str(exc)
    except ConfigError as exc:
        assert re.match(r"(First|Second|Third)(Attr|Index)", str(exc)), exc  # names the key
        return [], str(exc)


def _assert_no_marker(text: str) -> None:
    leaked = MARKER.search(text)
    assert leaked is None, f"a message quotes a cell: {text[:300]!r}"


@settings(max_examples=300, **_SETTINGS)
@given(data=csv_files(), config=configs())
def test_any_csv_is_planned_row_by_row_or_refused_with_a_located_error(
    tmp_path: Path, data: bytes, config: dict[str, Any]
) -> None:
    RUNS["csv planner"] += 1
    items, refused = _plan(tmp_path, data, config)
    if refused is not None:
        # The whole file is refused: the message says where (a line, or the config key) and never
        # quotes a cell.
        assert re.search(r"line \d+|(First|Second|Third)(Attr|Index)", refused), refused
        _assert_no_marker(refused)
        return
    records = _records(data)
    assert records is not None, "read_plan accepted a file the csv module can not read"
    if _comma_separated(data):
        # One item per data row that is not a blank line, in order, each named by the line it starts on.
        assert [item.line for item in items] == [line for line, _ in records[1:]]
    for item in items:
        assert isinstance(item, (Query, RowError))
        if isinstance(item, RowError):
            assert item.message and str(item).startswith(f"line {item.line}: ")
            _assert_no_marker(str(item))
            continue
        assert item.identifiers, item
        for keyword, value in item.identifiers.items():
            assert value and value == value.strip(), (item.line, keyword)
            assert not re.search(r"[*?\\\x00-\x1f\x7f]", value), (item.line, keyword)
            vr = dictionary_VR(keyword)
            if vr in ("SH", "LO", "CS", "AE", "UI", "IS", "DS"):  # within the VR's repertoire and length
                validate_value(vr, value, pydicom_config.RAISE)


def _planned_queries(tmp_path: Path, data: bytes, config: dict[str, Any]) -> list[Query]:
    items, _ = _plan(tmp_path, data, config)
    return [item for item in items if isinstance(item, Query)]


def _identifier_as_sent(identifiers: dict[str, str]) -> dict[str, Any]:
    """The C-FIND identifier as niffler.net.scu builds it and pynetdicom encodes it, read back."""
    query = Dataset()
    if not all(value.isascii() for value in identifiers.values()):
        query.SpecificCharacterSet = "ISO_IR 100"  # as QueryRetrieveSession.find declares it
    query.QueryRetrieveLevel = "STUDY"
    for keyword, value in identifiers.items():
        setattr(query, keyword, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CLIs silence pydicom's warnings (logsetup)
        raw = encode(query, True, True)
        assert raw is not None, "pynetdicom could not encode the C-FIND identifier"
        back = decode(io.BytesIO(raw), True, True)
    return {keyword: str(back[keyword].value) for keyword in identifiers}


@settings(max_examples=200, **_SETTINGS)
@given(data=csv_files(), config=configs())
# Found by this test: a UID cell with a character outside Latin-1 is planned, then pydicom can not
# encode the C-FIND identifier (UnicodeEncodeError inside pynetdicom's encode, which returns None).
@example(data="StudyInstanceUID\n\u0100\n".encode(), config={})
def test_a_planned_query_becomes_a_c_find_identifier(
    tmp_path: Path, data: bytes, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building and encoding the identifier never raises: the planner refused what pydicom can not hold."""
    RUNS["csv planner: C-FIND identifier built"] += 1
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    for query in _planned_queries(tmp_path, data, config):
        assert set(_identifier_as_sent(query.identifiers)) == set(query.identifiers)


@settings(max_examples=150, **_SETTINGS)
@given(data=csv_files(), config=configs())
# Found by this test: a character outside the C-FIND's character set is sent as "?", a wildcard.
@example(data="PatientID\n\u0100\n".encode(), config={})
def test_a_planned_query_is_never_sent_as_a_wildcard(
    tmp_path: Path, data: bytes, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner refuses wildcard cells; no value may turn into one on its way to the PACS."""
    RUNS["csv planner: no wildcard sent"] += 1
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    for query in _planned_queries(tmp_path, data, config):
        sent = _identifier_as_sent(query.identifiers)
        for keyword, value in query.identifiers.items():
            assert not re.search(r"[*?\\]", sent[keyword]), (
                f"line {query.line}: {keyword} is sent as a C-FIND wildcard"
            )
            assert sent[keyword] == value, f"line {query.line}: {keyword} is not sent as planned"


def _physical_line(data: bytes, record: int) -> int:
    """The line of the file on which data row number *record* (the header is 1) starts, blank lines
    left out."""
    records = _records(data)
    assert records is not None
    return records[record - 1][0]


@settings(max_examples=150, **_SETTINGS)
@given(data=csv_files(), config=configs())
# Found by this test: a quoted cell spanning two lines shifts every later row's line number.
@example(data=b'PatientID,AccessionNumber\n"1\n2",A\n3,B*\n', config={})
def test_a_row_error_names_the_line_of_the_file_it_is_on(
    tmp_path: Path, data: bytes, config: dict[str, Any]
) -> None:
    """A row's error names the file line the row starts on, as a refused file's error does."""
    RUNS["csv planner: physical line"] += 1
    items, refused = _plan(tmp_path, data, config)
    if refused is not None or not _comma_separated(data):
        return
    for index, item in enumerate(items, start=2):
        if isinstance(item, RowError):
            assert item.line == _physical_line(data, index), (
                f"record {index} starts on line {_physical_line(data, index)}, its error says {item.line}"
            )


#: Keywords a header may name in the modern form, with values each accepts.
MATCHABLE = {
    "PatientID": "000123", "AccessionNumber": "ACC1", "StudyDate": "20200106", "SeriesDate": "20200106",
    "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.4", "Modality": "MR", "PatientName": "DOE^J",
}  # fmt: skip
_VALUE_WITH_DIGIT = st.from_regex(r"[A-Z]{0,3}[0-9]{1,10}[A-Z0-9./-]{0,8}", fullmatch=True)


@settings(max_examples=150, **_SETTINGS)
@given(
    rows=st.lists(st.lists(_VALUE_WITH_DIGIT, min_size=1, max_size=4), min_size=1, max_size=5),
    config=configs(),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_a_first_row_of_values_is_refused_not_taken_for_a_header(
    tmp_path: Path, rows: list[list[str]], config: dict[str, Any], ending: str
) -> None:
    """A file without a header row is refused at line 1, whatever the config, and quotes no value."""
    RUNS["csv planner: no header row"] += 1
    data = ending.join(",".join(row) for row in rows).encode() + ending.encode()
    items, refused = _plan(tmp_path, data, config)
    if refused is None and not items:
        return  # the config itself was refused by ColdConfig
    assert refused is not None, f"a header-less file was planned: {items}"
    if "Attr" in refused or "Index" in refused.split(":")[0]:
        return  # a legacy key was refused first
    assert "line 1" in refused, refused
    for cell in {c for row in rows for c in row}:
        assert f"'{cell}'" not in refused, (cell, refused)


@settings(max_examples=150, **_SETTINGS)
@given(
    keywords=st.lists(st.sampled_from(sorted(MATCHABLE)), min_size=1, max_size=4, unique=True),
    delimiter=st.sampled_from([",", ";", "\t"]),
    values=st.lists(st.sampled_from(["00012345", "20200106", "ACC1", "1.2.3"]), min_size=2, max_size=3),
    data=st.data(),
)
def test_a_row_split_by_another_delimiter_is_never_one_value(
    tmp_path: Path, keywords: list[str], delimiter: str, values: list[str], data: st.DataObject
) -> None:
    """``00012345;20200106`` in a comma-separated file (and the like) is a row error, never a value."""
    stray = data.draw(st.sampled_from([d for d in (",", ";", "\t") if d != delimiter]))
    # A one-column header shows no delimiter: the file is comma-separated, and a comma splits the row.
    split = len(keywords) == 1 and stray == ","
    RUNS["csv planner: stray delimiter"] += 1
    good = delimiter.join(MATCHABLE[k] for k in keywords)
    where = data.draw(st.integers(0, len(keywords) - 1))
    cells = [MATCHABLE[k] for k in keywords]
    cells[where] = stray.join(values)
    text = delimiter.join(keywords) + "\n" + good + "\n" + delimiter.join(cells) + "\n" + good + "\n"
    items, refused = _plan(tmp_path, text.encode(), {})
    assert refused is None, refused
    first, broken, last = items
    assert isinstance(first, Query) and isinstance(last, Query) and (first.line, last.line) == (2, 4)
    assert isinstance(broken, RowError) and broken.line == 3, broken
    assert f"column {2 if split else where + 1}" in broken.message, broken
    assert stray.join(values) not in broken.message


@settings(max_examples=150, **_SETTINGS)
@given(
    keywords=st.lists(st.sampled_from(sorted(MATCHABLE)), min_size=1, max_size=4, unique=True),
    rows=st.integers(1, 6),
    data=st.data(),
)
def test_a_quote_never_closed_refuses_the_file_at_its_line(
    tmp_path: Path, keywords: list[str], rows: int, data: st.DataObject
) -> None:
    """A quote opened and never closed would swallow every later row: the file is refused, naming its line."""
    RUNS["csv planner: unterminated quote"] += 1
    lines = [",".join(keywords)] + [",".join(MATCHABLE[k] for k in keywords)] * rows
    row = data.draw(st.integers(1, rows))
    column = data.draw(st.integers(0, len(keywords) - 1))
    cells = lines[row].split(",")
    cells[column] = '"' + cells[column]
    lines[row] = ",".join(cells)
    items, refused = _plan(tmp_path, ("\n".join(lines) + "\n").encode(), {})
    assert refused is not None, items
    assert f"line {row + 1}: the quoted cell in column {column + 1} is never closed" in refused, refused
