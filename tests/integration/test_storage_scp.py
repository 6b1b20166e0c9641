"""Niffler's Storage SCP against real DCMTK senders and a real Orthanc C-MOVE."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from niffler.net import accel
from niffler.net.address import AEAddress, open_association
from niffler.net.scp import StorageSCP
from niffler.net.syntaxes import UNCOMPRESSED
from niffler.net.writer import StoredInstance
from niffler.testing.corpus import CorpusSpec, Instance, generate_corpus
from niffler.testing.dicomfiles import dataset_bytes
from niffler.testing.peers import DcmtkStoreSCP, run_dcmtk, storescu

LOOPBACK = "127.0.0.1"
COMPRESSED_FILES = [
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_RLE.dcm",  # RLE
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended
    "JPEG2000.dcm",  # JPEG 2000
    "rtdose.dcm",  # multi-frame RT Dose, implicit VR
    "examples_palette.dcm",  # palette colour
]


def expected_path(root: Path, ds: pydicom.Dataset) -> Path:
    return (
        root
        / (ds.PatientID or "UNKNOWN")
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )


@pytest.fixture
def scp(tmp_path: Path):
    received: list[StoredInstance] = []
    server = StorageSCP(tmp_path / "received", ae_title="NIFFLER", host=LOOPBACK, on_stored=received.append)
    server.received = received  # type: ignore[attr-defined]
    with server:
        yield server


def test_storescu_corpus_arrives_byte_identical_where_template_says(
    scp: StorageSCP, corpus: list[Instance]
) -> None:
    storescu(scp.port, corpus[0].path.parent)
    root = scp.storage_folder
    stored = sorted(p for p in root.rglob("*.dcm"))
    assert len(stored) == len(corpus) == 16
    for inst in corpus:
        target = root / inst.patient_id / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
        assert target.exists(), target
        assert dataset_bytes(target) == dataset_bytes(inst.path)
        meta = pydicom.dcmread(target, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == inst.sop_uid
        assert meta.SourceApplicationEntityTitle == "MODALITY"
    # Leading zeros of PatientID survive into the path.
    assert {p.relative_to(root).parts[0] for p in stored} == {"000001", "000002"}
    # The hand-off names every instance once, with its UIDs and final path.
    assert sorted(r.sop_uid for r in scp.received) == sorted(i.sop_uid for i in corpus)  # type: ignore[attr-defined]
    by_sop = {i.sop_uid: i for i in corpus}
    for rec in scp.received:  # type: ignore[attr-defined]
        assert rec.series_uid == by_sop[rec.sop_uid].series_uid and rec.path.exists()
    # No temp files remain.
    assert list((root / ".niffler-incoming").iterdir()) == []


def test_a_sender_offering_lossy_jpeg_first_gets_a_lossless_syntax(
    scp: StorageSCP, corpus: list[Instance]
) -> None:
    """storescu +C -xy proposes JPEG Baseline first in each context, then the uncompressed syntaxes."""
    run_dcmtk(["storescu", "+C", "-xy", "-aet", "MODALITY", "-aec", "NIFFLER", "+sd", "+r",
               LOOPBACK, str(scp.port), str(corpus[0].path.parent)])  # fmt: skip
    stored = sorted(scp.storage_folder.rglob("*.dcm"))
    assert len(stored) == len(corpus)
    for path in stored:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID in UNCOMPRESSED, ds.file_meta.TransferSyntaxUID.name
    by_sop = {i.sop_uid: i for i in corpus}
    for path in stored:
        assert dataset_bytes(path) == dataset_bytes(by_sop[path.stem].path)


def test_a_lossy_original_offered_only_lossy_is_stored_and_logged_once(
    scp: StorageSCP, caplog: pytest.LogCaptureFixture
) -> None:
    jpeg = Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    with caplog.at_level(logging.WARNING, logger="niffler.net.scp"):
        run_dcmtk(["dcmsend", "--decompress-never", "-aet", "MODALITY", "-aec", "NIFFLER",
                   LOOPBACK, str(scp.port), str(jpeg)])  # fmt: skip
    (stored,) = scp.storage_folder.rglob("*.dcm")
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    lines = [r.getMessage() for r in caplog.records if "no lossless syntax" in r.getMessage()]
    assert lines == ["association from MODALITY: accepted JPEG Baseline (Process 1) for what the sender "
                     "offered in no lossless syntax"]  # fmt: skip


def test_never_lossy_refuses_a_lossy_only_offer(tmp_path: Path) -> None:
    jpeg = Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    with StorageSCP(tmp_path / "in", host=LOOPBACK, transfer_syntax_policy="never-lossy") as strict:
        result = run_dcmtk(["dcmsend", "--decompress-never", "-aec", "NIFFLER", LOOPBACK, str(strict.port),
                            str(jpeg)], check=False)  # fmt: skip
    # dcmsend exits 0 all the same; it says why it sent nothing.
    assert "No acceptable Presentation Contexts" in result.stdout + result.stderr
    assert list((tmp_path / "in").rglob("*.dcm")) == []


class _CountingSCP(StorageSCP):
    """Counts the stores that reached pynetdicom's EVT_C_STORE path."""

    evt_stores = 0

    def _on_c_store(self, event: Any) -> int:
        self.evt_stores += 1
        return super()._on_c_store(event)


