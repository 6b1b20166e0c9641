"""WADO-RS parts -> files: the File Meta header read from a part's first bytes, the streamed write."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGBaseline8Bit

from niffler.cold_extraction.dicomweb.multipart import PartData, PartEnd, PartStart
from niffler.cold_extraction.dicomweb.parts import DiskRefused, PartWriter, parse_file_meta
from niffler.common.errors import InputError
from niffler.net.writer import INCOMING_DIR, QUARANTINE_DIR, InstanceWriter, StoredInstance
from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.dicomfiles import dataset_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def files(tmp_path: Path) -> list[Instance]:
    return generate_corpus(tmp_path / "corpus", CorpusSpec(patients=1, studies_per_patient=1))


def test_the_file_meta_header_is_read_from_the_first_bytes(files: list[Instance]) -> None:
    data = files[0].path.read_bytes()
    meta = parse_file_meta(data)
    assert meta is not None
    assert data[meta.dataset_offset :] == dataset_bytes(files[0].path)
    assert (meta.transfer_syntax, meta.sop_class_uid, meta.sop_uid) == (
        "1.2.840.10008.1.2.1", CT, files[0].sop_uid,
    )  # fmt: skip
    # Too few bytes yet: wait for more, at every length short of the whole header.
    assert all(parse_file_meta(data[:n]) is None for n in range(meta.dataset_offset))
    with pytest.raises(InputError, match="no DICM prefix"):
        parse_file_meta(b"\0" * 128 + b"NOPE" + data[132:])


def test_the_file_meta_header_needs_no_group_length(files: list[Instance]) -> None:
    data = files[0].path.read_bytes()
    without = data[:132] + data[132 + 12 :]  # (0002,0000) UL is 12 bytes
    meta = parse_file_meta(without)
    assert meta is not None and without[meta.dataset_offset :] == dataset_bytes(files[0].path)


def events_of(parts: list[tuple[dict[str, str], bytes]], piece: int = 100) -> list[Any]:
    events: list[Any] = []
    for headers, data in parts:
        events.append(PartStart(headers))
        events += [PartData(data[i : i + piece]) for i in range(0, len(data), piece)]
        events.append(PartEnd())
    return events


DICOM = {"content-type": "application/dicom"}


def part_writer(storage: Path, stored: list[StoredInstance], **options: Any) -> PartWriter:
    writer = InstanceWriter(storage)
    writer.prepare()
    return PartWriter(writer, on_stored=stored.append, on_failed=lambda e: None, **options)


def test_parts_land_where_and_as_a_c_store_would(tmp_path: Path, files: list[Instance]) -> None:
    stored: list[StoredInstance] = []
    parts = part_writer(tmp_path / "web", stored)
    parts.handle(events_of([(DICOM, f.path.read_bytes()) for f in files]))
    reference = InstanceWriter(tmp_path / "dimse")
    reference.prepare()
    for inst, got in zip(files, stored, strict=True):
        want = reference.write(dataset_bytes(inst.path), "1.2.840.10008.1.2.1", CT, inst.sop_uid)
        assert got.path.relative_to(tmp_path / "web") == want.path.relative_to(tmp_path / "dimse")
        assert got.path.read_bytes() == want.path.read_bytes()
        assert (got.study_uid, got.sop_uid, got.size) == (inst.study_uid, inst.sop_uid, want.size)
    assert (parts.stored, parts.failed) == (len(files), 0)
    assert not list((tmp_path / "web" / INCOMING_DIR).iterdir())


def test_parts_that_are_not_whole_dicom_are_refused_and_the_rest_stored(
    tmp_path: Path, files: list[Instance]
) -> None:
    data = [f.path.read_bytes() for f in files[:4]]
    truncated = data[3][:-40]
    stored: list[StoredInstance] = []
    parts = part_writer(tmp_path, stored)
    parts.handle(
        events_of([
            ({"content-type": "application/dicom+json"}, b"{}"),
            ({**DICOM, "content-length": str(len(data[1]) + 1)}, data[1]),  # shorter than it says
            (DICOM, b"not a DICOM file at all, " * 10),
            (DICOM, data[0]),
            (DICOM, truncated),
        ])
    )  # fmt: skip
    assert (parts.stored, parts.failed) == (1, 4)
    assert [s.sop_uid for s in stored] == [files[0].sop_uid]
    [kept] = (tmp_path / QUARANTINE_DIR).iterdir()  # the truncated one, kept for inspection
    assert dataset_bytes(kept) == dataset_bytes(files[3].path)[:-40]
    assert not list((tmp_path / INCOMING_DIR).iterdir())


@pytest.mark.parametrize("never_lossy", [True, False])
def test_never_lossy_refuses_a_lossy_part(tmp_path: Path, files: list[Instance], never_lossy: bool) -> None:
    lossy = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False))
    assert pydicom.dcmread(lossy).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    stored: list[StoredInstance] = []
    parts = part_writer(tmp_path / "s", stored, refuse_lossy=never_lossy)
    parts.handle(events_of([(DICOM, lossy.read_bytes()), (DICOM, files[1].path.read_bytes())]))
    assert (parts.stored, parts.failed) == ((1, 1) if never_lossy else (2, 0))


def test_a_full_disk_stops_the_parts_and_leaves_no_temp_file(
    tmp_path: Path, files: list[Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[StoredInstance] = []
    failures: list[OSError] = []
    writer = InstanceWriter(tmp_path)
    writer.prepare()
    parts = PartWriter(writer, on_stored=stored.append, on_failed=failures.append)
    written = {"bytes": 0}
    real_write = type(writer.stream("1.2.840.10008.1.2.1", CT, "1.2.3")).write

    def fill_up(self: Any, data: Any) -> None:
        written["bytes"] += len(data)
        if written["bytes"] > 3000:
            self.discard()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    for leftover in (tmp_path / INCOMING_DIR).iterdir():
        leftover.unlink()
    monkeypatch.setattr("niffler.net.writer.InstanceStream.write", fill_up)
    with pytest.raises(DiskRefused):
        parts.handle(events_of([(DICOM, f.path.read_bytes()) for f in files]))
    assert len(stored) == 1 and [f.errno for f in failures] == [errno.ENOSPC]
    parts.abort()
    assert not list((tmp_path / INCOMING_DIR).iterdir())


def test_a_streamed_instance_naming_other_uids_than_announced_is_written_by_its_own(
    tmp_path: Path, files: list[Instance]
) -> None:
    writer = InstanceWriter(tmp_path)
    writer.prepare()
    stream = writer.stream("1.2.840.10008.1.2.1", "1.2.3", "9.9.9")
    stream.write(dataset_bytes(files[0].path))
    stored = stream.finish()
    assert stored.sop_uid == files[0].sop_uid
    meta = pydicom.dcmread(stored.path).file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.MediaStorageSOPClassUID) == (files[0].sop_uid, CT)
    assert not list((tmp_path / INCOMING_DIR).iterdir())
