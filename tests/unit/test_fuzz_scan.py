"""Fuzzing the header scan and the instance writer with generated, then mutated, DICOM datasets.

Datasets are generated with pydicom (random elements of most VRs, text in random character sets,
values that do not decode in their declared character set, private blocks, a sequence sent as
UN, sequences nested up to 50 deep with defined or undefined lengths, pixel data and trailing
padding), encoded Implicit VR LE, Explicit VR LE or Explicit VR BE, then mutated: truncated at
any byte, bytes flipped, lengths set to 0xFFFFFFFE / 0xFFFFFFFF / off by one, VR codes replaced,
junk and stray delimiters inserted.

Properties:

- :func:`scan_raw`, :func:`scan_elements`, :func:`plain_values` and :func:`truncation` return a
  result or None and never raise, whatever the bytes;
- where :func:`scan_raw` answers and pydicom reads the same bytes, they agree on every wanted
  element; where :func:`plain_values` answers, it agrees with pydicom's conversion;
- :func:`truncation` is None for every valid encoding and every prefix of it that ends between
  two top-level elements, and a message (byte offsets, never a value) for every cut inside an
  element;
- :meth:`InstanceWriter.store` never raises, answers 0x0000 or 0xC210 (0xA700 is for a disk
  that fails; on a healthy disk it would mean an unexpected exception or a path the data made
  unwritable), leaves no temp file in ``.niffler-incoming``, stores exactly the bytes received
  inside the storage folder, and stores every valid instance that has its UIDs.

Run: ``.venv/bin/python -m pytest tests/unit/test_fuzz_scan.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, example, given, reject, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from niffler.net.scan import plain_values, raw_dataset, scan_elements, scan_raw, truncation
from niffler.net.writer import (
    INCOMING_DIR,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    InstanceWriter,
    StoredInstance,
    encode_part10_header,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, on values it reads leniently
RUNS: Counter[str] = Counter()
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}

# --- generating valid datasets --------------------------------------------------------------------

CHARSETS = [
    None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "GB18030", "ISO 2022 IR 87",
    "\\ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 100", "ISO_IR 100\\ISO_IR 192", "FOO", "ISO_IR 999",
    "iso_ir 100", "ISO_IR 192 ", "\x1b$B",
]  # fmt: skip
_UID_CHARS = st.sampled_from("0123456789.")
_UID_TEXT = re.compile(r"[\x21-\x5B\x5D-\x7E]{1,64}")
uids = st.one_of(
    st.sampled_from(["1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.826.0.1.3680043.8.498." + "1" * 38]),
    st.text(_UID_CHARS, min_size=1, max_size=64),
    st.sampled_from(["", " ", "1.2.3\\1.2.4", "1.2.3 ", "not a uid", "1.2.\u00e93", " 1.2.3", "1.2.3\t"]),
)
# Any text, including characters no declared character set can encode (pydicom replaces them).
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
short_texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00\\"), max_size=10)
decimal = st.sampled_from(["0", "1", "-1.5", "1e3", "  12 ", "3.14159", "-0", "1024"])

#: Extra top-level elements: keyword -> strategy of a value pydicom can encode for it.
EXTRAS: dict[str, st.SearchStrategy[Any]] = {
    "ImageType": st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "AXIAL", "DERIVED"]), max_size=4),
    "StudyDate": st.sampled_from(["20200101", "", "19991231", "2020"]),
    "StudyTime": st.sampled_from(["120000", "235959.999999", "", "12"]),
    "AccessionNumber": short_texts,
    "InstitutionName": texts,
    "ReferringPhysicianName": texts,
    "StudyDescription": texts,
    "SeriesNumber": st.sampled_from(["1", "42", "-3", ""]),
    "InstanceNumber": st.sampled_from(["1", "7", "2147483647"]),
    "Rows": st.integers(0, 65535),
    "SliceThickness": decimal,
    "PixelSpacing": st.lists(decimal, min_size=2, max_size=2),
    "ImagePositionPatient": st.lists(decimal, min_size=3, max_size=3),
    "AcquisitionMatrix": st.lists(st.integers(0, 65535), min_size=4, max_size=4),
    "RealWorldValueSlope": st.floats(allow_nan=False, allow_infinity=True, width=64),
    "FrameIncrementPointer": st.sampled_from([0x00181063, 0x00185065]),
    "ICCProfile": st.binary(max_size=40),
    "ImageComments": st.text(max_size=300),
    "DerivationDescription": texts,
    "TextValue": st.text(max_size=600),
    "RedPaletteColorLookupTableData": st.binary(max_size=32).map(lambda b: b[: len(b) // 2 * 2]),
    "FrameOfReferenceUID": uids,
    "SamplesPerPixel": st.integers(0, 65535),
    "NumberOfFrames": st.sampled_from(["1", "10", "0"]),
    "ContentDate": st.sampled_from(["20200101", "0"]),
}
#: Sequences: one before the UIDs (so the walk must skip it), one within, one after.
SEQUENCES = [
    "ReferencedSeriesSequence",
    "ReferencedImageSequence",
    "AnatomicRegionSequence",
    "ContentSequence",
]
_UN_SEQUENCE_TAG = 0x00091020  # a private sequence sent as UN: implicit VR inside (PS3.5 6.2.2)
_PLACEHOLDER = "QQRAWQQ"


@dataclass
class Case:
    """A generated dataset, its encoding, where its top-level elements are, and what was done to it."""

    data: bytes
    implicit: bool
    little: bool
    #: (start, end) of each top-level element of the valid encoding.
    spans: list[tuple[int, int]]
    mutations: list[str] = field(default_factory=list)
    valid: bool = True
    has_uids: bool = True
    #: Deepest sequence nesting in the dataset.
    depth: int = 0

    @property
    def transfer_syntax(self) -> str:
        if not self.little:
            return str(ExplicitVRBigEndian)
        return str(ImplicitVRLittleEndian if self.implicit else ExplicitVRLittleEndian)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (
            f"Case(ts={self.transfer_syntax}, valid={self.valid}, mutations={self.mutations}, "
            f"data={self.data!r})"
        )


def _nested(draw: st.DrawFn, depth: int, keyword: str) -> Sequence:
    """A sequence nested *depth* levels, each item with a code and, at random, undefined lengths."""
    item = Dataset()
    item.CodeValue = draw(st.sampled_from(["T-D0050", "X", ""]))
    item.CodeMeaning = draw(texts)
    if depth > 1:
        item.add_new(Tag(keyword), "SQ", _nested(draw, depth - 1, keyword))
        if draw(st.booleans()):
            item[keyword].is_undefined_length = True
    if draw(st.booleans()):
        item.is_undefined_length_sequence_item = True
    items = [item]
    if draw(st.integers(0, 3)) == 0:
        items.append(Dataset())  # an empty item
    return Sequence(items)


def _un_sequence(implicit_items: list[bytes]) -> bytes:
    """A private sequence element sent as UN with undefined length (explicit VR LE)."""
    body = b"".join(
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        for item in implicit_items
    )
    return (
        struct.pack("<HH2sHI", 0x0009, 0x1020, b"UN", 0, 0xFFFFFFFF)
        + body
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def _spans(data: bytes, implicit: bool, little: bool) -> list[tuple[int, int]]:
    """(start, end) of every top-level element, from pydicom's own element walk."""
    fp = BytesIO(data)
    ends = [fp.tell() for _ in data_element_generator(fp, implicit, little)]  # each element is read whole
    return list(zip([0, *ends[:-1]], ends, strict=True))


