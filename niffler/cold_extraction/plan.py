"""Query planning: CSV rows -> C-FIND identifiers, as pure functions.

Two CSV forms are read, every cell as text (leading zeros kept, no type
inference):

- **modern**: the header row names the DICOM keywords to match on, any
  number of them, plus ``StudyMonth`` (``YYYYMM``: the whole month);
- **legacy** (upstream's): when the header does not name keywords, the
  columns are picked by ``FirstAttr``/``FirstIndex``... and
  ``NumberOfQueryAttributes``, and the first row is a header.

A row naming a series-level keyword (:data:`SERIES_KEYS`: SeriesInstanceUID,
Modality, SeriesNumber, SeriesDescription, BodyPartExamined...) is a
SERIES-level row: its other keys pick studies and the series keys pick
series within them (:attr:`Query.series_level`).

StudyDate cells are parsed with ``DateFormat`` and sent as ``YYYYMMDD``; a
range ``A-B`` (each side in DateFormat) is sent as a DICOM range; a
StudyMonth is sent as its date range (``20200101-20200131``), one query,
not 31. With ``LongAccession``, accessions longer than 16 characters whose
characters 8-11 (1-based) are a 4-digit year lose characters 8-9 (the
century), as upstream did. A C-FIND wildcard (``*`` or ``?``) or a
backslash in a cell is refused: a hostile or careless cell must not turn
one row into "every study". Bad rows come back as :class:`RowError` with
their line number; the run reports and skips them. A row's line
(:attr:`Query.line`, :attr:`RowError.line`, the report's ``line``) is the
line of the file it starts on, as in an unreadable file's message: a quoted
cell may span lines.

A cell must also be what its attribute's VR can carry in a C-FIND
identifier, checked here so the row is refused by line and column rather
than failing at the PACS: a UI is digits and dots (at most 64); AE, AS, CS,
DS, DT, IS, TM and UR values follow their PS3.5 repertoire and length (a CS
is upper case, a DS a number); a text value (LO, SH, PN, ...) holds only
characters of the PACS query's character set, Latin-1 (ISO_IR 100) without
control characters, as :meth:`~niffler.net.scu.QueryRetrieveSession.find`
declares it when a value is not ASCII. A character outside it would be sent
as ``?``, a wildcard. Text lengths are not checked: a PACS may hold longer
values (an 18-character accession) and match them. Attributes with a binary
VR (US, FL, SQ, OB...) can not be matched on, nor SpecificCharacterSet and
QueryRetrieveLevel, which Niffler sets.

A message about a bad cell names its line (:attr:`RowError.line`), its
column (number and keyword) and the rule it breaks, never the cell's value
nor a library's message that may quote it (``strptime``'s does): a CSV of
rows to retrieve is a list of patients, and these messages go to the log.
"""

from __future__ import annotations

import calendar
import csv
import difflib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.valuerep import validate_value

from niffler.cold_extraction.config import ColdConfig
from niffler.common.errors import InputError

__all__ = [
    "SERIES_KEYS",
    "Query",
    "RowError",
    "in_window",
    "month_range",
    "normalize_accession",
    "parse_date",
    "plan_rows",
    "read_plan",
    "seconds_until_window",
]

