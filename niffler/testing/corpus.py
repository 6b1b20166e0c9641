"""Synthetic DICOM corpora with realistic, PHI-bearing headers.

Used by the tests, the benchmarks and the quick-start demo: everything is
generated (pydicom + deterministic UIDs), nothing is real patient data. Each
instance carries what the modules must handle: names, IDs with leading
zeros, birth dates, accession numbers, study/series/acquisition dates and
times, modality, manufacturer and model, DeviceSerialNumber, StationName,
InstitutionName, ImageType, rescale and window attributes, a sequence with
an identifier inside, a private tag, and pixel data of configurable size and
bit depth.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["CorpusSpec", "Instance", "Scanner", "generate_corpus", "make_instance"]

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_FIRST = ["ALICE", "BOB", "CAROL", "DAVID", "ERIN", "FRANK", "GRACE", "HEIDI", "IVAN", "JUDY"]
_LAST = ["SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON", "MOORE", "TAYLOR"]


@dataclass(frozen=True)
class Scanner:
    """A modality device as it identifies itself in headers."""

    serial: str = "SN0001"
    station: str = "CT01"
    institution: str = "General Hospital"
    manufacturer: str = "ACME"
    model: str = "Imager 9000"
    modality: str = "CT"


@dataclass(frozen=True)
class CorpusSpec:
    """How big and what shape a generated corpus is."""

    patients: int = 2
    studies_per_patient: int = 2
    series_per_study: int = 2
    instances_per_series: int = 2
    rows: int = 16
    columns: int = 16
    bits_allocated: int = 16
    scanners: Sequence[Scanner] = field(default_factory=lambda: (Scanner(),))
    start: datetime = datetime(2020, 1, 6, 8, 0, 0)
    #: Minutes between the start of consecutive studies on one scanner.
    study_spacing_minutes: int = 45
    #: Minutes between consecutive series of one study.
    series_spacing_minutes: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Instance:
    """One generated instance: where it is and its identifying attributes."""

    path: Path
    patient_id: str
    patient_name: str
    birth_date: str
    accession: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    acquisition: datetime
    scanner: Scanner


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(seed), *map(str, parts)]))


def make_instance(
    instance: Instance,
    *,
    study_time: datetime,
    series_number: int,
    instance_number: int,
    rows: int = 16,
    columns: int = 16,
    bits_allocated: int = 16,
    pixel_seed: int = 0,
) -> Dataset:
    """Return a complete, writable dataset for *instance* with realistic PHI-bearing headers."""
    sop_class = _SOP_CLASS.get(instance.scanner.modality, SecondaryCaptureImageStorage)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance.sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance.sop_uid
    ds.StudyDate = study_time.strftime("%Y%m%d")
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.SeriesDate = instance.acquisition.strftime("%Y%m%d")
    ds.SeriesTime = instance.acquisition.strftime("%H%M%S")
    ds.AcquisitionDate = instance.acquisition.strftime("%Y%m%d")
    ds.AcquisitionTime = instance.acquisition.strftime("%H%M%S.%f")[:13]
    ds.ContentDate = ds.AcquisitionDate
    ds.ContentTime = ds.AcquisitionTime
    ds.AccessionNumber = instance.accession
    ds.Modality = instance.scanner.modality
    ds.Manufacturer = instance.scanner.manufacturer
    ds.InstitutionName = instance.scanner.institution
    ds.InstitutionAddress = "1 Hospital Road, Springfield"
    ds.ReferringPhysicianName = "REFERRER^ROBERT"
    ds.StationName = instance.scanner.station
    ds.StudyDescription = f"{instance.scanner.modality} CHEST"
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.OperatorsName = "TECH^TINA"
    ds.ManufacturerModelName = instance.scanner.model
    ds.PatientName = instance.patient_name
    ds.PatientID = instance.patient_id
    ds.PatientBirthDate = instance.birth_date
    ds.PatientSex = "F" if ord(instance.patient_id[-1:] or "0") % 2 else "M"
    ds.PatientAge = "045Y"
    ds.OtherPatientIDs = f"MRN{instance.patient_id}"
    ds.PatientAddress = "42 Elm Street, Springfield"
    ds.PatientTelephoneNumbers = "555-0100"
    ds.AdditionalPatientHistory = f"History note for {instance.patient_name}"
    ds.DeviceSerialNumber = instance.scanner.serial
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.25"
    ds.ProtocolName = "ROUTINE CHEST"
    ds.StudyInstanceUID = instance.study_uid
    ds.SeriesInstanceUID = instance.series_uid
    ds.StudyID = instance.accession[-6:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = _uid(pixel_seed, "frame", instance.series_uid)
    ds.RequestAttributesSequence = DicomSequence([Dataset()])
    ds.RequestAttributesSequence[0].AccessionNumber = instance.accession
    ds.RequestAttributesSequence[0].RequestedProcedureID = f"RP{instance.accession}"
    ds.add_new(0x00091010, "LO", "ACME private creator")
    ds.add_new(0x00091011, "LO", f"private {instance.patient_id}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = 12 if bits_allocated == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024" if bits_allocated == 16 else "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    rng = np.random.default_rng(pixel_seed)
    dtype = np.uint16 if bits_allocated == 16 else np.uint8
    pixels = rng.integers(0, 1 << int(ds.BitsStored), size=(rows, columns), dtype=dtype)
    ds.PixelData = pixels.tobytes()
    return ds


def generate_corpus(out_dir: str | Path, spec: CorpusSpec | None = None) -> list[Instance]:
    """Write a corpus into *out_dir* (one file per instance) and return its manifest.

    Studies are laid out per scanner in time order, *study_spacing_minutes*
    apart, so the scanner reports have a known answer. PatientIDs are
    zero-padded (``000123``) so that losing leading zeros is detectable.
    """
    spec = spec or CorpusSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(spec.seed)
    manifest: list[Instance] = []
    study_index = 0
    for p in range(spec.patients):
        patient_id = f"{(spec.seed * 1000 + p + 1):06d}"
        patient_name = f"{rnd.choice(_LAST)}^{rnd.choice(_FIRST)}"
        birth_date = f"{rnd.randint(1930, 2005)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        for s in range(spec.studies_per_patient):
            scanner = spec.scanners[study_index % len(spec.scanners)]
            slot = study_index // len(spec.scanners)
            study_time = spec.start + timedelta(minutes=slot * spec.study_spacing_minutes)
            accession = f"ACC{spec.seed:02d}{p:04d}{s:03d}"
            study_uid = _uid(spec.seed, "study", p, s)
            study_index += 1
            for r in range(spec.series_per_study):
                series_uid = _uid(spec.seed, "series", p, s, r)
                acquisition = study_time + timedelta(minutes=r * spec.series_spacing_minutes)
                for i in range(spec.instances_per_series):
                    instance = Instance(
                        path=out / f"p{p:03d}_s{s:02d}_r{r:02d}_i{i:04d}.dcm",
                        patient_id=patient_id,
                        patient_name=patient_name,
                        birth_date=birth_date,
                        accession=accession,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=_uid(spec.seed, "sop", p, s, r, i),
                        study_date=study_time.strftime("%Y%m%d"),
                        acquisition=acquisition + timedelta(seconds=i),
                        scanner=scanner,
                    )
                    ds = make_instance(
                        instance,
                        study_time=study_time,
                        series_number=r + 1,
                        instance_number=i + 1,
                        rows=spec.rows,
                        columns=spec.columns,
                        bits_allocated=spec.bits_allocated,
                        pixel_seed=hash((spec.seed, p, s, r, i)) & 0xFFFF,
                    )
                    ds.save_as(instance.path, enforce_file_format=True)
                    manifest.append(instance)
    return manifest