@st.composite
def cases(draw: st.DrawFn, max_depth: int = 50) -> Case:
    """A valid dataset, encoded: implicit LE, explicit LE or explicit BE."""
    ds = Dataset()
    charset = draw(st.sampled_from(CHARSETS))
    if charset is not None:
        ds.SpecificCharacterSet = charset
    has_uids = True
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if draw(st.integers(0, 19)):
            value = draw(uids)
            setattr(ds, keyword, value)
            # The writer refuses (0xC210) an instance whose SOP UIDs are not one UID of printable
            # ASCII: it has to write them into the file meta header.
            if keyword.startswith("SOP") and not _UID_TEXT.fullmatch(value.rstrip("\0 ").strip()):
                has_uids = False
        elif keyword != "SOPClassUID":
            has_uids = False
    ds.PatientID = draw(st.one_of(texts, st.sampled_from(["../..", "a\\b", "", " 007 "])))
    ds.Modality = draw(st.sampled_from(["CT", "MR", "", "ct", "OT\\SR"]))
    raw_pid = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=12)))
    if raw_pid is not None:  # bytes that may not decode in the declared character set
        ds.PatientName = _PLACEHOLDER + "X" * (len(raw_pid) + len(raw_pid) % 2)
    for keyword in draw(st.lists(st.sampled_from(sorted(EXTRAS)), max_size=8, unique=True)):
        setattr(ds, keyword, draw(EXTRAS[keyword]))
    if draw(st.booleans()):
        block = ds.private_block(0x0011, draw(st.sampled_from(["ACME 1.0", "GEMS_IDEN_01"])), create=True)
        block.add_new(0x10, draw(st.sampled_from(["LO", "UN", "OB", "SH"])), b"PRIVATE1")
    deepest = 0
    for keyword in draw(st.lists(st.sampled_from(SEQUENCES), max_size=2, unique=True)):
        depth = draw(st.one_of(st.integers(1, 4), st.integers(1, max_depth)))
        deepest = max(deepest, depth)
        ds.add_new(Tag(keyword), "SQ", _nested(draw, depth, keyword))
        if draw(st.booleans()):
            ds[keyword].is_undefined_length = True
    if draw(st.booleans()):
        ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
        ds.PixelData = draw(st.binary(min_size=8, max_size=8))
        if draw(st.booleans()):
            ds.add_new(0xFFFCFFFC, "OB", b"\x00" * draw(st.sampled_from([0, 2, 10])))
    implicit, little = draw(st.sampled_from([(True, True), (False, True), (False, False)]))
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    try:
        write_dataset(buffer, ds)
    except Exception:  # pydicom's own encoder fails on some text in some character sets (IndexError)
        reject()
    data = buffer.getvalue()
    if raw_pid is not None:
        placeholder = (_PLACEHOLDER + "X" * (len(raw_pid) + len(raw_pid) % 2)).encode()
        data = data.replace(placeholder, raw_pid + b" " * (len(placeholder) - len(raw_pid)))
    if not implicit and little and draw(st.integers(0, 4)) == 0:
        # Splice a UN sequence (implicit VR inside) in before the first element past group 0009.
        spans = _spans(data, implicit, little)
        at = next((s for s, _ in spans if struct.unpack_from("<H", data, s)[0] > 0x0009), len(data))
        item = struct.pack("<HHI", 0x0008, 0x0100, 4) + b"T-D0"
        data = data[:at] + _un_sequence([item, b""]) + data[at:]
    return Case(data, implicit, little, _spans(data, implicit, little), has_uids=has_uids, depth=deepest)


