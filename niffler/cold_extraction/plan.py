"""Query planning: CSV rows -> C-FIND identifiers, as pure functions.

Every cell is read as text (leading zeros kept, no type inference), and
the first row that is not blank is always the header. Two forms:

- **modern** (``NumberOfQueryAttributes`` 0, the default): the header names
  the columns to match on, any number of them, by DICOM keyword (any
  attribute with a text, UID, date or time VR: PatientID, AccessionNumber,
  StudyDate, StudyInstanceUID, SeriesInstanceUID, Modality...) or
  ``StudyMonth`` (``YYYYMM``: the whole month). A column with an empty
  header name is ignored. Any other header name is an error naming its line
  and column, with a did-you-mean when it is close to a column Niffler reads;
- **legacy** (upstream's, only when the config asks for it with
  ``NumberOfQueryAttributes`` 1-3, as every upstream config.json does): when
  the header names no keywords, the columns are picked by position with
  ``FirstAttr``/``FirstIndex``..., and the header's names are not read. A
  header that names only keywords is read as the modern form.

A first row that holds values rather than names is refused, never read
as a header (its row would be lost): in the modern form, a row naming no
keyword; in both forms, a row whose unknown names hold a digit, as
identifiers and dates do. A header name that may be a value is never quoted
in a message.

The delimiter is read off the header line: a comma, unless the header line
has none and holds semicolons or tabs, then that (one of them, not both).
A row's cell holding one of the other delimiters outside quotes is refused
(``00012345;20200106`` in a comma-separated file is two values, not one
PatientID): quote the cell if the character belongs to the value. A row
with a value past the header's last column is refused too.

Quoting is read strictly: text after a closing quote is a row error, a
quoted cell that runs over several lines is a row error naming the lines
(a line break is no value's), and a quote never closed (it would swallow
every later line) refuses the whole file, naming the line it opens on.
Blank lines are skipped; a row of empty cells (``,,``) is a "blank row"
error. A UTF-8 byte order mark, CRLF or CR line ends and spaces around
cells are accepted.

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
line of the file it starts on, as in an unreadable file's message.

A cell must also be what its attribute's VR can carry in a C-FIND
identifier, checked here so the row is refused by line and column rather
than failing at the PACS: a UI is digits and dots (at most 64); AE, AS, CS,
DS, DT, IS, TM and UR values follow their PS3.5 repertoire and length (a CS
is upper case, a DS a number); a text value (LO, SH, PN, ...) holds only
characters of the PACS query's character set, Latin-1 (ISO_IR 100) without
control characters, as :meth:`~niffler.net.scu.QueryRetrieveSession.find`
declares it when a value is not ASCII. A character outside it would be sent
as ``?``, a wildcard. Text values are held to their VR's maximum length
(PS3.5 Table 6.2-1: SH 16, LO 64, PN 64 per component group, ST 1024, LT
10240 characters), after LongAccession: a longer value is no valid
identifier, and a 5,000-character PatientID is a broken file, not a query.
Attributes with a binary VR (US, FL, SQ, OB...) can not be matched on, nor
SpecificCharacterSet and QueryRetrieveLevel, which Niffler sets: a header
naming one is refused.

A message about a bad cell names its line (:attr:`RowError.line`), its
column (number and keyword) and the rule it breaks, never the cell's value
nor a library's message that may quote it (``strptime``'s does): a CSV of
rows to retrieve is a list of patients, and these messages go to the log.
"""

from __future__ import annotations

import calendar
import csv
import difflib
import functools
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.valuerep import validate_value

from niffler.cold_extraction.config import ColdConfig
from niffler.common.errors import ConfigError, InputError