@pytest.mark.skipif(not accel.ENABLED, reason="the accelerator serves stores from their bytes")
def test_stores_are_served_from_their_bytes_not_through_pynetdicom_events(
    tmp_path: Path, corpus: list[Instance]
) -> None:
    received: list[StoredInstance] = []
    with _CountingSCP(tmp_path / "in", host=LOOPBACK, on_stored=received.append) as server:
        storescu(server.port, corpus[0].path.parent)
    assert sorted(r.sop_uid for r in received) == sorted(i.sop_uid for i in corpus)
    assert server.evt_stores == 0
    for inst in corpus:
        target = tmp_path / "in" / inst.patient_id / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
        assert dataset_bytes(target) == dataset_bytes(inst.path)


@pytest.mark.parametrize("name", ["CT_small.dcm", *COMPRESSED_FILES])
def test_dcmsend_file_arrives_exactly_as_dcmtk_bit_preserving_storescp_writes_it(
    scp: StorageSCP, name: str, tmp_path: Path
) -> None:
    source = get_testdata_file(name, download=False)
    assert source is not None, f"pydicom no longer ships {name}"
    original = pydicom.dcmread(source, stop_before_pixels=True)
    # dcmsend re-encodes a little as it sends (drops group lengths and
    # trailing padding), so the reference is DCMTK's own receiver in
    # bit-preserving mode, fed the very same send.
    with DcmtkStoreSCP(tmp_path / "dcmtk", aet="NIFFLER", extra_args=["+B", "+xa"]) as reference:
        run_dcmtk(["dcmsend", "-aet", "MODALITY", "-aec", "NIFFLER", LOOPBACK, str(reference.port), source])
    run_dcmtk(["dcmsend", "-aet", "MODALITY", "-aec", "NIFFLER", LOOPBACK, str(scp.port), source])
    (dcmtk_file,) = [p for p in (tmp_path / "dcmtk").iterdir() if p.is_file()]
    target = expected_path(scp.storage_folder, original)
    assert target.exists()
    assert dataset_bytes(target) == dataset_bytes(dcmtk_file)
    received = pydicom.dcmread(target)
    # A compressed dataset is kept as sent, never decompressed on the way.
    if original.file_meta.TransferSyntaxUID.is_compressed:
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert received.PixelData == pydicom.dcmread(source).PixelData


def test_hostile_patient_id_stays_inside_storage_folder(scp: StorageSCP, tmp_path: Path) -> None:
    corpus = generate_corpus(
        tmp_path / "c",
        CorpusSpec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1),
    )
    ds = pydicom.dcmread(corpus[0].path)
    ds.PatientID = "../../../../etc"
    ds.save_as(corpus[0].path)
    storescu(scp.port, corpus[0].path)
    files = [p for p in tmp_path.rglob("*.dcm") if "received" in p.parts]
    assert len(files) == 1
    rel = files[0].relative_to(scp.storage_folder)
    assert rel.parts[0] == "_._.._.._.._etc"
    assert not (tmp_path / "etc").exists() and not Path("/etc", corpus[0].study_uid).exists()


def test_unlisted_calling_ae_is_rejected_and_nothing_stored(tmp_path: Path, corpus: list[Instance]) -> None:
    with StorageSCP(
        tmp_path / "r", ae_title="NIFFLER", host=LOOPBACK, allowed_calling_aets=["MODALITY"]
    ) as server:
        refused = storescu(server.port, corpus[0].path, aet="INTRUDER", check=False)
        assert refused.returncode != 0
        assert list((tmp_path / "r").rglob("*.dcm")) == []
        storescu(server.port, corpus[0].path, aet="MODALITY")
        assert len(list((tmp_path / "r").rglob("*.dcm"))) == 1