_LENGTHS = [0xFFFFFFFE, 0xFFFFFFFF, 0xFFFF, 0xFFFE, 0, 1, 7]


@st.composite
def mutated(draw: st.DrawFn) -> Case:
    """A valid case, then one to three mutations: cuts, flips, lengths, VRs, junk, delimiters."""
    case = draw(cases(max_depth=20))
    data = bytearray(case.data)
    order = "<" if case.little else ">"
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "flip", "length", "vr", "insert", "delimiter"]))
        if not data:
            break
        spans = case.spans if not case.mutations else []
        if kind == "cut":
            at = draw(st.integers(0, len(data) - 1))
            del data[at:]
            case.mutations.append(f"cut at {at}")
        elif kind == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
            case.mutations.append(f"flip byte {at}")
        elif kind in ("length", "vr") and spans:
            start, _ = spans[draw(st.integers(0, len(spans) - 1))]
            vr = bytes(data[start + 4 : start + 6])
            long_header = not case.implicit and vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF")
            if kind == "length":
                value = draw(st.sampled_from(_LENGTHS))
                if case.implicit or long_header:
                    struct.pack_into(order + "I", data, start + (4 if case.implicit else 8), value)
                else:
                    struct.pack_into(order + "H", data, start + 6, value & 0xFFFF)
                case.mutations.append(f"length {value:#x} at element {start}")
            elif not case.implicit:
                new = draw(
                    st.sampled_from([b"XX", b"ob", b"\x00\x00", b"UN", b"SQ", b"OB", b"UT", b"LO", b"US"])
                )
                data[start + 4 : start + 6] = new
                case.mutations.append(f"VR {new!r} at element {start}")
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
            case.mutations.append(f"junk at {at}")
        elif kind == "delimiter":
            at = draw(st.sampled_from([s for s, _ in case.spans] + [len(data)]))
            at = min(at, len(data))
            tag = draw(st.sampled_from([0xE000, 0xE00D, 0xE0DD]))
            length = draw(st.sampled_from([0, 0xFFFFFFFF, 4]))
            data[at:at] = struct.pack(order + "HHI", 0xFFFE, tag, length)
            case.mutations.append(f"delimiter {tag:#x} at {at}")
    case.data = bytes(data)
    case.valid = False
    return case