STUDY_MONTH = "StudyMonth"
#: Keywords that make a row SERIES-level: the attributes PS3.3 places at the
#: series level (the General Series module, its Performed Procedure Step
#: summary, and the General Equipment module, which describes the equipment
#: of a series). A row naming any of them is queried at SERIES level and
#: retrieves only the matching series; the row's other keys pick the studies.
#: InstitutionName, though in General Equipment, is left out: PACS index it
#: per study (Orthanc does), so it stays a study key.
SERIES_KEYS = frozenset(
    {
        "SeriesInstanceUID",
        "SeriesNumber",
        "Modality",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "ProtocolName",
        "Laterality",
        "OperatorsName",
        "PerformingPhysicianName",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription",
        "Manufacturer",
        "ManufacturerModelName",
        "StationName",
        "DeviceSerialNumber",
        "SoftwareVersions",
    }
)
_WILDCARDS = re.compile(r"[*?\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_YEAR = re.compile(r"^(19|20)\d\d$")
#: Text VRs: any character of the query's character set, Latin-1 (ISO_IR 100) without control characters.
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_LATIN1_TEXT = re.compile(r"[\x20-\x7e\xa0-\xff]*")
#: VRs whose repertoire and length pydicom's validators check, and the rule a message states.
_RULES = {
    "AE": "printable ASCII, at most 16 characters",
    "AS": "3 digits and D, W, M or Y",
    "CS": "upper-case letters, digits, space and underscore, at most 16 characters",
    "DS": "a decimal number, at most 16 characters",
    "DT": "a YYYYMMDDHHMMSS.FFFFFF date-time or a range of them",
    "IS": "an integer, at most 12 characters",
    "TM": "a HHMMSS.FFFFFF time or a range of them",
    "UR": "a URI",
}
_UI = re.compile(r"[0-9.]{1,64}")
#: Attributes that shape the query rather than match: Niffler sets them.
_NOT_KEYS = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel"})


@dataclass(frozen=True)
class Query:
    """One CSV row, planned: the identifiers to match and how to retrieve them."""

    line: int
    identifiers: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """What the row retrieves, for the report.

        SERIES (the series a SERIES-level C-FIND matches, see
        :data:`SERIES_KEYS`), PATIENT (every study of a patient), STUDY (one
        study by its UID), or FIND (the studies a STUDY-level C-FIND matches).
        """
        keys = set(self.identifiers)
        if keys & SERIES_KEYS:
            return "SERIES"
        if keys == {"PatientID"}:
            return "PATIENT"
        if keys == {"PatientID", "StudyInstanceUID"} or keys == {"StudyInstanceUID"}:
            return "STUDY"
        return "FIND"

    @property
    def series_level(self) -> bool:
        """Whether the row names a series-level key, so it retrieves series rather than whole studies."""
        return not SERIES_KEYS.isdisjoint(self.identifiers)

    @property
    def study_identifiers(self) -> dict[str, str]:
        """The row's patient- and study-level keys: what picks its studies."""
        return {k: v for k, v in self.identifiers.items() if k not in SERIES_KEYS}

    @property
    def series_identifiers(self) -> dict[str, str]:
        """The row's series-level keys: what picks series within its studies."""
        return {k: v for k, v in self.identifiers.items() if k in SERIES_KEYS}

    @property
    def key(self) -> str:
        """The ledger key: the identifiers, so a reordered CSV does not fetch a row twice."""
        return json.dumps(self.identifiers, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RowError:
    """A row that can not be planned: its line number and why (no cell values: they may be PHI)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _column(keyword: str, index: int) -> str:
    """How a message names a column: the keyword it is read as and its number (1-based)."""
    return f"{keyword} (column {index + 1})"


def parse_date(text: str, date_format: str = "%Y%m%d") -> str:
    """Return a date cell as ``YYYYMMDD``, or a range ``A-B`` as ``YYYYMMDD-YYYYMMDD``.

    Raise ValueError saying which rule the cell breaks, without quoting it.
    """
    text = text.strip()
    parts = [text]
    if "-" in text and "-" not in datetime(2000, 1, 2).strftime(date_format):
        parts = [p.strip() for p in text.split("-", 1)]
    try:
        days = [datetime.strptime(p, date_format).strftime("%Y%m%d") if p else "" for p in parts]
    except ValueError:  # its message quotes the cell ("time data '...' does not match")
        raise ValueError(f"does not match DateFormat {date_format!r}") from None
    if len(days) == 2:
        if days[0] and days[1] and days[0] > days[1]:
            raise ValueError("is a date range that ends before it starts")
        return f"{days[0]}-{days[1]}"
    return days[0]


def month_range(text: str) -> str:
    """Return a StudyMonth (``YYYYMM`` or ``YYYY-MM``) as the DICOM range of its days.

    Raise ValueError saying which rule the cell breaks, without quoting it.
    """
    cleaned = text.strip().replace("-", "").replace("/", "")
    if not re.fullmatch(r"\d{6}", cleaned):
        raise ValueError("StudyMonth must be YYYYMM or YYYY-MM")
    year, month = int(cleaned[:4]), int(cleaned[4:])
    if not 1 <= month <= 12:
        raise ValueError("StudyMonth must have a month 01-12")
    last = calendar.monthrange(year, month)[1]
    return f"{year:04d}{month:02d}01-{year:04d}{month:02d}{last:02d}"


def normalize_accession(value: str, long_accession: bool) -> str:
    """Apply upstream's LongAccession rule: drop the century of a 4-digit year in a long accession."""
    value = value.strip()
    if long_accession and len(value) > 16 and _YEAR.match(value[7:11]):
        return value[:7] + value[9:]
    return value


def _check_value(keyword: str, index: int, value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{keyword} holds a control character (column {index + 1})")
    if _WILDCARDS.search(value):
        raise ValueError(
            f"{keyword} holds a wildcard or backslash (column {index + 1}); Niffler matches values exactly"
        )
    return value


def _check_vr(keyword: str, index: int, value: str) -> str:
    """Refuse a value a C-FIND identifier can not carry as *keyword* (see the module's docstring).

    Refused here, the row is named by line and column; refused when the
    C-FIND is built, pydicom's exception quotes the value into the log, and
    a character the identifier's character set lacks is sent as ``?``.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        return value
    vr = dictionary_VR(tag)
    column = f"(column {index + 1})"
    if keyword in _NOT_KEYS:
        raise ValueError(f"{keyword} is not an attribute to match on: Niffler sets it {column}")
    if vr in _TEXT_VRS:
        if not _LATIN1_TEXT.fullmatch(value):
            raise ValueError(
                f"{keyword} holds characters outside the PACS query's character set, "
                f"Latin-1 (ISO_IR 100) {column}"
            )
    elif vr == "UI":
        if not _UI.fullmatch(value):
            raise ValueError(f"{keyword} is not a valid UI value: digits and dots, at most 64 {column}")
    elif vr in _RULES:
        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except ValueError:  # its message quotes the value
            raise ValueError(f"{keyword} is not a valid {vr} value: {_RULES[vr]} {column}") from None
    else:  # binary (US, FL, AT...), SQ, OB...: DA values are parsed, not checked here
        raise ValueError(f"{keyword} has VR {vr}: Niffler matches text values only {column}")
    try:
        DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)
    except Exception:  # whatever pydicom raises, its message may quote the value
        raise ValueError(f"{keyword} is not a valid {vr} value {column}") from None
    return value


def _columns_from_header(header: Sequence[str]) -> list[str] | None:
    """The header's keywords; None for the legacy form (no header name is a keyword).

    A header that names keywords and a near miss of one (``AccesionNumber``)
    has a typo, and the legacy form would query the wrong thing: InputError
    names the column and the keyword meant. Names that resemble no keyword
    (upstream's ``EMPI,Acc``) keep the legacy form.
    """
    names = [h.strip().lstrip("\ufeff") for h in header]
    known = [n == STUDY_MONTH or tag_for_keyword(n) is not None for n in names]
    if names and all(ok for ok, n in zip(known, names, strict=True) if n):
        return names
    if any(known):
        for column, (ok, name) in enumerate(zip(known, names, strict=True), 1):
            close = [] if ok or not name else difflib.get_close_matches(
                name, [STUDY_MONTH, *keyword_dict], n=1, cutoff=0.85
            )
            if close:
                raise InputError(
                    f"CSV header, line 1, column {column} {name!r} is not a DICOM keyword or StudyMonth; "
                    f"did you mean {close[0]!r}?"
                )
    return None



def plan_rows(rows: Iterable[Sequence[str]], config: ColdConfig) -> Iterator[Query | RowError]:
    """Plan every data row of a CSV (the first row is the header); yield a Query or a RowError per row.

    Rows are numbered one per line; :func:`read_plan` numbers a file's rows
    by the line each starts on.
    """
    return _plan_records(enumerate(rows, start=1), config)


def _plan_records(
    records: Iterable[tuple[int, Sequence[str]]], config: ColdConfig
) -> Iterator[Query | RowError]:
    """Plan (line, row) records, the first the header; each Query or RowError carries its row's line."""
    iterator = iter(records)
    first = next(iterator, None)
    if first is None:
        return
    columns = _columns_from_header(first[1])
    if columns is None:
        attrs = [config.FirstAttr, config.SecondAttr, config.ThirdAttr][: config.NumberOfQueryAttributes]
        indexes = [config.FirstIndex, config.SecondIndex, config.ThirdIndex][: config.NumberOfQueryAttributes]
        picks = list(zip(attrs, indexes, strict=True))
    else:
        picks = [(name, i) for i, name in enumerate(columns) if name]
    for line, row in iterator:
        if not any(cell.strip() for cell in row):
            yield RowError(line, "blank row")
            continue
        try:
            yield Query(line, _identifiers(row, picks, config))
        except ValueError as exc:
            yield RowError(line, str(exc))


def _identifiers(row: Sequence[str], picks: list[tuple[str, int]], config: ColdConfig) -> dict[str, str]:
    """The row's C-FIND identifiers; a ValueError names the column and the rule, never a value."""
    out: dict[str, str] = {}
    given_by: dict[str, str] = {}  # the column each date attribute came from
    for keyword, index in picks:
        if index >= len(row):
            raise ValueError(
                f"{keyword} is missing: expected in column {index + 1}, the row has {len(row)} column(s)"
            )
        value = _check_value(keyword, index, row[index].strip())
        if not value:
            continue
        if keyword == STUDY_MONTH or keyword == "StudyDate" or dictionary_VR(keyword) == "DA":
            target = "StudyDate" if keyword == STUDY_MONTH else keyword
            column = _column(keyword, index)
            if target in given_by:
                raise ValueError(f"{column} and {given_by[target]} both give {target}: give one")
            given_by[target] = column
            try:  # their messages state the rule, never the cell
                if keyword == STUDY_MONTH:
                    out[target] = month_range(value)
                else:
                    out[target] = parse_date(value, config.DateFormat)
            except ValueError as exc:
                rule = str(exc) if keyword == STUDY_MONTH else f"{keyword} {exc}"
                raise ValueError(f"{rule} (column {index + 1})") from None
        else:
            if keyword == "AccessionNumber":
                value = normalize_accession(value, config.LongAccession)
            out[keyword] = _check_vr(keyword, index, value)
    if not out:
        columns = ", ".join(_column(keyword, index) for keyword, index in picks)
        raise ValueError(f"names no value to match on (empty: {columns})")
    return out


class _Records:
    """A csv reader's records, each with the line of the file it starts on (a quoted cell may span lines).

    :attr:`start` is the line the record being read starts on, for the
    message of a record that can not be read.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.start = 1

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        for row in self.reader:
            yield self.start, row
            self.start = self.reader.line_num + 1


def read_plan(path: Path, config: ColdConfig) -> Iterator[Query | RowError]:
    """Plan a CSV file; raise InputError if it can not be read at all.

    Each row, and the message of a record that can not be read, is named by
    the line of the file it starts on.
    """
    if not path.is_file():
        raise InputError(f"the CSV {path} does not exist or is not a file")
    records: _Records | None = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            records = _Records(csv.reader(handle))
            yield from _plan_records(records, config)
    except OSError as exc:
        raise InputError(f"cannot read the CSV {path}: {exc.strerror}") from None
    except csv.Error as exc:
        # The csv module's messages are its own fixed texts ("line contains NUL",
        # "field larger than field limit (131072)"), never a cell.
        line = records.start if records is not None else 1
        raise InputError(f"{path}: line {line} is not readable CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        # Its str() quotes the offending byte; the reason alone ("invalid start byte") does not.
        line = records.start if records is not None else 1
        raise InputError(f"{path}: not UTF-8 text, at or after line {line} ({exc.reason})") from None


def in_window(now: datetime, start_hour: int, end_hour: int) -> bool:
    """Whether *now* is inside the nightly window [start_hour, end_hour), which may cross midnight."""
    hour = now.hour
    if start_hour == end_hour:
        return True
    if start_hour < end_hour:
        return start_hour <= hour < end_hour
    return hour >= start_hour or hour < end_hour


def seconds_until_window(now: datetime, start_hour: int, end_hour: int) -> float:
    """Seconds from *now* until the window next opens (0 inside it)."""
    if in_window(now, start_hour, end_hour):
        return 0.0
    opens = datetime.combine(now.date(), time(start_hour), tzinfo=now.tzinfo)
    if opens <= now:
        opens += timedelta(days=1)
    return (opens - now).total_seconds()
