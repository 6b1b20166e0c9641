"""What every console command sets up before it reads a DICOM file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from niffler.common.cli import setup_logging

BAD_BIRTH_DATE = "1970-01-31"  # not a DICOM DA: pydicom's reading check quotes it


def _file_with_a_malformed_birth_date(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "2.25.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientBirthDate = BAD_BIRTH_DATE
    ds.save_as(path, enforce_file_format=True)
    return path


def _read_birth_date(path: Path) -> tuple[str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = str(pydicom.dcmread(path).PatientBirthDate)
    return value, [str(w.message) for w in caught]


def test_a_malformed_value_read_after_set_up_is_not_quoted_in_the_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = _file_with_a_malformed_birth_date(tmp_path / "bad.dcm")
    monkeypatch.setattr(pydicom_config.settings, "_reading_validation_mode", pydicom_config.WARN)
    with caplog.at_level(logging.WARNING, logger="pydicom"):
        value, said = _read_birth_date(path)
    # What pydicom does on its own: the birth date, in the log.
    assert value == BAD_BIRTH_DATE and BAD_BIRTH_DATE in caplog.text + " ".join(said)

    setup_logging()
    try:
        value, said = _read_birth_date(path)
    finally:
        logging.getLogger().handlers.clear()
    assert value == BAD_BIRTH_DATE  # still read as it is
    assert said == []
    assert BAD_BIRTH_DATE not in capsys.readouterr().err