def _wanted(draw_extra: list[str]) -> frozenset[int]:
    tags = {0x00080005, 0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00100020, 0x00080060}
    return frozenset(tags | {int(Tag(k)) for k in draw_extra})


wanted_sets = st.lists(st.sampled_from([*sorted(EXTRAS), "PatientName", "ContentDate"]), max_size=3).map(
    _wanted
)


# --- the oracle: pydicom ---------------------------------------------------------------------------


def _pydicom_values(
    data: bytes, implicit: bool, little: bool, wanted: frozenset[int]
) -> dict[int, Any] | None:
    """{tag: value} of the wanted tags as pydicom reads them (stopping past the last), or None if it can't."""
    last = max(wanted)
    try:
        ds = read_dataset(
            BytesIO(data), implicit, little, stop_when=lambda tag, vr, length: tag > last,
            specific_tags=[Tag(t) for t in wanted],
        )  # fmt: skip
        return {int(t): ds[t].value for t in wanted if t in ds}
    except Exception:
        return None


def _same(a: Any, b: Any, tag: int = 0, strict_uids: bool = True) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if not strict_uids and _is_uid(tag) and isinstance(a, str) and isinstance(b, str):
        # pydicom strips all whitespace around a UID, the scan does not: see test_uid_whitespace_*
        return a.strip() == b.strip()
    return bool(a == b) or repr(a) == repr(b)


