"""niffler-png's logs, from every process it starts, never carry a UID, a PatientID or a path.

The files are the kind pydicom warns about, quoting the value: UIDs with a
patient's number in them (letters, leading zeros), an unknown Specific
Character Set, a PN with too many components. They sit in folders named
after the patient, with the accession number as file name, as real exports
do; two of them are broken. The real console script runs them on its
default process pool (spawned workers, which never run the command's
logging set-up themselves) and on a Dask cluster.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

SECRET = "png-logs-test-secret-0123456789"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "png_extraction.json"
NIFFLER_PNG = Path(sys.executable).parent / "niffler-png"
MRN = "MRN483920175"  # the patient's number: in the UIDs, the folder's name, the character set
ACCESSION = "ACC7730165"  # the file names
GOOD = 4
#: Every value here is an identifier; none may reach stderr or stdout.
MARKERS = (MRN, ACCESSION, "483920175", "7730165")
WITHHELD = "a pydicom warning; its text is withheld"


def _instance(number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with warnings.catch_warnings():  # pydicom warns (quoting them) as they are set
        warnings.simplefilter("ignore")
        ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.840.99.{MRN}.{number}"
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = f"1.2.840.99.{MRN}.{number}"
        ds.StudyInstanceUID = f"1.2.840.099.{MRN}.01"  # letters and leading zeros
        ds.SeriesInstanceUID = f"1.2.840.0483920175.{number}"
        ds.FrameOfReferenceUID = f"1.2.840.99.{MRN}.3"
        ds.SpecificCharacterSet = f"ISO {MRN}"  # no such character set
        ds.PatientID = MRN
        ds.PatientName = f"{MRN}^A^B^C^D^E"  # six components
        ds.AccessionNumber = ACCESSION
        ds.Modality = "OT"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (np.arange(64, dtype=np.uint16) * (number + 1) * 7).tobytes()
    return ds


def _home(root: Path) -> Path:
    """DICOMHome/<MRN>/<accession>-<n>.dcm: GOOD readable files, one truncated header, one cut short."""
    folder = root / "home" / MRN / ACCESSION
    folder.mkdir(parents=True)
    for number in range(GOOD):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _instance(number).save_as(folder / f"{ACCESSION}-{number}.dcm", enforce_file_format=True)
    data = (folder / f"{ACCESSION}-0.dcm").read_bytes()
    (folder / f"{ACCESSION}-header.dcm").write_bytes(data[:300])  # ends inside the header
    (folder / f"{ACCESSION}-pixels.dcm").write_bytes(data[:-60])  # pixel data cut short
    return root / "home"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _niffler_png(home: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIFFLER_DEID_KEY": SECRET, "PYTHONWARNINGS": "always"}
    return subprocess.run(
        [str(NIFFLER_PNG), "--config", str(CONFIG), "--dicom-home", str(home), "--output-directory",
         str(out), *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def _assert_converted(out: Path) -> list[dict[str, str]]:
    """The good files became PNGs and metadata rows; the broken ones are failures. Returns those."""
    assert len(_read_csv(out / "metadata.csv")) == GOOD
    assert len(list((out / "extracted-images").rglob("*.png"))) == GOOD
    assert len(_read_csv(out / "mapping.csv")) == GOOD
    failures = _read_csv(out / "failures.csv")
    assert {Path(f["file"]).name: f["reason"] for f in failures} == {
        f"{ACCESSION}-header.dcm": "unreadable-header",
        f"{ACCESSION}-pixels.dcm": "decode-error",
    }
    # failures.csv is private: it names the original files (and that is where they are found).
    assert all(MRN in f["file"] for f in failures)
    return failures


def _assert_no_markers(*texts: str) -> None:
    for text in texts:
        for marker in MARKERS:
            assert marker not in text, f"{marker} leaked:\n{text}"


def test_default_pool_logs_no_uid_id_or_path_at_any_verbosity(tmp_path: Path) -> None:
    home = _home(tmp_path)
    quiet = _niffler_png(home, tmp_path / "out")
    assert quiet.returncode == 2, quiet.stderr  # some DICOM failed
    _assert_converted(tmp_path / "out")
    _assert_no_markers(quiet.stdout, quiet.stderr)
    assert "converting with 2 worker(s)" in quiet.stderr  # the configured pool (UseProcesses 0), not inline
    assert "2 DICOM file(s) failed" in quiet.stderr
    assert WITHHELD not in quiet.stderr  # pydicom's warnings are -v only

    verbose = _niffler_png(home, tmp_path / "out-v", "-v")
    assert verbose.returncode == 2, verbose.stderr
    failures = _assert_converted(tmp_path / "out-v")
    _assert_no_markers(verbose.stdout, verbose.stderr)
    # The parent reads no DICOM: these lines come from the spawned workers, set up at the
    # command's level (DEBUG) and in its format.
    assert f"DEBUG pydicom: {WITHHELD}" in verbose.stderr
    # Each failure is named by its position in the run and its keyed name (also in failures.csv).
    for failure in failures:
        lines = [
            line for line in verbose.stderr.splitlines() if f"(instance {failure['instance_key']})" in line
        ]
        assert len(lines) == 1 and f"failed: {failure['reason']}" in lines[0], verbose.stderr
    assert any("failed: decode-error (" in line for line in verbose.stderr.splitlines())


def test_dask_workers_log_no_uid_id_or_path(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    distributed = pytest.importorskip("distributed")
    home = _home(tmp_path)
    # The workers are processes of this test: their stderr is this process's (captured by capfd).
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        proc = _niffler_png(home, tmp_path / "out", "-v", "--dask-scheduler", cluster.scheduler_address)
    workers = capfd.readouterr()
    assert proc.returncode == 2, proc.stderr
    _assert_converted(tmp_path / "out")
    _assert_no_markers(proc.stdout, proc.stderr, workers.out, workers.err)
    # Each task set its worker up at the command's level first.
    assert f"DEBUG pydicom: {WITHHELD}" in workers.err
