"""What every console command sets up before it reads a DICOM file."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

BAD_UID = "1.2.840.99.abc"  # not a DICOM UID: pydicom's reading check quotes it


def _file_with_a_malformed_study_uid(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "2.25.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = BAD_UID
    ds.save_as(path, enforce_file_format=True)
    return path


_READ = """
import logging
import sys
import pydicom
from niffler.common.cli import setup_logging
logging.basicConfig(level=logging.INFO)  # a program that logs, as every Niffler command does
if sys.argv[2] == "set-up":
    setup_logging()
print(pydicom.dcmread(sys.argv[1]).StudyInstanceUID)
"""


def _read_in_a_fresh_process(path: Path, how: str) -> subprocess.CompletedProcess[str]:
    """Read the study UID in a new interpreter, so no other test's pydicom settings apply."""
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", _READ, str(path), how],
        capture_output=True,
        text=True,
        check=True,
    )


def test_a_malformed_value_read_after_set_up_is_not_quoted_in_the_log(tmp_path: Path) -> None:
    path = _file_with_a_malformed_study_uid(tmp_path / "bad.dcm")
    alone = _read_in_a_fresh_process(path, "pydicom alone")
    # What pydicom does on its own: the study's UID, an identifier, in the log.
    assert alone.stdout.strip() == BAD_UID and BAD_UID in alone.stderr
    after = _read_in_a_fresh_process(path, "set-up")
    assert after.stdout.strip() == BAD_UID  # still read as it is
    assert BAD_UID not in after.stderr
