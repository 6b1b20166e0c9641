"""What every console command sets up before it reads a DICOM file."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
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


# --- workers (niffler-png's process pool, Dask) get the same set-up ----------------------------

MARK = "MRN5550123"  # in every malformed value below: a patient's number, as a careless site puts it


def _file_with_values_pydicom_quotes(path: Path) -> Path:
    """UIDs with letters and leading zeros, a bogus character set, a PN with too many parts."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.7"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SpecificCharacterSet = f"ISO {MARK}"
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = f"1.2.840.99.{MARK}.1"
        ds.StudyInstanceUID = f"1.2.840.099.{MARK}.01"
        ds.PatientName = f"{MARK}^A^B^C^D^E"
        ds.PatientID = MARK
        ds.save_as(path, enforce_file_format=True)
    return path


_WORKER = """
import logging
import sys
import pydicom
how = sys.argv[2]
if how.startswith("worker"):
    from niffler.common.logsetup import configure_worker
    level = logging.DEBUG if how == "worker -v" else logging.INFO
    configure_worker(level)
    configure_worker(level)  # a Dask task calls it every time: idempotent
ds = pydicom.dcmread(sys.argv[1])
values = [str(elem.value) for elem in ds.iterall()]  # what de-identification reads
print(ds.StudyInstanceUID)
logging.getLogger("niffler.worker").info("worker %s done", how)
"""


def _in_a_fresh_worker(path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", _WORKER, str(path), how],
        capture_output=True,
        text=True,
        check=True,
    )


def test_the_worker_initializer_keeps_pydicom_from_quoting_values(tmp_path: Path) -> None:
    path = _file_with_values_pydicom_quotes(tmp_path / "bad.dcm")
    alone = _in_a_fresh_worker(path, "pydicom alone")
    # Without it: the UIDs in warnings and in pydicom's log (Python warnings and logging both).
    assert MARK in alone.stdout and alone.stderr.count(MARK) >= 2
    for how in ("worker", "worker -v"):
        worker = _in_a_fresh_worker(path, how)
        assert MARK in worker.stdout  # still read as it is
        assert MARK not in worker.stderr, worker.stderr
        # The command's format, level and stream: one line (set up twice, one handler).
        lines = [line for line in worker.stderr.splitlines() if f"worker {how} done" in line]
        assert len(lines) == 1 and " INFO niffler.worker: " in lines[0]
    # -v keeps that pydicom warned (the unknown character set), not what about.
    debug = _in_a_fresh_worker(path, "worker -v").stderr
    assert "DEBUG pydicom: a pydicom warning; its text is withheld" in debug
    assert "pydicom" not in _in_a_fresh_worker(path, "worker").stderr


_NETWORK = """
import logging
import sys
from pynetdicom.dimse_primitives import C_STORE
if sys.argv[1] != "alone":
    from niffler.common.cli import setup_logging
    setup_logging(verbose=2)
else:
    logging.basicConfig(level=logging.DEBUG)
request = C_STORE()
request.AffectedSOPInstanceUID = "1.2.840.0555123.1"  # a leading zero: pynetdicom warns, quoting it
logging.getLogger("pynetdicom._handlers").debug("Affected SOP Instance UID     : 1.2.840.555123.2")
from pynetdicom import _config
print(_config.LOG_REQUEST_IDENTIFIERS, _config.LOG_RESPONSE_IDENTIFIERS)  # C-FIND datasets at INFO
"""


def test_pynetdicom_records_lose_sop_instance_uids_even_at_vv() -> None:
    def run(how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _NETWORK, how], capture_output=True, text=True, check=True
        )

    alone = run("alone")
    assert "555123" in alone.stderr and alone.stdout.split() == ["True", "True"]
    after = run("set-up")
    assert after.stdout.split() == ["False", "False"]  # -vv shows traffic, not the identifiers
    logs = after.stderr
    assert "555123" not in logs
    assert "Non-conformant 'Affected SOP Instance UID' value (withheld)" in logs
    assert "Affected SOP Instance UID     : (withheld)" in logs


_FOLD = """
import logging, sys
from niffler.common.cli import setup_logging
setup_logging(int(sys.argv[1]), 0)
logging.getLogger("pynetdicom.assoc").error("Association Rejected by the peer")
logging.getLogger("niffler.net.scu").error("PACS rejected the association: Called AE title not recognised")
"""


@pytest.mark.parametrize(("verbose", "shown"), [(0, False), (1, True)])
def test_pynetdicom_errors_fold_into_niffler_s_own_line_unless_verbose(verbose: int, shown: bool) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _FOLD, str(verbose)], capture_output=True, text=True, check=True
    )
    assert "Called AE title not recognised" in proc.stderr
    assert ("Association Rejected by the peer" in proc.stderr) is shown


_TRAFFIC = """
import importlib.abc, logging, sys
class _Gone(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "niffler.net._pynetdicom30" and sys.argv[1] == "gone":
            raise ImportError("a renamed pynetdicom internal")
        return None
sys.meta_path.insert(0, _Gone())
from pynetdicom import _config
from niffler.common.cli import setup_logging
setup_logging(2, 0)
print(logging.getLogger("pynetdicom").level, _config.LOG_REQUEST_IDENTIFIERS)
"""


@pytest.mark.parametrize(("accelerator", "shown"), [("loads", "10 False"), ("gone", "30 True")])
def test_vv_shows_pynetdicom_traffic_only_when_its_identifiers_can_be_withheld(
    accelerator: str, shown: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _TRAFFIC, accelerator], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == shown  # DEBUG and withheld, or WARNING (hidden) and untouched
