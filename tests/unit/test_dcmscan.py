"""The fast element walker agrees with pydicom's reader, or says it is unsure; it never guesses."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID

from niffler.net.scan import plain_values, scan_elements, scan_raw, truncation
from niffler.testing.corpus import CorpusSpec, generate_corpus

WANTED = [Tag(t) for t in (
    0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080060, 0x00100010, 0x00100020,
    0x00100030, 0x0020000D, 0x0020000E, 0x00200013,
)]  # fmt: skip


def dataset_bytes(path: Path) -> tuple[bytes, UID]:
    with open(path, "rb") as handle:
        read_preamble(handle, force=True)
        meta = _read_file_meta_info(handle)
        return handle.read(), UID(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))


def pydicom_values(data: bytes, ts: UID) -> dict[int, object]:
    ds = read_dataset(BytesIO(data), ts.is_implicit_VR, True, specific_tags=list(WANTED))
    return {int(t): ds[t].value for t in WANTED if t in ds}


def little_endian_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    corpus = tmp_path_factory.mktemp("corpus")
    generate_corpus(corpus, CorpusSpec(patients=2))
    # pydicom's shipped test files (the package folder: get_testdata_files would try to download more).
    shipped = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
    return sorted(corpus.rglob("*.dcm")) + shipped


def test_agrees_with_pydicom_on_every_little_endian_test_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    answered = 0
    checked = 0
    for path in little_endian_files(tmp_path_factory):
        try:
            data, ts = dataset_bytes(path)
            if not ts.is_little_endian or ts.is_deflated:
                continue
            expected = pydicom_values(data, ts)
        except Exception:  # files pydicom itself cannot read are not a comparison
            continue
        checked += 1
        scanned = scan_elements(data, ts.is_implicit_VR, WANTED)
        if scanned is None:
            continue
        answered += 1
        got = {int(t): scanned[t].value for t in WANTED if t in scanned}
        assert got == expected, path.name
    assert checked > 50 and answered > 0.8 * checked, (answered, checked)
    print(f"answered {answered} of {checked}")


#: What the Storage SCP reads of every instance with the default FilePath, plus a code string.
HANDOFF = frozenset({0x00080005, 0x00080016, 0x00080018, 0x00080060, 0x00100020, 0x0020000D, 0x0020000E})


def test_plain_values_equal_pydicom_values_whenever_given(tmp_path_factory: pytest.TempPathFactory) -> None:
    answered = checked = 0
    for path in little_endian_files(tmp_path_factory):
        try:
            data, ts = dataset_bytes(path)
            if not ts.is_little_endian or ts.is_deflated:
                continue
            ds = read_dataset(BytesIO(data), ts.is_implicit_VR, True, specific_tags=[Tag(t) for t in HANDOFF])
            expected = {t: ds[t].value for t in HANDOFF if Tag(t) in ds}
        except Exception:  # files pydicom itself cannot read are not a comparison
            continue
        found = scan_raw(data, ts.is_implicit_VR, HANDOFF)
        if found is None:
            continue
        checked += 1
        values = plain_values(found, ts.is_implicit_VR)
        if values is None:
            continue
        answered += 1
        assert values == expected, path.name
        assert all(type(v) is str for v in values.values())
    assert checked > 50 and answered > 0.7 * checked, (answered, checked)


@pytest.mark.parametrize(
    ("charset", "patient_id", "expected"),
    [
        (b"ISO_IR 192", "Zoë 007 ".encode(), "Zoë 007"),
        (b"ISO_IR 100", "Zoë".encode("latin-1") + b" ", "Zoë"),
        (None, b"  007\0", "  007"),
        (b"ISO_IR 192", b"\xff\xfe", None),  # not UTF-8: pydicom's replacement rules
        (b"ISO 2022 IR 87", b"007 ", None),  # escape-sequence character sets: pydicom's
        (b"ISO_IR 192", b"A\\B", None),  # two values: pydicom's MultiValue
    ],
)
def test_plain_values_of_a_patient_id(charset: bytes | None, patient_id: bytes, expected: str | None) -> None:
    found: dict[int, tuple[str | None, bytes]] = {0x00100020: ("LO", patient_id)}
    if charset is not None:
        found[0x00080005] = ("CS", charset)
    values = plain_values(found, implicit=False)
    assert (values and values[0x00100020]) == expected
    if expected is not None:
        elements = {Tag(t): pydicom.dataelem.RawDataElement(Tag(t), vr, len(v), v, 0, False, True)
                    for t, (vr, v) in found.items()}  # fmt: skip
        assert pydicom.Dataset(elements).PatientID == expected


def test_the_generated_corpus_is_always_answered(tmp_path: Path) -> None:
    generate_corpus(tmp_path, CorpusSpec(patients=1))
    for path in tmp_path.rglob("*.dcm"):
        data, ts = dataset_bytes(path)
        scanned = scan_elements(data, ts.is_implicit_VR, WANTED)
        assert scanned is not None and scanned.PatientID == pydicom_values(data, ts)[0x00100020]


def test_truncated_or_garbled_bytes_never_raise_and_never_invent() -> None:
    data, ts = dataset_bytes(Path(str(get_testdata_file("CT_small.dcm"))))
    expected = pydicom_values(data, ts)
    for cut in range(0, 2000, 7):
        scanned = scan_elements(data[:cut], ts.is_implicit_VR, WANTED)
        if scanned is not None:  # only if every wanted tag up to the last was passed
            assert {int(t): scanned[t].value for t in WANTED if t in scanned} == expected
    garbled = bytearray(data)
    garbled[4:6] = b"\x01\x02"  # a VR that is not one
    assert scan_elements(bytes(garbled), False, WANTED) is None


def test_undefined_length_sequences_before_the_wanted_tags_are_skipped() -> None:
    # Item (undefined length) holding one element, then the delimiters, then PatientID.
    element = b"\x08\x00\x50\x11UI\x04\x001.2\x00"  # (0008,1150) ReferencedSOPClassUID
    sequence = (
        b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1140) SQ, undefined length
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + element + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )  # fmt: skip
    patient = b"\x10\x00\x20\x00LO\x06\x00007734"
    after = b"\x20\x00\x0d\x00UI\x04\x001.5\x00"
    scanned = scan_elements(sequence + patient + after, False, [Tag(0x00100020)])
    assert scanned is not None and scanned.PatientID == "007734"
    # A wanted tag inside the sequence's range but at top level only: the nested one is not taken.
    nested = scan_elements(sequence + patient + after, False, [Tag(0x00081150), Tag(0x00100020)])
    assert nested is not None and Tag(0x00081150) not in nested


def _dataset_of(path: str) -> tuple[bytes, Any]:
    raw = Path(path).read_bytes()
    stream = BytesIO(raw)
    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    return raw[stream.tell() :], meta.TransferSyntaxUID


def _shipped_files() -> list[str]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    out = []
    for path in sorted(folder.rglob("*.dcm")):
        try:
            ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        except Exception:
            continue
        if not ts.is_deflated and Path(path).read_bytes()[128:132] == b"DICM":
            out.append(str(path))
    return out


def test_truncation_passes_every_whole_shipped_file_and_flags_the_truncated_ones() -> None:
    flagged = {}
    files = _shipped_files()
    assert len(files) > 60
    for path in files:
        data, ts = _dataset_of(path)
        problem = truncation(data, ts.is_implicit_VR, ts.is_little_endian)
        if problem is not None:
            flagged[Path(path).name] = problem
    assert set(flagged) == {"rtplan_truncated.dcm", "MR_truncated.dcm"}


CUT_FILES = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "rtplan.dcm", "MR_small_bigendian.dcm",
             "UN_sequence.dcm", "SC_rgb_jpeg.dcm"]  # fmt: skip


@pytest.mark.parametrize("name", CUT_FILES)
def test_a_dataset_cut_inside_an_element_is_truncated(name: str) -> None:
    data, ts = _dataset_of(str(get_testdata_file(name, download=False)))
    assert truncation(data, ts.is_implicit_VR, ts.is_little_endian) is None
    for cut in (len(data) - 1, len(data) - 2, 3):  # in the last value, in the first header
        problem = truncation(memoryview(data)[:cut], ts.is_implicit_VR, ts.is_little_endian)
        assert problem is not None, (name, cut)
        assert "byte" in problem or "never closed" in problem