log = logging.getLogger(__name__)

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
#: The VRs a CSV cell can be matched on: text, UI, DA and the VRs of :data:`_RULES`.
_MATCHABLE_VRS = _TEXT_VRS | {"UI", "DA"} | frozenset(_RULES)
#: The maximum length of a text VR, in characters (PS3.5 Table 6.2-1; PN: per component group).
_TEXT_MAX = {"SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
#: The delimiters a header line may use, by name: a comma (the default), a semicolon, a tab.
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
_DIGIT = re.compile(r"\d")
#: Header names upstream's users gave their columns, for a message's did-you-mean (folded: see _fold).
_USUAL_NAMES = {
    "mrn": "PatientID",
    "empi": "PatientID",
    "patient": "PatientID",
    "accession": "AccessionNumber",
    "acc": "AccessionNumber",
    "accno": "AccessionNumber",
    "studyuid": "StudyInstanceUID",
    "seriesuid": "SeriesInstanceUID",
    "date": "StudyDate",
    "month": "StudyMonth",
    "description": "StudyDescription",
}
#: Columns whose header name, over a column the legacy form picks as something else, is a mistake.
_USUAL_COLUMNS = frozenset(
    {"PatientID", "AccessionNumber", "StudyDate", "StudyMonth", "StudyInstanceUID", "SeriesInstanceUID"}
)
_HEADER_EXAMPLE = "e.g. PatientID,AccessionNumber"
_COLUMNS_HELP = (
    "Name the columns by DICOM keyword: PatientID, AccessionNumber, StudyDate, StudyMonth, "
    "StudyInstanceUID, SeriesInstanceUID, Modality... (any attribute with a text, UID, date or time VR)."
)
_LEGACY_HINT = (
    "To pick columns by position as upstream did, set NumberOfQueryAttributes (1-3) and "
    "FirstAttr/FirstIndex..."
)


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
        limit = _TEXT_MAX.get(vr)
        longest = max(len(group) for group in value.split("=")) if vr == "PN" else len(value)
        if limit is not None and longest > limit:
            each = " per component group" if vr == "PN" else ""
            raise ValueError(
                f"{keyword} is longer than its VR {vr} allows: at most {limit} characters{each} {column}"
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


# --- the header: which columns are read, and as what ------------------------------------------


def _is_keyword(name: str) -> bool:
    """Whether a header name is a DICOM keyword or StudyMonth (matchable or not)."""
    return name == STUDY_MONTH or (bool(name) and tag_for_keyword(name) is not None)


def _unmatchable(keyword: str) -> str | None:
    """Why a C-FIND can not match a CSV cell on *keyword* (a keyword or StudyMonth); None if it can."""
    if keyword == STUDY_MONTH:
        return None
    if keyword in _NOT_KEYS:
        return "Niffler sets it"
    vr = dictionary_VR(keyword)
    if vr not in _MATCHABLE_VRS:
        return f"its VR is {vr}, and Niffler matches text, UID, date and time values only"
    return None


@functools.cache
def _columns_read() -> tuple[str, ...]:
    """Every header name the modern form reads: StudyMonth and the keywords a cell can be matched on."""
    keywords = (k for k in keyword_dict if k and _unmatchable(k) is None)
    return (STUDY_MONTH, *sorted(keywords))


@functools.cache
def _folded_columns() -> dict[str, str]:
    return {_fold(name): name for name in _columns_read()}


def _fold(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def _suggest(name: str, loose: bool) -> str | None:
    """The column a header name most likely means, or None.

    Strict (``loose=False``, what tells a typo from a legacy header): the same
    letters in another case or spacing (``patient_id``), or a near miss
    (``AccesionNumber``). Loose, for a message's hint: also upstream's usual
    names (``EMPI``, ``Accession``) and more distant misspellings.
    """
    folded = _fold(name)
    if folded in _folded_columns():
        return _folded_columns()[folded]
    if loose and folded in _USUAL_NAMES:
        return _USUAL_NAMES[folded]
    close = difflib.get_close_matches(name, _columns_read(), n=1, cutoff=0.75 if loose else 0.85)
    return close[0] if close else None


@dataclass(frozen=True)
class _Layout:
    """How a file's rows are read: the header's line and width, and the (keyword, 0-based column) picked."""

    line: int
    width: int
    picks: list[tuple[str, int]]


def _layout(line: int, cells: Sequence[str], config: ColdConfig) -> _Layout:
    """Read the header row on *line*; raise InputError (the file) or ConfigError (the legacy keys).

    A header name is quoted in a message only when it can not be a value:
    it holds no digit, and the row names a keyword or the name is close to one.
    """
    names = [cell.strip().lstrip("\ufeff").strip() for cell in cells]
    if not any(names):
        raise InputError(
            f"line {line}, the header, names no column: the first row must name the columns, "
            f"e.g. PatientID,AccessionNumber"
        )
    keywords = [_is_keyword(name) for name in names]
    unknown = any(name and not known for name, known in zip(names, keywords, strict=True))
    if config.NumberOfQueryAttributes and unknown:
        return _legacy_layout(line, names, keywords, config)
    problems = []
    for index, (name, known) in enumerate(zip(names, keywords, strict=True)):
        where = f"line {line}, column {index + 1}"
        if not name:
            continue
        if known:
            why = _unmatchable(name)
            if why:
                problems.append(f"{where} {name!r} can not be matched on: {why}")
            continue
        if _DIGIT.search(name):
            problems.append(f"{where} is not a DICOM keyword or StudyMonth (not quoted: it holds a digit)")
            continue
        hint = _suggest(name, loose=True)
        if hint is None and not any(keywords):
            problems.append(f"{where} is not a DICOM keyword or StudyMonth (not quoted: it may be a value)")
            continue
        mean = f" (did you mean {hint!r}?)" if hint else ""
        problems.append(f"{where} {name!r} is not a DICOM keyword or StudyMonth{mean}")
    if not any(keywords) and any(_DIGIT.search(name) for name in names):
        raise InputError(
            f"line {line} is not a header: it names no DICOM keyword, and a cell holds a digit, as "
            f"values do. The first row must name the columns ({_HEADER_EXAMPLE}): add a header row"
        )
    if problems:
        legacy = "" if any(keywords) else f" {_LEGACY_HINT}"
        raise InputError(f"CSV header: {'; '.join(problems)}. {_COLUMNS_HELP}{legacy}")
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            raise InputError(
                f"CSV header: line {line}, columns {first[name] + 1} and {index + 1} both name {name!r}: "
                f"name each column once"
            )
        if name:
            first[name] = index
    return _Layout(line, len(names), [(name, index) for index, name in enumerate(names) if name])


def _legacy_layout(line: int, names: list[str], keywords: list[bool], config: ColdConfig) -> _Layout:
    """Upstream's form: columns picked by position with FirstAttr/FirstIndex... (NumberOfQueryAttributes)."""
    if any(keywords):  # a header that names keywords and a near miss of one has a typo
        for index, (name, known) in enumerate(zip(names, keywords, strict=True)):
            hint = None if known or not name else _suggest(name, loose=False)
            if hint:
                raise InputError(
                    f"CSV header: line {line}, column {index + 1} {name!r} is not a DICOM keyword or "
                    f"StudyMonth (did you mean {hint!r}?)"
                )
    for index, (name, known) in enumerate(zip(names, keywords, strict=True)):
        if not known and _DIGIT.search(name):
            raise InputError(
                f"line {line} is not a header: column {index + 1} holds a digit, as values do. The first "
                f"row is always the header, in the legacy form (NumberOfQueryAttributes) too: add a header "
                f"row, with names without digits"
            )
    keys = [("FirstAttr", "FirstIndex"), ("SecondAttr", "SecondIndex"), ("ThirdAttr", "ThirdIndex")]
    picks: list[tuple[str, int]] = []
    for attr_key, index_key in keys[: config.NumberOfQueryAttributes]:
        keyword, index = getattr(config, attr_key), getattr(config, index_key)
        if not _is_keyword(keyword):
            hint = _suggest(keyword, loose=True) if keyword else None
            mean = f" (did you mean {hint!r}?)" if hint else ""
            raise ConfigError(f"{attr_key} {keyword!r} is not a DICOM keyword{mean}")
        why = _unmatchable(keyword)
        if why:
            raise ConfigError(f"{attr_key} {keyword!r} can not be matched on: {why}")
        for other, other_index in picks:
            if other == keyword or other_index == index:
                raise ConfigError(
                    f"{attr_key}/{index_key} ({keyword}, {index}) repeats the keyword or column of "
                    f"another of FirstAttr/SecondAttr/ThirdAttr (NumberOfQueryAttributes "
                    f"{config.NumberOfQueryAttributes})"
                )
        if index >= len(names):
            raise InputError(
                f"{index_key} {index} picks column {index + 1}, but the header (line {line}) has "
                f"{len(names)} column(s)"
            )
        picks.append((keyword, index))
    # The header's names are not read, but one naming a usual column, or another pick's keyword, over
    # a column picked as something else is a swapped or misplaced column: refused, not guessed.
    telling = _USUAL_COLUMNS | {keyword for keyword, _ in picks}
    for (attr_key, index_key), (keyword, index) in zip(keys, picks, strict=False):
        if names[index] in telling and names[index] != keyword:
            raise InputError(
                f"CSV header: line {line}, column {index + 1} is {names[index]!r}, but {attr_key} reads it "
                f"as {keyword!r} ({index_key} {index}): correct {attr_key}/{index_key} or the header"
            )
    return _Layout(line, len(names), picks)


# --- records: the rows of the file, with the lines they span and their text -------------------


@dataclass(frozen=True)
class _Record:
    """One CSV record: the lines it spans, its cells, and its text as in the file (None: rows given split).

    :attr:`error` says why its quotes make it no row to plan, phrased without its text.
    """

    line: int
    last_line: int
    cells: list[str]
    raw: str | None = None
    error: str | None = None

    @property
    def blank(self) -> bool:
        """Whether it is a blank line: nothing to plan, nothing lost."""
        if self.error is not None or self.last_line != self.line:
            return False
        return not self.cells or (len(self.cells) == 1 and not self.cells[0].strip())


@dataclass(frozen=True)
class _Scan:
    """What a record's text holds outside the cells' values (0-based columns)."""

    #: (column, character) of each other delimiter outside quotes.
    stray: list[tuple[int, str]]
    #: The column where text follows a quoted cell's closing quote.
    after_quote: int | None
    #: The column of the first quoted cell holding a line break.
    line_break: int | None
    #: The column of a quoted cell still open where the text ends.
    open_quote: int | None


def _scan(raw: str, delimiter: str) -> _Scan:
    """Walk a record's text as the csv module splits it (quote ``"``, spaces after a delimiter skipped)."""
    others = set(_DELIMITERS) - {delimiter}
    stray: list[tuple[int, str]] = []
    after_quote = line_break = None
    column, state = 0, "start"
    for char in raw:
        if state == "start":
            if char == " ":
                continue
            if char == '"':
                state = "quoted"
                continue
            state = "field"
        if state == "field":
            if char == delimiter:
                column, state = column + 1, "start"
            elif char in others:
                stray.append((column, char))
        elif state == "quoted":
            if char == '"':
                state = "closed"
            elif char in "\r\n" and line_break is None:
                line_break = column
        elif char == '"' and state == "closed":  # a doubled quote: part of the value
            state = "quoted"
        elif char == delimiter:
            column, state = column + 1, "start"
        elif not char.isspace():  # after a quoted cell, only spaces may come before the delimiter
            if after_quote is None:
                after_quote = column
            state = "field"
        else:
            state = "spaces"
    return _Scan(stray, after_quote, line_break, column if state == "quoted" else None)


class _Lines:
    """The file's lines as the csv reader takes them; remembers the lines of the record being read."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.count = 0
        self._pending: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        self._pending.append(line)
        return line

    def take(self) -> str:
        """The text read since the last take: the record just read."""
        text, self._pending = "".join(self._pending), []
        return text


def _delimiter(text: str, line: int) -> str:
    """The file's delimiter, read off its header line *text* (see the module's docstring)."""
    outside = re.sub(r'"[^"]*"', "", text)  # a quoted header name may hold anything
    found = [d for d in _DELIMITERS if d != "," and d in outside]
    if "," in outside or not found:
        return ","
    if len(found) > 1:
        raise InputError(
            f"line {line}, the header, holds semicolons and tabs but no comma: Niffler reads comma-, "
            f"semicolon- or tab-separated files, one delimiter per file"
        )
    log.debug("line %d, the header, has no comma but %ss: reading the file as %s-separated",
              line, _DELIMITERS[found[0]], _DELIMITERS[found[0]])  # fmt: skip
    return found[0]


def _records(lines: _Lines, delimiter: str) -> Iterator[_Record]:
    """The file's records with their lines and text; a quoting error is a record with an error.

    Raise InputError for a quote never closed (it would swallow every later
    line) and for what the csv module can not read at all.
    """
    # Not strict: the scan below judges the quotes, and lets spaces follow a closing quote.
    reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True)
    while True:
        start = lines.count + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The csv module's messages are its own fixed texts ("line contains NUL",
            # "field larger than field limit (131072)"), never a cell.
            raise InputError(f"line {start} is not readable CSV ({exc})") from None
        raw = lines.take()
        if '"' not in raw:
            yield _Record(start, lines.count, cells, raw)
            continue
        scan = _scan(raw, delimiter)
        if scan.open_quote is not None:
            raise InputError(
                f"line {start}: the quoted cell in column {scan.open_quote + 1} is never closed: it "
                f"would swallow every line after it, to line {lines.count}, the end of the file; "
                f"fix the quotes"
            )
        error = None
        if scan.after_quote is not None:
            span = f", opened on line {start} and closed on line {lines.count}" if lines.count > start else ""
            error = (
                f"text follows the closing quote of the quoted cell in column {scan.after_quote + 1}{span}: "
                f"a quoted cell ends at the delimiter (check the quotes; the row is not planned)"
            )
        yield _Record(start, lines.count, cells, raw, error)


def _row_problem(record: _Record, layout: _Layout, delimiter: str) -> str | None:
    """Why a record is not a row to plan, before its cells are read; None if it is one."""
    if record.error is not None:
        return record.error
    if record.raw is not None and record.last_line > record.line:
        column = _scan(record.raw, delimiter).line_break
        where = f" in column {column + 1}" if column is not None else ""
        return (
            f"the quoted cell{where} runs over lines {record.line}-{record.last_line}: a line break is a "
            f"control character no value holds (is a quote not closed?); the lines are not planned"
        )
    if not any(cell.strip() for cell in record.cells):
        return "blank row"
    if record.raw is not None and any(c in record.raw for c in _DELIMITERS if c != delimiter):
        for column, char in _scan(record.raw, delimiter).stray:
            if column < len(record.cells) and char in record.cells[column].strip():
                name = _DELIMITERS[char]
                return (
                    f"{_name_column(layout, column)} holds a {name} outside quotes, but the file is "
                    f"{_DELIMITERS[delimiter]}-separated (as its header, line {layout.line}, is): quote "
                    f"the cell if the {name} belongs to the value"
                )
    for index in range(layout.width, len(record.cells)):
        if record.cells[index].strip():
            return (
                f"column {index + 1} holds a value, but the header (line {layout.line}) names "
                f"{layout.width} column(s)"
            )
    return None


def _name_column(layout: _Layout, index: int) -> str:
    """How a message names a row's column: the keyword it is read as and its number, or its number."""
    for keyword, picked in layout.picks:
        if picked == index:
            return _column(keyword, index)
    return f"column {index + 1}"


def plan_rows(rows: Iterable[Sequence[str]], config: ColdConfig) -> Iterator[Query | RowError]:
    """Plan rows already split into cells, numbered one per line, the first the header.

    Yield a Query or a RowError per row that is not blank. The checks of the
    file's text (delimiter, quotes) are :func:`read_plan`'s.
    """
    records = (_Record(line, line, list(row)) for line, row in enumerate(rows, start=1))
    return _plan_records(records, config, ",")


def _plan_records(
    records: Iterable[_Record], config: ColdConfig, delimiter: str
) -> Iterator[Query | RowError]:
    """Plan records, the first that is not blank the header; each Query or RowError carries its row's line."""
    iterator = iter(records)
    header = next((record for record in iterator if not record.blank), None)
    if header is None:
        raise InputError(f"the CSV has no header row: it is empty. {_COLUMNS_HELP}")
    if header.error is not None or header.last_line > header.line:
        raise InputError(f"line {header.line}, the header, is not readable CSV: check its quotes")
    layout = _layout(header.line, header.cells, config)
    for record in iterator:
        if record.blank:
            continue
        problem = _row_problem(record, layout, delimiter)
        if problem is not None:
            yield RowError(record.line, problem)
            continue
        try:
            yield Query(record.line, _identifiers(record.cells, layout.picks, config))
        except ValueError as exc:
            yield RowError(record.line, str(exc))


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
                if len(value) > 16 and len(normalize_accession(value, True)) <= 16:
                    raise ValueError(
                        f"AccessionNumber is longer than its VR SH allows: at most 16 characters "
                        f"(column {index + 1}); LongAccession would shorten it"
                    )
            out[keyword] = _check_vr(keyword, index, value)
    if not out:
        columns = ", ".join(_column(keyword, index) for keyword, index in picks)
        raise ValueError(f"names no value to match on (empty: {columns})")
    return out


def read_plan(path: Path, config: ColdConfig) -> Iterator[Query | RowError]:
    """Plan a CSV file; raise InputError if it can not be read at all (ConfigError: bad legacy keys).

    Each row, and the message of a record that can not be read, is named by
    the line of the file it starts on.
    """
    if not path.is_file():
        raise InputError(f"the CSV {path} does not exist or is not a file")
    ahead: list[str] = []
    lines: _Lines | None = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            # The header line, read ahead for its delimiter, then given back to the reader.
            for text in handle:
                ahead.append(text)
                if text.strip():
                    break
            delimiter = _delimiter(ahead[-1] if ahead else "", len(ahead))
            lines = _Lines(itertools.chain(ahead, handle))
            yield from _plan_records(_records(lines, delimiter), config, delimiter)
    except OSError as exc:
        raise InputError(f"cannot read the CSV {path}: {exc.strerror}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        # Its str() quotes the offending byte; the reason alone ("invalid start byte") does not.
        line = lines.count + 1 if lines is not None else len(ahead) + 1
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