def test_failed_disk_write_answers_out_of_resources(scp: StorageSCP, corpus: list[Instance]) -> None:
    incoming = scp.storage_folder / ".niffler-incoming"
    shutil.rmtree(incoming)
    incoming.write_text("not a folder: every write into it fails")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, scp.port, ae_title="NIFFLER")
    assert assoc.is_established
    status = assoc.send_c_store(pydicom.dcmread(corpus[0].path))
    assoc.release()
    assert status.Status == 0xA700
    # DCMTK sees the same refusal.
    result = storescu(scp.port, corpus[1].path, check=False, verbose=True)
    assert result.returncode != 0
    assert "Refused: OutOfResources" in result.stdout + result.stderr
    assert list(scp.storage_folder.rglob("*.dcm")) == []


def test_orthanc_moves_exactly_one_study_to_the_scp(
    scp: StorageSCP, corpus: list[Instance], orthanc_factory
) -> None:
    pacs = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, scp.port)})
    pacs.upload([i.path for i in corpus])
    study = corpus[0].study_uid
    pacs.movescu_study(study, calling_aet="NIFFLER", destination_aet="NIFFLER")
    got = {p.stem for p in scp.storage_folder.rglob("*.dcm")}
    assert got == {i.sop_uid for i in corpus if i.study_uid == study}
    assert len(got) == 4


def find_studies_as(calling_aet: str, port: int) -> str:
    """Return what DCMTK findscu printed for a STUDY-level query as *calling_aet*."""
    args = ["findscu", "-aet", calling_aet, "-aec", "ORTHANC", "-S", "-k", "QueryRetrieveLevel=STUDY"]
    out = run_dcmtk([*args, "-k", "StudyInstanceUID", LOOPBACK, str(port)], check=False)
    return out.stdout + out.stderr


def test_orthanc_refuses_an_unknown_calling_ae(corpus: list[Instance], orthanc_factory) -> None:
    pacs = orthanc_factory({"niffler": ("NIFFLER", LOOPBACK, 1)})
    pacs.upload([corpus[0].path])
    assert corpus[0].study_uid not in find_studies_as("STRANGER", pacs.dicom_port)
    assert corpus[0].study_uid in find_studies_as("NIFFLER", pacs.dicom_port)


def test_niffler_requestor_waits_instead_of_polling_and_delivers_to_dcmtk(
    tmp_path: Path, corpus: list[Instance]
) -> None:
    """An association Niffler requests (C-FIND, C-MOVE, C-GET, C-STORE) runs the waiting DUL loop."""
    sent = corpus[:3]
    datasets = [pydicom.dcmread(i.path) for i in sent]
    with DcmtkStoreSCP(tmp_path / "dcmtk", aet="DCMTK") as peer:
        ae = accel.new_ae("NIFFLER")
        for sop_class in {ds.SOPClassUID for ds in datasets}:
            ae.add_requested_context(sop_class)
        assoc = open_association(ae, AEAddress.parse(f"DCMTK@{LOOPBACK}:{peer.port}", "peer"))
        try:
            if accel.ENABLED:
                assert type(assoc.dul.to_provider_queue).__name__ == "_WakingQueue"
                # pynetdicom's debug-record handlers are gone while its debug log is off.
                assert assoc.get_handlers(evt.EVT_PDU_RECV) == []
                assert assoc.get_handlers(evt.EVT_DIMSE_RECV) == []
            statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
        finally:
            assoc.release()
    assert statuses == [0, 0, 0]
    written = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "dcmtk").iterdir()}
    assert written == {i.sop_uid for i in sent}


def test_one_line_per_association_says_who_sent_how_much_and_what_failed(
    tmp_path: Path, corpus: list[Instance], caplog: pytest.LogCaptureFixture
) -> None:
    server = StorageSCP(tmp_path / "in", host=LOOPBACK, log_associations=True)
    with caplog.at_level(logging.INFO, logger="niffler.net.scp"), server:
        storescu(server.port, corpus[0].path.parent)
        deadline = time.monotonic() + 10
        while "released" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association from")]
    size = sum(len(dataset_bytes(i.path)) for i in corpus) / 1e6
    assert len(lines) == 1, lines
    expected = rf"association from MODALITY released: 16 instance\(s\), {size:.1f} MB in \d+\.\d s, 0 failed"
    assert re.fullmatch(expected, lines[0]), lines[0]