def _is_uid(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "UI"
    except KeyError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    """Run as the CLIs do (logsetup.configure_pydicom); tests/unit/conftest.py prints the counts."""
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    pydicom_config.settings.reading_validation_mode = mode


# --- the scan --------------------------------------------------------------------------------------


def _bucket(depth: int) -> str:
    return "0" if not depth else "1-4" if depth <= 4 else "5-20" if depth <= 20 else "21-50"


def _check_scan(
    case: Case, wanted: frozenset[int], strict_uids: bool = False
) -> dict[int, tuple[str | None, bytes]] | None:
    """The never-raise properties of scan_raw / scan_elements / plain_values, and agreement with pydicom."""
    found = scan_raw(case.data, case.implicit, wanted)
    event(f"nesting depth {_bucket(case.depth)}")
    event(f"scan_raw {'answered' if found is not None else 'unsure'}")
    assert found is None or isinstance(found, dict)
    elements = scan_elements(memoryview(case.data), case.implicit, wanted)
    assert (found is None) == (elements is None)
    if found is None:
        return None
    assert set(found) <= wanted
    values = plain_values(found, case.implicit)
    event(f"plain_values {'answered' if values is not None else 'left to pydicom'}")
    assert values is None or all(type(v) is str for v in values.values())
    if not case.little:
        return found  # big endian bytes read as little endian: only "never raises" holds
    expected = _pydicom_values(case.data, case.implicit, True, wanted)
    if expected is None:
        event("pydicom can not read it: no comparison")
        return found
    event("compared with pydicom")
    assert set(found) == set(expected), (
        f"scan found {sorted(map(hex, found))}, pydicom {sorted(map(hex, expected))}"
    )
    scanned = raw_dataset(found, case.implicit)
    for tag, value in expected.items():
        assert _same(scanned[tag].value, value), (
            f"{tag:#010x}: scan {scanned[tag].value!r} != pydicom {value!r}"
        )
        if values is not None:
            assert _same(values[tag], value, tag, strict_uids), (
                f"{tag:#010x}: plain {values[tag]!r} != pydicom {value!r}"
            )
    return found


@settings(max_examples=200, **_SETTINGS)
@given(case=cases(), wanted=wanted_sets)
def test_scan_of_a_valid_dataset_agrees_with_pydicom(case: Case, wanted: frozenset[int]) -> None:
    RUNS["scan: valid datasets"] += 1
    _check_scan(case, wanted)
    assert truncation(case.data, case.implicit, case.little) is None


@settings(max_examples=800, **_SETTINGS)
@given(case=mutated(), wanted=wanted_sets)
def test_scan_of_mutated_bytes_never_raises_and_never_invents(case: Case, wanted: frozenset[int]) -> None:
    RUNS["scan: mutated datasets"] += 1
    _check_scan(case, wanted)
    problem = truncation(case.data, case.implicit, case.little)
    assert problem is None or _offsets_only(problem)


@settings(max_examples=100, **_SETTINGS)
@given(case=cases(max_depth=3), wanted=wanted_sets)
# Found by this test: pydicom strips any whitespace around a UID, plain_values only trailing spaces and NULs:
# StudyInstanceUID b" 1.2.3" (implicit VR LE), then SeriesNumber.
@example(
    case=Case(
        b" \x00\x0d\x00\x06\x00\x00\x00 1.2.3 \x00\x11\x00\x02\x00\x00\x001 ", True, True, [(0, 14), (14, 24)]
    ),
    wanted=frozenset({0x0020000D}),
)
def test_uid_whitespace_plain_values_agree_with_pydicom(case: Case, wanted: frozenset[int]) -> None:
    """Where plain_values answers for a UID, it is the UID pydicom reads (and the writer hands on)."""
    RUNS["scan: UIDs as pydicom reads them"] += 1
    _check_scan(case, wanted, strict_uids=True)


@settings(max_examples=300, **_SETTINGS)
@given(found=st.dictionaries(
    st.one_of(st.sampled_from([0x00080005, 0x00100020, 0x00080060, 0x0020000D, 0x00100010, 0x00280010]),
              st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.one_of(st.none(), st.sampled_from(["UI", "CS", "LO", "SH", "AE", "PN", "US", "XX", "UN"])),
              st.binary(max_size=20)),
    max_size=6,
), implicit=st.booleans())  # fmt: skip
def test_plain_values_of_any_elements_never_raise(
    found: dict[int, tuple[str | None, bytes]], implicit: bool
) -> None:
    RUNS["plain_values: arbitrary elements"] += 1
    values = plain_values(found, implicit)
    assert values is None or set(values) == set(found)


# --- truncation ------------------------------------------------------------------------------------

_MESSAGE = re.compile(
    r"an element header at byte \d+ runs past the end \(\d+ bytes\)"
    r"|a delimiter at byte \d+ closes nothing"
    r"|the value at byte \d+ needs \d+ bytes; -?\d+ remain"
    r"|\d+ undefined-length sequence\(s\) or item\(s\) never closed"
)


def _offsets_only(problem: str) -> bool:
    return _MESSAGE.fullmatch(problem) is not None


@settings(max_examples=300, **_SETTINGS)
@given(case=cases(max_depth=30), data=st.data())
def test_truncation_flags_every_cut_inside_an_element_and_only_those(case: Case, data: st.DataObject) -> None:
    RUNS["truncation: cuts"] += 1
    assert truncation(case.data, case.implicit, case.little) is None
    at = data.draw(st.integers(0, len(case.data)), label="cut")
    prefix = case.data[:at]
    problem = truncation(prefix, case.implicit, case.little)
    event("cut between elements" if at in {start for start, _ in case.spans} else "cut inside an element")
    boundaries = {start for start, _ in case.spans} | {len(case.data)}
    if at in boundaries:
        assert problem is None, f"a cut between elements (at {at}) is whole: {problem}"
    else:
        assert problem is not None, f"the cut at byte {at} of {len(case.data)} is inside an element"
        assert _offsets_only(problem), problem
    if case.spans and case.spans[-1][1] - case.spans[-1][0] > 1:  # and a cut inside the last element
        start, end = case.spans[-1]
        inside_last = data.draw(st.integers(start + 1, end - 1), label="cut inside the last element")
        assert truncation(case.data[:inside_last], case.implicit, case.little) is not None


# --- the writer ------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _store(
    case: Case, template: str, *, deflate: bool = False, labelled: str | None = None
) -> tuple[int, list[str], list[StoredInstance]]:
    """Store *case* in a fresh folder (removed after); return the status, the log, what was handed on."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-store-"))
    try:
        return _store_in(folder, case, template, deflate, labelled)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _store_in(
    folder: Path, case: Case, template: str, deflate: bool, labelled: str | None
) -> tuple[int, list[str], list[StoredInstance]]:
    writer = InstanceWriter(folder / "store", template)
    writer.prepare()
    handler = _Records()
    log = logging.getLogger("niffler.net.writer")
    log.addHandler(handler)
    stored: list[StoredInstance] = []
    raw = case.data
    if deflate:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = compressor.compress(case.data) + compressor.flush()
    ts = str(DeflatedExplicitVRLittleEndian) if deflate else (labelled or case.transfer_syntax)
    try:
        status = writer.store(
            memoryview(raw), ts, "1.2.840.10008.5.1.4.1.1.7", "9.9.9", "FUZZ", stored.append
        )
    finally:
        log.removeHandler(handler)
    leftovers = [p.name for p in (folder / "store" / INCOMING_DIR).iterdir()]
    assert not leftovers, f"temp files left in {INCOMING_DIR}: {leftovers}"
    assert status in (STATUS_SUCCESS, STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES)
    if status == STATUS_SUCCESS:
        (kept,) = stored
        assert kept.path.is_relative_to(folder / "store")
        header = encode_part10_header(kept.sop_class_uid, kept.sop_uid, ts, "FUZZ")
        assert kept.path.read_bytes() == header + raw, "the stored file is not the bytes received"
    else:
        assert not stored
    return status, handler.messages, stored


def _assert_located(status: int, log: list[str]) -> None:
    """A refusal names its reason; 0xA700 on a healthy disk means the data broke the writer."""
    assert status != STATUS_OUT_OF_RESOURCES, f"0xA700 for a dataset, not a disk: {log}"
    if status == STATUS_CANNOT_UNDERSTAND:
        assert any(m.startswith("refused an instance") for m in log), log


TEMPLATES = [
    "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm",
    "{Modality}/{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm",
    "{PatientName}/{InstitutionName}/{SOPInstanceUID}",
]


@settings(max_examples=400, **_SETTINGS)
@given(case=st.one_of(cases(max_depth=20), mutated()), template=st.sampled_from(TEMPLATES),
       deflate=st.integers(0, 9).map(lambda n: n == 0), label=st.integers(0, 9))  # fmt: skip
def test_store_never_raises_and_answers_a_located_status(
    case: Case, template: str, deflate: bool, label: int
) -> None:
    RUNS["writer: store valid and mutated"] += 1
    deflate = deflate and case.little and not case.implicit
    # Now and then the bytes arrive under a compressed syntax's label (explicit VR LE, encapsulated).
    labelled = str(JPEGBaseline8Bit) if label == 0 and case.little and not case.implicit else None
    status, log, stored = _store(case, template, deflate=deflate, labelled=labelled)
    event(f"{'valid' if case.valid else 'mutated'}: status {status:#06x}")
    _assert_located(status, log)
    if case.valid and case.has_uids and labelled is None and case.little:
        expected = _pydicom_values(
            case.data, case.implicit, True, frozenset({0x0020000D, 0x0020000E, 0x00080018})
        )
        if (
            expected is not None
            and all(str(v).strip("\0 ") for v in expected.values())
            and len(expected) == 3
        ):
            assert status == STATUS_SUCCESS, f"a valid instance with its UIDs was refused: {log}"
            assert stored[0].study_uid == str(expected[0x0020000D])


#: A flat layout: the identifiers in one component.
FLAT = "{PatientID}_{StudyInstanceUID}_{SeriesInstanceUID}_{SOPInstanceUID}.dcm"


def _flat_case(pid_length: int, uid_length: int, sop_uid: str | None = None) -> Case:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    uid = ("1.2.826.0.1.3680043.8.498." + "1" * 64)[:uid_length]
    ds.StudyInstanceUID = ds.SeriesInstanceUID = uid
    ds.SOPInstanceUID = uid if sop_uid is None else sop_uid
    ds.PatientID = "P" * pid_length
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    return Case(buffer.getvalue(), False, True, [])


@settings(max_examples=40, **_SETTINGS)
@given(pid_length=st.integers(1, 64), uid_length=st.integers(30, 64))
# Found by this test: a 239-byte file name is legal, but its temp name in .niffler-incoming is 24 bytes
# longer (".<name>.<pid>.<8 hex>.part"), past 255: every such instance is answered 0xA700.
@example(pid_length=40, uid_length=64)
def test_a_valid_instance_is_stored_when_its_file_name_fits(pid_length: int, uid_length: int) -> None:
    """A valid instance whose file name fits in 255 bytes is stored, not refused."""
    RUNS["writer: flat template"] += 1
    name_bytes = pid_length + 3 * uid_length + 3 + 4
    assume(name_bytes <= 255)
    status, log, _ = _store(_flat_case(pid_length, uid_length), FLAT)
    assert status == STATUS_SUCCESS, f"a {name_bytes}-byte file name was not stored: {status:#06x} {log}"


@settings(max_examples=40, **_SETTINGS)
@given(
    sop_uid=st.text(
        st.characters(codec="latin-1", exclude_characters="\\\0"), min_size=1, max_size=64
    ).filter(lambda u: u.strip(" ") and not u.isascii())
)
# Found by this test: a SOPInstanceUID with a byte outside ASCII (legal in no UID, but received) makes
# encode_part10_header raise UnicodeEncodeError: 0xA700 "out of resources" (the sender retries
# forever) instead of 0xC210 "cannot understand".
@example(sop_uid="1.2.\u00e93")
def test_a_non_ascii_uid_is_refused_as_cannot_understand(sop_uid: str) -> None:
    RUNS["writer: non-ASCII SOPInstanceUID"] += 1
    status, log, _ = _store(_flat_case(4, 40, sop_uid=sop_uid), TEMPLATES[0])
    _assert_located(status, log)


def test_a_sequence_nested_too_deep_for_pydicom_is_refused_not_crashed() -> None:
    """1,500 levels before the UIDs: the walk gives up, pydicom's reader recurses too deep: 0xC210."""
    RUNS["writer: 1500-deep sequence"] += 1
    depth = 1500
    item = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "
    opening = (
        struct.pack("<HH2s2xI", 0x0008, 0x2218, b"SQ", 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
    ) * depth
    closing = (struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)) * depth
    tail = _flat_case(4, 20).data
    at = next(
        s for s, _ in _spans(tail, False, True) if struct.unpack_from("<HH", tail, s) > (0x0008, 0x2218)
    )
    case = Case(tail[:at] + opening + closing + tail[at:], False, True, [])
    assert truncation(case.data, False) is None
    assert scan_raw(case.data, False, frozenset({0x0020000D})) is None
    status, log, _ = _store(case, TEMPLATES[0])
    assert status == STATUS_CANNOT_UNDERSTAND, log
    _assert_located(status, log)
