"""Synthetic DICOM corpora with realistic, PHI-bearing headers.

Used by the tests, the benchmarks and the quick-start demo: everything is
generated (pydicom + deterministic UIDs), nothing is real patient data. Each
instance carries what the modules must handle: names, IDs with leading
zeros, birth dates, accession numbers, study/series/acquisition dates and
times, modality, manufacturer and model, DeviceSerialNumber, StationName,
InstitutionName, ImageType, rescale and window attributes, a sequence with
an identifier inside, a private tag, and pixel data of configurable size and
bit depth.

:meth:`CorpusSpec.realistic` asks for headers closer to what a modality
sends (each part can also be switched on alone): UTF-8 (``ISO_IR 192``)
names and texts in several scripts, nested sequences up to four levels deep,
vendor private blocks with a private sequence and a CSA-like binary blob,
the acquisition attributes of a CT, and 12 instances per series.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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

__all__ = [
    "MIXED_PATIENT",
    "REALISTIC_CHARACTER_SET",
    "CorpusSpec",
    "Instance",
    "Scanner",
    "generate_corpus",
    "make_instance",
    "mixed_study",
]

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_FIRST = ["ALICE", "BOB", "CAROL", "DAVID", "ERIN", "FRANK", "GRACE", "HEIDI", "IVAN", "JUDY"]
_LAST = ["SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON", "MOORE", "TAYLOR"]
#: SpecificCharacterSet of :meth:`CorpusSpec.realistic`: UTF-8, as most modalities now send.
REALISTIC_CHARACTER_SET = "ISO_IR 192"
#: Person names in UTF-8: accents, Greek, Cyrillic, and Japanese with its three component groups.
_UTF8_NAMES = [
    "MÜLLER^JÜRGEN",
    "GARCÍA^JOSÉ^MARÍA",
    "Ørsted^Søren",
    "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΕΛΕΝΗ",
    "Иванова^Анна",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "Nguyễn^Thị Hương",
    "Łukasiewicz^Paweł",
    "Çelik^Ayşe",
    "Lefèvre^Zoë",
]
_UTF8_STAFF = ["Schröder^Björn^^Dr.", "Kim^Min-jun=김^민준", "Dubois^Amélie", "Οικονόμου^Νίκος"]


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
    #: SpecificCharacterSet of every instance. ``"ISO_IR 192"`` (UTF-8) gives the names and free
    #: texts non-ASCII characters; the default keeps the ASCII names and texts.
    character_set: str = "ISO_IR 100"
    #: Add the nested sequences a modality's header carries (procedure and protocol codes,
    #: request attributes down to a content item's concept code, referenced and source images,
    #: anatomic region with modifier, station name codes, an icon image).
    nested_sequences: bool = False
    #: Add vendor private blocks (several creators, about 150 elements, a private sequence, a
    #: CSA-like binary blob of a few kilobytes) besides the one private tag every instance has.
    private_tags: bool = False
    #: Add the acquisition, equipment and positioning attributes of a CT image
    #: (KVP, exposure, collimation, kernel, geometry, performed procedure step, ...).
    acquisition_attributes: bool = False
    #: Derive the study, series and SOP instance UIDs from separated parts. Off (the default,
    #: as it always was), a corpus of 10 or more patients, series or instances can give two
    #: instances the same UID (patient 3 instance 10 and patient 30 series 1 instance 0).
    distinct_uids: bool = False

    @classmethod
    def realistic(cls, **overrides: Any) -> CorpusSpec:
        """Return a spec with every realistic header option on and 12 instances per series.

        *overrides* set any other field (or turn an option off again).
        """
        keys: dict[str, Any] = {
            "instances_per_series": 12,
            "character_set": REALISTIC_CHARACTER_SET,
            "nested_sequences": True,
            "private_tags": True,
            "acquisition_attributes": True,
            "distinct_uids": True,
        }
        keys.update(overrides)
        return cls(**keys)


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


def _uid(seed: int, *parts: object, separated: bool = False) -> str:
    """A deterministic UID from *seed* and *parts*.

    pydicom concatenates the entropy sources, so without *separated* the
    parts ``(3, 0, 0, 10)`` and ``(30, 0, 1, 0)`` give the same UID (kept as
    the default: the corpora tests generate must not change).
    """
    if separated:
        return str(generate_uid(entropy_srcs=["/".join([str(seed), *map(str, parts)])]))
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
    character_set: str = "ISO_IR 100",
    nested_sequences: bool = False,
    private_tags: bool = False,
    acquisition_attributes: bool = False,
) -> Dataset:
    """Return a complete, writable dataset for *instance* with realistic PHI-bearing headers.

    The last four options are those of :class:`CorpusSpec`; left at their
    defaults, the dataset is exactly what it always was.
    """
    utf8 = character_set == REALISTIC_CHARACTER_SET
    sop_class = _SOP_CLASS.get(instance.scanner.modality, SecondaryCaptureImageStorage)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance.sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = character_set
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
    if utf8:
        _add_utf8_texts(ds, instance, pixel_seed)
    if acquisition_attributes:
        _add_acquisition_attributes(ds, instance, series_number, instance_number, pixel_seed)
    if nested_sequences:
        _add_nested_sequences(ds, instance, instance_number, pixel_seed)
    if private_tags:
        _add_private_blocks(ds, instance, instance_number, pixel_seed)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_utf8_texts(ds: Dataset, instance: Instance, pixel_seed: int) -> None:
    """Replace the free texts and staff names with UTF-8 ones (the patient's name is the manifest's)."""
    staff = _UTF8_STAFF[pixel_seed % len(_UTF8_STAFF)]
    ds.ReferringPhysicianName = staff
    ds.OperatorsName = ["Weiß^Grete", "Пётр^Сидоров"]
    ds.InstitutionAddress = "Universitätsstraße 1, 50937 Köln"
    ds.StudyDescription = f"{instance.scanner.modality} THORAX ÜBERSICHT"
    ds.SeriesDescription = "Lunge 1.25 mm \u2013 Weichteil"
    ds.AdditionalPatientHistory = f"Anamnese für {instance.patient_name}: Zustand nach Pneumonie, “Husten”"
    ds.PatientAddress = "Hauptstraße 42, 80331 München"
    ds.ImageComments = "Kontrastmittel: nein; 造影剤なし"


def _add_acquisition_attributes(
    ds: Dataset, instance: Instance, series_number: int, instance_number: int, pixel_seed: int
) -> None:
    """The acquisition, equipment, positioning and procedure step attributes of a CT image."""
    when = instance.acquisition
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.InstanceCreatorUID = "1.2.840.113619.6.999"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.SoftwareVersions = ["gmp_vct.42", "LightSpeedverrel"]
    ds.GantryID = f"G{instance.scanner.serial}"
    ds.DetectorID = f"DET-{instance.scanner.serial}"
    ds.DeviceUID = _uid(0, "device", instance.scanner.serial)
    ds.PerformedStationAETitle = instance.scanner.station[:16]
    ds.PerformedStationName = instance.scanner.station
    ds.PerformedProcedureStepStartDate = ds.StudyDate
    ds.PerformedProcedureStepStartTime = ds.StudyTime
    ds.PerformedProcedureStepID = f"PPS{instance.accession[-8:]}"
    ds.PerformedProcedureStepDescription = "CT THORAX MIT KM"
    ds.PerformingPhysicianName = "PERFORMER^PAT"
    ds.NameOfPhysiciansReadingStudy = "READER^RITA"
    ds.RequestingPhysician = "REQUESTER^RAY"
    ds.PatientWeight = "72.5"
    ds.PatientSize = "1.78"
    ds.ScanOptions = "HELICAL MODE"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "360"
    ds.DistanceSourceToDetector = "946.7"
    ds.DistanceSourceToPatient = "538.5"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "155.5"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "600"
    ds.XRayTubeCurrent = 250 + pixel_seed % 50
    ds.Exposure = 150
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = 30000
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.TableSpeed = 78.75
    ds.TableFeedPerRotation = 39.375
    ds.SpiralPitchFactor = 0.984375
    ds.CTDIvol = 8.42
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = ["-180", "-180", f"{-1.25 * instance_number:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{-1.25 * instance_number:.2f}"
    ds.PositionReferenceIndicator = "SN"
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.ImagesInAcquisition = 12
    ds.LossyImageCompression = "00"
    ds.IrradiationEventUID = _uid(pixel_seed, "irradiation", instance.series_uid, series_number)


def _add_nested_sequences(ds: Dataset, instance: Instance, instance_number: int, pixel_seed: int) -> None:
    """Sequences as a modality sends them, up to four levels deep, some carrying identifiers."""
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = _uid(pixel_seed, "detached-study", instance.study_uid)
    ds.ReferencedStudySequence = DicomSequence([study])
    pps = Dataset()
    pps.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    pps.ReferencedSOPInstanceUID = _uid(pixel_seed, "pps", instance.study_uid)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([pps])
    ds.ProcedureCodeSequence = DicomSequence([_code("CTCHEST", "L", "CT chest with contrast")])
    references = []
    for n in range(3):
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = _uid(pixel_seed, "localizer", instance.series_uid, n)
        references.append(ref)
    ds.ReferencedImageSequence = DicomSequence(references)
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = _uid(pixel_seed, "source", instance.sop_uid)
    source.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code("121320", "DCM", "Uncompressed predecessor")]
    )
    ds.SourceImageSequence = DicomSequence([source])
    region = _code("T-D3000", "SRT", "Chest")
    region.AnatomicRegionModifierSequence = DicomSequence([_code("G-A101", "SRT", "Left")])
    ds.AnatomicRegionSequence = DicomSequence([region])
    ds.PerformedProtocolCodeSequence = DicomSequence([_code("P5-0800D", "SRT", "CT Chest routine")])
    ds.PerformedStationNameCodeSequence = DicomSequence(
        [_code(instance.scanner.station, "99LOCAL", "CT room")]
    )
    ds.CTDIPhantomTypeCodeSequence = DicomSequence([_code("113691", "DCM", "IEC Body Dosimetry Phantom")])

    # RequestAttributesSequence > ScheduledProtocolCodeSequence > ProtocolContextSequence >
    # ConceptNameCodeSequence: four levels, with the accession number and a physician at level one.
    content = Dataset()
    content.ValueType = "TEXT"
    content.ConceptNameCodeSequence = DicomSequence([_code("121106", "DCM", "Comment")])
    content.TextValue = f"Requested for {instance.patient_name}"
    protocol = _code("CTCHEST-KM", "99LOCAL", "Chest with contrast")
    protocol.ProtocolContextSequence = DicomSequence([content])
    request = ds.RequestAttributesSequence[0]
    request.ScheduledProcedureStepID = f"SPS{instance.accession[-8:]}"
    request.ScheduledProcedureStepDescription = "CT THORAX"
    request.ScheduledProtocolCodeSequence = DicomSequence([protocol])
    request.RequestedProcedureDescription = "CT chest"
    request.RequestedProcedureCodeSequence = DicomSequence([_code("CTCHEST", "L", "CT chest")])

    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 64
    icon.Columns = 64
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes((x + instance_number) & 0xFF for x in range(64 * 64))
    ds.IconImageSequence = DicomSequence([icon])
    # Some modalities send undefined lengths (sequences and items ended by delimiters): these do.
    for keyword in ("ReferencedImageSequence", "RequestAttributesSequence"):
        _undefined_length(ds[keyword])


def _undefined_length(element: Any) -> None:
    """Have *element* (a sequence), its items and every sequence inside written with undefined lengths."""
    element.is_undefined_length = True
    for item in element.value:
        item.is_undefined_length_sequence_item = True
        for inner in item:
            if inner.VR == "SQ":
                _undefined_length(inner)


#: Private creators of the vendor blocks, by group: (block element, creator).
_PRIVATE_CREATORS = {
    0x0009: (0x10, "GEMS_IDEN_01"),
    0x0019: (0x10, "GEMS_ACQU_01"),
    0x0021: (0x10, "GEMS_RELA_01"),
    0x0023: (0x10, "GEMS_STDY_01"),
    0x0025: (0x10, "GEMS_SERS_01"),
    0x0027: (0x10, "GEMS_IMAG_01"),
    0x0029: (0x10, "SIEMENS CSA HEADER"),
    0x0043: (0x10, "GEMS_PARM_01"),
    0x0045: (0x10, "GEMS_HELIOS_01"),
    0x0051: (0x10, "SIEMENS MR HEADER"),
}
#: Elements per block (group: count), besides the named ones below.
_PRIVATE_COUNTS = {0x0019: 40, 0x0021: 12, 0x0023: 6, 0x0025: 10, 0x0027: 20, 0x0043: 40, 0x0045: 10}


def _add_private_blocks(ds: Dataset, instance: Instance, instance_number: int, pixel_seed: int) -> None:
    """Vendor private blocks: ~150 elements of mixed VRs, a private sequence, a CSA-like blob."""
    for group, (element, creator) in _PRIVATE_CREATORS.items():
        ds.add_new(group << 16 | element, "LO", creator)
    block = 0x1000
    ds.add_new(0x00090000 | block | 0x01, "LO", "GE_GENESIS_FF")
    ds.add_new(0x00090000 | block | 0x02, "SH", instance.scanner.station)
    ds.add_new(0x00090000 | block | 0xE3, "UI", _uid(pixel_seed, "ge-equipment", instance.scanner.serial))
    ds.add_new(0x00090000 | block | 0xE6, "SH", "27")
    ds.add_new(0x00090000 | block | 0xE9, "SL", 1_300_000_000 + pixel_seed)
    for group, count in _PRIVATE_COUNTS.items():
        base = group << 16 | block
        for n in range(count):
            element = base | (0x20 + n)
            kind = n % 5
            if kind == 0:
                ds.add_new(element, "DS", f"{(n * 1.5 + instance_number):.3f}")
            elif kind == 1:
                ds.add_new(element, "SS", n - 10)
            elif kind == 2:
                ds.add_new(element, "SL", n * 1000 + pixel_seed)
            elif kind == 3:
                ds.add_new(element, "LO", f"vendor value {group:04X}:{n}")
            else:
                ds.add_new(element, "FL", [float(n), float(instance_number), 0.5])
    # Tags upstream's featureset1 names (GE / Siemens).
    ds.add_new(0x0019100B, "DS", "1.0")
    ds.add_new(0x0019105A, "FL", 2.5)
    ds.add_new(0x00251011, "SL", instance_number)
    ds.add_new(0x0051100C, "LO", "FoV 360*360")
    ds.add_new(0x0051100F, "LO", "HEA;HEP")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
    ds.add_new(0x00291009, "LO", "20090512")
    # A CSA-like binary header: a few kilobytes of tagged little endian records.
    records = b"".join(
        b"SV10\x04\x03\x02\x01"
        + f"Param{n:03d}".encode("ascii").ljust(64, b"\0")
        + (n * 7 + instance_number).to_bytes(4, "little") * 8
        for n in range(96)
    )
    ds.add_new(0x00291010, "OB", records)
    # A private sequence with a nested item, as Philips and GE send.
    inner = Dataset()
    inner.add_new(0x00450010, "LO", "GEMS_HELIOS_01")
    inner.add_new(0x00451001, "SS", instance_number)
    inner.add_new(0x00451002, "LO", f"private {instance.patient_id}")
    outer = Dataset()
    outer.add_new(0x00450010, "LO", "GEMS_HELIOS_01")
    outer.add_new(0x00451003, "DS", "0.625")
    outer.add_new(0x00451004, "SQ", DicomSequence([inner]))
    ds.add_new(0x00451040, "SQ", DicomSequence([outer, Dataset(outer)]))
    _undefined_length(ds[0x00451040])


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
        if spec.character_set == REALISTIC_CHARACTER_SET:
            patient_name = _UTF8_NAMES[p % len(_UTF8_NAMES)]
        birth_date = f"{rnd.randint(1930, 2005)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        for s in range(spec.studies_per_patient):
            scanner = spec.scanners[study_index % len(spec.scanners)]
            slot = study_index // len(spec.scanners)
            study_time = spec.start + timedelta(minutes=slot * spec.study_spacing_minutes)
            accession = f"ACC{spec.seed:02d}{p:04d}{s:03d}"
            study_uid = _uid(spec.seed, "study", p, s, separated=spec.distinct_uids)
            study_index += 1
            for r in range(spec.series_per_study):
                series_uid = _uid(spec.seed, "series", p, s, r, separated=spec.distinct_uids)
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
                        sop_uid=_uid(spec.seed, "sop", p, s, r, i, separated=spec.distinct_uids),
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
                        character_set=spec.character_set,
                        nested_sequences=spec.nested_sequences,
                        private_tags=spec.private_tags,
                        acquisition_attributes=spec.acquisition_attributes,
                    )
                    ds.save_as(instance.path, enforce_file_format=True)
                    manifest.append(instance)
    return manifest


#: The patient of :func:`mixed_study`.
MIXED_PATIENT = "000009"


def mixed_study(out: Path, template: Instance, description: str | None = None) -> list[Instance]:
    """Patient 000009's study of 2020-07-01: a CT series and an MR series of 2 instances each.

    Each instance's StudyDescription names its own modality, as
    :func:`make_instance` writes it, unless *description* gives the whole
    study one.
    """
    made = []
    study_uid = "1.2.826.0.1.3680043.8.498.777"
    for number, modality in ((1, "CT"), (2, "MR")):
        for i in range(2):
            inst = dataclasses.replace(
                template,
                path=out / f"mixed{number}-{i}.dcm",
                patient_id=MIXED_PATIENT,
                accession="ACCMIXED",
                study_uid=study_uid,
                series_uid=f"{study_uid}.{number}",
                sop_uid=f"{study_uid}.{number}.{i + 1}",
                study_date="20200701",
                acquisition=datetime(2020, 7, 1, 9, number, i),
                scanner=Scanner(modality=modality),
            )
            ds = make_instance(
                inst, study_time=datetime(2020, 7, 1, 9), series_number=number, instance_number=i + 1
            )
            if description is not None:
                ds.StudyDescription = description
            ds.save_as(inst.path, enforce_file_format=True)
            made.append(inst)
    return made
