"""The SCP's write path: hand-encoded File Meta, header-only parsing, safe failures."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from niffler.common.errors import InputError
from niffler.net.writer import (
    QUARANTINE_DIR,
    InstanceWriter,
    StoredInstance,
    TruncatedDataset,
    encode_part10_header,
)
from niffler.testing.corpus import CorpusSpec, generate_corpus
from niffler.testing.dicomfiles import dataset_bytes


def implicit_vr_bytes(ds: pydicom.Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()


@pytest.mark.parametrize("aet", ["", "MOD", "ODDLEN"])
def test_hand_encoded_file_meta_reads_back_in_pydicom(tmp_path: Path, aet: str) -> None:
    path = tmp_path / "f.dcm"
    path.write_bytes(
        encode_part10_header("1.2.840.10008.5.1.4.1.1.2", "1.2.345", ExplicitVRLittleEndian, aet)
    )
    meta = pydicom.filereader.read_file_meta_info(path)
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == "1.2.345"
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.get("SourceApplicationEntityTitle", "").strip() == aet
    assert meta.FileMetaInformationGroupLength == path.stat().st_size - 132 - 12


def test_written_file_is_exact_and_placed_by_template(tmp_path: Path) -> None:
    (inst,) = generate_corpus(tmp_path / "c", CorpusSpec(1, 1, 1, 1))
    writer = InstanceWriter(tmp_path / "store")
    writer.prepare()
    raw = dataset_bytes(inst.path)
    stored = writer.write(raw, ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.2", inst.sop_uid, "MOD")
    assert (
        stored.path
        == tmp_path / "store" / inst.patient_id / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
    )
    assert dataset_bytes(stored.path) == raw
    assert pydicom.dcmread(stored.path).PatientName == inst.patient_name


def test_header_beyond_the_parse_prefix_is_still_found(tmp_path: Path) -> None:
    (inst,) = generate_corpus(tmp_path / "c", CorpusSpec(1, 1, 1, 1))
    ds = pydicom.dcmread(inst.path)
    ds.add_new(0x00091012, "OB", b"\x01" * 200_000)  # a big private blob before the UIDs
    ds.save_as(inst.path)
    writer = InstanceWriter(tmp_path / "store")
    writer.prepare()
    stored = writer.write(dataset_bytes(inst.path), ExplicitVRLittleEndian, "1.2", "1.3")
    assert (stored.study_uid, stored.series_uid, stored.sop_uid) == (
        inst.study_uid,
        inst.series_uid,
        inst.sop_uid,
    )


def test_implicit_vr_dataset_is_parsed(tmp_path: Path) -> None:
    (inst,) = generate_corpus(tmp_path / "c", CorpusSpec(1, 1, 1, 1))
    ds = pydicom.dcmread(inst.path)
    raw = implicit_vr_bytes(ds)
    writer = InstanceWriter(tmp_path / "store")
    writer.prepare()
    stored = writer.write(raw, ImplicitVRLittleEndian, "1.2", "1.3")
    assert stored.sop_uid == inst.sop_uid and dataset_bytes(stored.path) == raw


def test_an_empty_dataset_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    writer = InstanceWriter(tmp_path / "store")
    writer.prepare()
    with pytest.raises(InputError, match=r"lacks"):
        writer.write(b"", ExplicitVRLittleEndian, "1.2", "1.3")
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "raw",
    [
        b"\x08\x00\x18\x00UI\xff\xff" + b"x" * 10,  # truncated SOPInstanceUID, nothing else
        b"\x00\x01garbage that is not a dataset",
    ],
)
def test_a_truncated_dataset_is_refused_and_kept_only_in_quarantine(tmp_path: Path, raw: bytes) -> None:
    kept: list[StoredInstance] = []
    writer = InstanceWriter(tmp_path / "store", on_quarantined=kept.append)
    writer.prepare()
    assert writer.store(raw, ExplicitVRLittleEndian, "1.2", "1.3", "PEER") == 0xC210
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert [p.parent.name for p in files] == [QUARANTINE_DIR]
    assert [k.path for k in kept] == files and kept[0].sop_uid == "1.3"
    assert files[0].read_bytes().endswith(raw)
    with pytest.raises(TruncatedDataset, match="truncated"):
        writer.write(raw, ExplicitVRLittleEndian, "1.2", "1.3")


def test_leftover_temp_files_are_dropped_on_start(tmp_path: Path) -> None:
    writer = InstanceWriter(tmp_path / "store")
    writer.prepare()
    (writer.incoming / "dead.part").write_bytes(b"half")
    writer.prepare()
    assert list(writer.incoming.iterdir()) == []


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_header_values_equal_pydicom_conversion(implicit: bool) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from niffler.net.writer import _header_values

    def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
        return RawDataElement(Tag(tag), None if implicit else vr, len(value), value, 0, implicit, True)

    elements = [
        raw(0x00080005, "CS", b"ISO_IR 192"),
        raw(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        raw(0x00080018, "UI", b"1.2.3.44 "),
        raw(0x00100020, "LO", "Zoë 007 ".encode()),
        raw(0x0020000D, "UI", b"1.2.3\\4.5\0"),  # two values: pydicom's conversion
        raw(0x0020000E, "UI", b""),
    ]
    header = pydicom.Dataset({e.tag: e for e in elements})
    expected = {int(e.tag): pydicom.Dataset({e.tag: e for e in elements})[e.tag].value for e in elements}
    got = _header_values(header)
    assert got == expected
    assert got[0x00080018] == "1.2.3.44" and got[0x00100020] == "Zoë 007"
