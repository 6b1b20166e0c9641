"""A hostile DICOM corpus: identifiers hidden everywhere a de-identifier can miss them.

Every value that identifies a patient is a *marker*: ``MRK`` + a four-digit
counter + five random capitals (``MRK0042QXZTA``), so a leak is found by
searching the output's text and names for it, and the counter says where it
was put (:attr:`HostileCorpus.where`). Dates of birth are unique dates
(``19610203``), raw UIDs and MRNs are remembered, and PatientIDs and
AccessionNumbers are markers or MRNs themselves (they may only appear as
pseudonyms).

What the corpus holds, file by file (about 40 files, each its own series):

- every attribute the Basic Profile removes: names, birth date and time,
  other IDs and names, addresses, telephone numbers, comments and
  descriptions, institution, physicians and operators, history, occupation,
  ethnic group, patient characteristics, RequestAttributesSequence items and
  ContentSequence text three levels deep;
- attributes Table E.1-1 does not list at all: the alternative-calendar
  birth and death dates, the unlisted PN attributes (EvaluatorName,
  SecondaryReviewerName), TextValue and CodeMeaning in
  AnatomicRegionSequence / AnatomicRegionModifierSequence, the issuer and
  order placer sequences, PatientSpeciesDescription,
  CommentsOnTheScheduledProcedureStep, ReasonForCancellation, overlay and
  curve labels in groups 6000/6002 and 5000/5002 (distinct markers), more
  free text of every text VR, and UIDs with no table row that embed a raw
  MRN (CreatorVersionUID, SOPInstanceUIDOfConcatenationSource, ...);
- kept sequences nested three deep with markers at every level;
- private tags with a creator, without one (orphans), and inside sequences;
- character sets ISO_IR 100 (Latin-1), ISO_IR 192 (UTF-8) and
  ``\\ISO 2022 IR 87`` (Japanese, ideographic PN);
- Study/Series/SOP Instance UIDs that embed an MRN and are malformed
  (a leading-zero component, or letters), so pydicom warns about them;
- explicit VR little endian files and some implicit VR ones;
- one file whose kept AnatomicRegionSequence is nested 1,500 levels deep,
  too deep for pydicom (or any recursive reader) to parse: it is expected
  to fail, never to crash a receiver.

Device identity (DeviceSerialNumber, StationName) is retained by design
and carries no marker. Nothing here is used by Niffler's modules.
"""

from __future__ import annotations

import contextlib
import random
import re
import string
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "DEEP_DEPTH",
    "DEVICE_SERIAL",
    "FORBIDDEN_KEYS",
    "MARKER_PATTERN",
    "PRIVATE_TAGS",
    "REPEATING_TAGS",
    "STATION_NAME",
    "HostileCorpus",
    "HostileFile",
    "deep_sequence_file",
    "write_hostile_corpus",
]

#: Nesting depth of the kept sequence in the file that must fail.
DEEP_DEPTH = 1500
#: How every marker starts: ``MRK`` and its four-digit number (random capitals follow).
MARKER_PATTERN = re.compile(r"MRK\d{4}")
#: Values kept by design (RetainDeviceIdentity): no marker, never asserted absent.
DEVICE_SERIAL = "SN-HOSTILE-7"
STATION_NAME = "HOSTILE-ST7"

_FILES = 40
_PATIENTS = 8
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "OT": SecondaryCaptureImageStorage}
_CHARSETS: tuple[str | list[str], ...] = ("ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"])
_ANATOMIC_REGION_SQ = b"\x08\x00\x18\x22SQ\x00\x00"  # (0008,2218) SQ, explicit VR LE header
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_DIGITS_AND_DOTS = re.compile(r"^[0-9.]+$")

#: Attributes the default policy must never output, judged by the key's last component.
FORBIDDEN_KEYS = frozenset(
    {
        "PatientName", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
        "OtherPatientIDsSequence", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
        "PatientComments", "StudyDescription", "SeriesDescription", "ImageComments", "InstitutionName",
        "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
        "OperatorsName", "RequestingPhysician", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "AdditionalPatientHistory", "MedicalRecordLocator", "PatientMotherBirthName", "Occupation",
        "EthnicGroup", "PatientAge", "PatientSex", "PatientWeight", "PatientSize",
        "RequestAttributesSequence", "ContentSequence", "TextValue", "PersonName", "CodeMeaning",
        "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
        "EvaluatorName", "SecondaryReviewerName", "LocalNamespaceEntityID", "UniversalEntityID",
        "PatientSpeciesDescription", "CommentsOnTheScheduledProcedureStep", "ReasonForCancellation",
        "OverlayLabel", "OverlayDescription", "CurveLabel", "CurveDescription", "60000022", "60001500",
        "60020022", "60021500", "50000022", "50002500", "50020022", "50022500", "IssuerOfPatientID",
        "RequestedProcedureID", "ScheduledProcedureStepID", "ScheduledProcedureStepDescription",
        "RequestedProcedureDescription", "ProtocolName", "StudyID",
    }
)  # fmt: skip

#: Unlisted free text of every VR the profile must judge by VR; one more per file, in turn.
_EXTRA_TEXT = (
    ("PatientBreedDescription", "LO"),
    ("BreedRegistrationNumber", "LO"),
    ("StrainDescription", "UC"),
    ("DocumentTitle", "ST"),
    ("AssertionComments", "UT"),
    ("TreatmentStatusComment", "ST"),
    ("SOPAuthorizationComment", "LT"),
    ("InterventionDescription", "ST"),
    ("ProtocolDesignRationale", "UT"),
    ("SetupImageComment", "ST"),
    ("RequestingAE", "AE"),
    ("ContactURI", "UR"),
    ("TransactionStatusComment", "LT"),
    ("InstructionPerformanceComment", "UT"),
)
#: Tags of the repeating groups (overlay, curve) whose labels carry markers.
REPEATING_TAGS = tuple(
    group << 16 | element
    for group in (0x6000, 0x6002, 0x5000, 0x5002)
    for element in ((0x0022, 0x1500) if group >= 0x6000 else (0x0022, 0x2500))
)
#: Private tags the corpus uses at the top level (creators included).
PRIVATE_TAGS = (
    0x00090010, 0x00091001, 0x00091002, 0x00091003, 0x000B1005, 0x00131010, 0x00290010, 0x00291001,
)  # fmt: skip


@dataclass(frozen=True)
class HostileFile:
    """One generated file and its identifying values."""

    path: Path
    patient_id: str
    mrn: str
    accession: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    transfer_syntax: str
    charset: str
    expected_to_fail: bool = False


@dataclass
class HostileCorpus:
    """The files and everything that must never appear in a shareable output or a log."""

    files: list[Path]
    markers: set[str]
    uids: set[str]
    patient_ids: set[str]
    birth_dates: set[str]
    failing: set[Path]
    entries: list[HostileFile] = field(default_factory=list)
    #: Needle -> where it was put (``h07.dcm AnatomicRegionSequence[0].CodeMeaning``).
    where: dict[str, str] = field(default_factory=dict)

    @property
    def good(self) -> list[HostileFile]:
        """The files every module must handle."""
        return [f for f in self.entries if not f.expected_to_fail]

    @property
    def bad(self) -> list[HostileFile]:
        """The files expected to be counted as failed."""
        return [f for f in self.entries if f.expected_to_fail]

    def needles(self) -> set[str]:
        """Every string that must not appear: markers, raw UIDs, MRNs/IDs/accessions, birth dates."""
        return self.markers | self.uids | self.patient_ids | self.birth_dates

    def leaks(self, text: str) -> set[str]:
        """Return the needles found in *text* (numbers and UIDs only as whole values)."""
        by_number = {m[:7]: m for m in self.markers}
        found = {by_number.get(hit.group(0), hit.group(0)) for hit in MARKER_PATTERN.finditer(text)}
        for needle in self.uids | self.patient_ids | self.birth_dates:
            if needle in found or needle not in text:
                continue
            if _DIGITS_AND_DOTS.match(needle):
                # A 2.25 pseudonym is 39 random digits: a date or MRN can occur inside one by chance.
                pattern = rf"(?<![0-9]){re.escape(needle)}(?![0-9]|\.[0-9])"
                if not re.search(pattern, text):
                    continue
            found.add(needle)
        return found

    def explain(self, needles: set[str]) -> list[str]:
        """Return ``needle (where it was put)`` for each needle, sorted."""
        return sorted(f"{n} ({self.where.get(n, 'unknown placement')})" for n in needles)


@contextlib.contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom write malformed UIDs and long values without warning or raising."""
    settings = pydicom_config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


class _Minter:
    """Makes unique markers and remembers where each one went."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.where: dict[str, str] = {}
        self.file = ""

    def __call__(self, place: str) -> str:
        self.count += 1
        if self.count > 9999:
            raise ValueError("too many markers for the four-digit counter")
        marker = f"MRK{self.count:04d}" + "".join(self.rng.choice(string.ascii_uppercase) for _ in range(5))
        self.where[marker] = f"{self.file} {place}"
        return marker


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _person(mark: _Minter, place: str, charset: str) -> str:
    """Return a PN value holding markers, written for *charset*."""
    if charset == "ISO_IR 100":
        return f"Müller-{mark(place + ' family')}^José^{mark(place + ' given')}"
    if charset == "ISO_IR 192":
        return f"Éloïse{mark(place + ' family')}^Straße 漢字{mark(place + ' given')}"
    # ISO 2022 IR 87: alphabetic, ideographic and phonetic groups.
    return f"Yamada{mark(place + ' alphabetic')}^Tarou={mark(place + ' ideographic')}山田^太郎=やまだ^たろう"


def _text(mark: _Minter, place: str, charset: str) -> str:
    """Return a free-text value holding one marker, with characters of *charset* around it."""
    marker = mark(place)
    if charset == "ISO_IR 100":
        return f"Größe {marker} à"
    if charset == "ISO_IR 192":
        return f"Überweisung {marker} 胸部 é"
    return f"胸部 {marker} 検査"


def _private_block(ds: Dataset, mark: _Minter, where: str, group: int) -> None:
    """Add a private creator and two of its elements, and an orphan element of another group."""
    ds.add_new(group << 16 | 0x0010, "LO", f"HOSTILE {mark(where + f' ({group:04X},0010) creator')}")
    ds.add_new(group << 16 | 0x1001, "LO", mark(where + f" ({group:04X},1001) private LO"))
    ds.add_new(group << 16 | 0x1002, "PN", f"{mark(where + f' ({group:04X},1002) private PN')}^P")
    orphan = group + 2  # no creator at (group+2,0010)
    ds.add_new(orphan << 16 | 0x1005, "LO", mark(where + f" ({orphan:04X},1005) orphan private"))


def _kept_nest(mark: _Minter, charset: str, mrn: str, uids: set[str], index: int) -> Sequence:
    """AnatomicRegionSequence > AnatomicRegionModifierSequence > EquivalentCodeSequence, markers at each."""

    def level(depth: int, path: str) -> Dataset:
        item = _code(f"T-D{depth}000", _text(mark, f"{path}.CodeMeaning", charset))
        item.TextValue = _text(mark, f"{path}.TextValue", charset)
        item.EvaluatorName = _person(mark, f"{path}.EvaluatorName", charset)
        uid = f"1.2.840.99.{mrn}.{index}.{depth}.7"
        uids.add(uid)
        item.TargetFrameOfReferenceUID = uid
        ref = _uid(index, "nest-ref", depth)
        uids.add(ref)
        item.ReferencedSOPInstanceUID = ref
        _private_block(item, mark, path, 0x0019)
        return item

    top = level(1, "AnatomicRegionSequence[0]")
    middle = level(2, "AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]")
    bottom = level(3, "AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].EquivalentCodeSequence[0]")
    bottom.SecondaryReviewerName = _person(
        mark, "...EquivalentCodeSequence[0].SecondaryReviewerName", charset
    )
    middle.EquivalentCodeSequence = Sequence([bottom])
    top.AnatomicRegionModifierSequence = Sequence([middle])
    return Sequence([top])


def _content(mark: _Minter, charset: str, mrn: str, uids: set[str], index: int) -> Sequence:
    """A ContentSequence (removed by the profile) three levels deep, text at each level."""
    third = Dataset()
    third.RelationshipType = "HAS OBS CONTEXT"
    third.ValueType = "PNAME"
    third.ConceptNameCodeSequence = Sequence([_code("121008", "Person Observer Name", "DCM")])
    third.PersonName = _person(mark, "ContentSequence[0][0][0].PersonName", charset)
    uid = f"1.2.840.99.{mrn}.{index}.55"
    uids.add(uid)
    third.UID = uid
    second = Dataset()
    second.RelationshipType = "CONTAINS"
    second.ValueType = "TEXT"
    second.ConceptNameCodeSequence = Sequence([_code("121071", _text(mark, "ContentSequence code", charset))])
    second.TextValue = _text(mark, "ContentSequence[0][0].TextValue", charset)
    second.ContentSequence = Sequence([third])
    first = Dataset()
    first.RelationshipType = "CONTAINS"
    first.ValueType = "CONTAINER"
    first.TextValue = _text(mark, "ContentSequence[0].TextValue", charset)
    first.ContentSequence = Sequence([second])
    return Sequence([first])


def _uid(index: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["niffler-hostile", str(index), *map(str, parts)]))


def _pixels(ds: Dataset, seed: int, eight_bit: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 8 if eight_bit else 16
    ds.BitsStored = 8 if eight_bit else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if eight_bit else np.uint16
    ds.PixelData = rng.integers(0, 1 << int(ds.BitsStored), size=(8, 8), dtype=dtype).tobytes()


@dataclass
class _Patient:
    mrn: str
    patient_id: str
    birth_date: str
    birth_time: str
    accessions: list[str]
    study_uids: list[str]


def _patients(rng: random.Random, mark: _Minter, uids: set[str]) -> list[_Patient]:
    patients = []
    used_dates: set[str] = set()
    for p in range(_PATIENTS):
        mark.file = f"patient {p}"
        # Numeric MRNs keep a leading zero; odd patients get letters (MRN4711-style).
        mrn = f"0{rng.randrange(10**8, 10**9)}" if p % 2 == 0 else f"MRN{rng.randrange(10**6, 10**7)}"
        patient_id = mrn if p % 4 in (0, 1) else mark("PatientID (raw, as a marker)")
        while True:
            birth = f"19{rng.randrange(20, 80)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
            if birth not in used_dates:
                used_dates.add(birth)
                break
        time_of_birth = f"{rng.randrange(0, 24):02d}{rng.randrange(0, 60):02d}{rng.randrange(0, 60):02d}"
        birth_time = f"{time_of_birth}.{rng.randrange(100000, 999999)}"
        accessions = [mark(f"AccessionNumber study {s} (raw, as a marker)") for s in range(2)]
        study_uids = []
        for s in range(2):
            # Patients 0, 3 and 6: malformed StudyInstanceUIDs that embed the MRN.
            study_uids.append(f"1.2.840.99.{mrn}.{p}.{s}" if p % 3 == 0 else _uid(p, "study", s))
        uids.update(study_uids)
        patients.append(_Patient(mrn, patient_id, birth, birth_time, accessions, study_uids))
    return patients


def _dataset(
    index: int, patient: _Patient, study: int, mark: _Minter, uids: set[str], rng: random.Random
) -> tuple[Dataset, HostileFile]:
    charset_value = _CHARSETS[index % len(_CHARSETS)]
    charset = charset_value if isinstance(charset_value, str) else "ISO 2022 IR 87"
    implicit = index % 5 == 4
    modality = ("CT", "MR", "OT")[index % 3]
    mrn = patient.mrn
    if index % 4 == 1:  # malformed series and instance UIDs embedding the MRN
        series_uid = f"1.2.840.99.{mrn}.{index}.2"
        sop_uid = f"1.2.840.99.{mrn}.{index}.2.1"
    else:
        series_uid, sop_uid = _uid(index, "series"), _uid(index, "sop")
    uids.update((series_uid, sop_uid))
    study_uid = patient.study_uids[study]
    sop_class = _SOP_CLASS[modality]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset_value
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    frame = _uid(index, "frame")
    uids.add(frame)
    ds.FrameOfReferenceUID = frame
    ds.StudyDate = "20210315"
    ds.StudyTime = f"08{index:02d}00"
    ds.SeriesDate = "20210315"
    ds.AcquisitionDate = "20210315"
    ds.AcquisitionTime = f"08{index:02d}30"
    ds.ContentDate = "20210315"
    ds.ContentTime = f"08{index:02d}31"
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Hostile 1"
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.StationName = STATION_NAME
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = index + 1
    ds.InstanceNumber = 1
    ds.AccessionNumber = patient.accessions[study]
    ds.PatientID = patient.patient_id

    # --- what the profile removes -------------------------------------------------------------
    ds.PatientName = _person(mark, "PatientName", charset)
    ds.PatientBirthDate = patient.birth_date
    ds.PatientBirthTime = patient.birth_time
    ds.OtherPatientIDs = [mark("OtherPatientIDs[0]"), mark("OtherPatientIDs[1]")]
    ds.OtherPatientNames = [_person(mark, "OtherPatientNames[0]", charset)]
    other = Dataset()
    other.PatientID = mark("OtherPatientIDsSequence[0].PatientID")
    other.IssuerOfPatientID = mark("OtherPatientIDsSequence[0].IssuerOfPatientID")
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.IssuerOfPatientID = mark("IssuerOfPatientID")
    ds.PatientAddress = _text(mark, "PatientAddress", charset)
    ds.PatientTelephoneNumbers = mark("PatientTelephoneNumbers")
    ds.PatientTelecomInformation = f"tel:{mark('PatientTelecomInformation')}"
    ds.PatientComments = _text(mark, "PatientComments", charset)
    ds.StudyDescription = _text(mark, "StudyDescription", charset)
    ds.SeriesDescription = _text(mark, "SeriesDescription", charset)
    ds.ImageComments = _text(mark, "ImageComments", charset)
    ds.InstitutionName = _text(mark, "InstitutionName", charset)
    ds.InstitutionAddress = _text(mark, "InstitutionAddress", charset)
    ds.InstitutionalDepartmentName = _text(mark, "InstitutionalDepartmentName", charset)
    ds.ReferringPhysicianName = _person(mark, "ReferringPhysicianName", charset)
    ds.ReferringPhysicianAddress = _text(mark, "ReferringPhysicianAddress", charset)
    ds.ReferringPhysicianTelephoneNumbers = mark("ReferringPhysicianTelephoneNumbers")
    ds.PerformingPhysicianName = _person(mark, "PerformingPhysicianName", charset)
    ds.OperatorsName = [
        _person(mark, "OperatorsName[0]", charset),
        _person(mark, "OperatorsName[1]", charset),
    ]
    ds.RequestingPhysician = _person(mark, "RequestingPhysician", charset)
    ds.NameOfPhysiciansReadingStudy = _person(mark, "NameOfPhysiciansReadingStudy", charset)
    ds.PhysiciansOfRecord = _person(mark, "PhysiciansOfRecord", charset)
    ds.AdditionalPatientHistory = _text(mark, "AdditionalPatientHistory", charset)
    ds.MedicalRecordLocator = mark("MedicalRecordLocator")
    ds.PatientMotherBirthName = _person(mark, "PatientMotherBirthName", charset)
    ds.Occupation = mark("Occupation")
    ds.EthnicGroup = mark("EthnicGroup")
    ds.PatientAge = f"{87 + index % 10:03d}Y"
    ds.PatientSex = "O"
    ds.PatientWeight = f"71.{3579 + index}"
    ds.PatientSize = f"1.{8642 + index}"
    ds.ProtocolName = _text(mark, "ProtocolName", charset)
    ds.StudyID = mark("StudyID")
    request = Dataset()
    request.AccessionNumber = patient.accessions[study]
    request.RequestedProcedureID = mark("RequestAttributesSequence[0].RequestedProcedureID")
    request.RequestedProcedureDescription = _text(
        mark, "RequestAttributesSequence[0].RequestedProcedureDescription", charset
    )
    request.ScheduledProcedureStepID = mark("RequestAttributesSequence[0].ScheduledProcedureStepID")
    request.ScheduledProcedureStepDescription = _text(
        mark, "RequestAttributesSequence[0].ScheduledProcedureStepDescription", charset
    )
    request.ScheduledProtocolCodeSequence = Sequence(
        [_code("P1", _text(mark, "RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeMeaning",
                           charset))]
    )  # fmt: skip
    ds.RequestAttributesSequence = Sequence([request])
    ds.ContentSequence = _content(mark, charset, mrn, uids, index)

    # --- what Table E.1-1 does not list -----------------------------------------------------
    ds.PatientBirthDateInAlternativeCalendar = mark("PatientBirthDateInAlternativeCalendar")
    ds.PatientDeathDateInAlternativeCalendar = mark("PatientDeathDateInAlternativeCalendar")
    ds.PatientAlternativeCalendar = "I"
    ds.EvaluatorName = _person(mark, "EvaluatorName", charset)
    ds.SecondaryReviewerName = _person(mark, "SecondaryReviewerName", charset)
    ds.AnatomicRegionSequence = _kept_nest(mark, charset, mrn, uids, index)
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = mark("IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID")
    issuer.UniversalEntityID = mark("IssuerOfAccessionNumberSequence[0].UniversalEntityID")
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = mark("IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID")
    qualifiers.UniversalEntityIDType = "ISO"
    qualifiers.IdentifierTypeCode = "MR"
    facility = Dataset()
    facility.LocalNamespaceEntityID = mark(
        "IssuerOfPatientIDQualifiersSequence[0].AssigningFacilitySequence[0].LocalNamespaceEntityID"
    )
    qualifiers.AssigningFacilitySequence = Sequence([facility])
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    placer = Dataset()
    placer.LocalNamespaceEntityID = mark("OrderPlacerIdentifierSequence[0].LocalNamespaceEntityID")
    placer.UniversalEntityID = mark("OrderPlacerIdentifierSequence[0].UniversalEntityID")
    placer.UniversalEntityIDType = "ISO"
    ds.OrderPlacerIdentifierSequence = Sequence([placer])
    ds.PatientSpeciesDescription = _text(mark, "PatientSpeciesDescription", charset)
    ds.CommentsOnTheScheduledProcedureStep = _text(mark, "CommentsOnTheScheduledProcedureStep", charset)
    ds.ReasonForCancellation = _text(mark, "ReasonForCancellation", charset)
    for keyword, vr in (_EXTRA_TEXT[index % len(_EXTRA_TEXT)], _EXTRA_TEXT[(index + 7) % len(_EXTRA_TEXT)]):
        value = mark(keyword) if vr in ("AE", "UR") else _text(mark, keyword, charset)
        ds.add_new(keyword, vr, value)
    for tag in REPEATING_TAGS:
        kind = "Overlay" if tag >> 24 == 0x60 else "Curve"
        name = kind + ("Description" if tag & 0xFFFF == 0x0022 else "Label")
        ds.add_new(tag, "LO", mark(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}"))
    for k, keyword in enumerate(
        (
            "CreatorVersionUID",
            "SOPInstanceUIDOfConcatenationSource",
            "MultiFrameSourceSOPInstanceUID",
            "ReferencedColorPaletteInstanceUID",
            "TargetFrameOfReferenceUID",
            "VolumeFrameOfReferenceUID",
        )
    ):
        # Half embed the raw MRN as is (malformed); half as a valid component when it is numeric.
        digits = mrn if k % 2 == 0 or not mrn.isdigit() else "1" + mrn
        uid = f"1.2.840.99.{digits}.{index}.{k + 10}"
        uids.add(uid)
        ds.add_new(keyword, "UI", uid)

    # --- private tags: with a creator, orphans, a private sequence of public PHI --------------
    _private_block(ds, mark, "top level", 0x0009)
    ds.add_new(0x00091003, "UI", f"1.2.840.99.{mrn}.{index}.99")
    uids.add(f"1.2.840.99.{mrn}.{index}.99")
    ds.add_new(0x00131010, "LO", mark("(0013,1010) orphan private"))
    inside = Dataset()
    inside.PatientName = _person(mark, "(0029,1001) private SQ[0].PatientName", charset)
    inside.add_new(0x00291002, "LO", mark("(0029,1001) private SQ[0].(0029,1002)"))
    ds.add_new(0x00290010, "LO", "HOSTILE SEQUENCES")
    ds.add_new(0x00291001, "SQ", Sequence([inside]))

    _pixels(ds, seed=rng.randrange(1 << 30), eight_bit=index % 6 == 5)
    entry = HostileFile(
        path=Path(),
        patient_id=patient.patient_id,
        mrn=mrn,
        accession=patient.accessions[study],
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        modality=modality,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        charset=charset,
    )
    return ds, entry


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _deep_anatomic_region(depth: int, top: str, inner: str) -> bytes:
    """Return AnatomicRegionSequence nested *depth* levels (explicit VR LE, undefined lengths).

    Written with struct: pydicom's writer and reader recurse several frames a
    level, so neither handles this depth (which is the point of the file).
    """

    def element(tag: int, vr: bytes, text: str) -> bytes:
        value = text.encode("ascii")
        value += b" " * (len(value) % 2)
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value

    opening: list[bytes] = []
    for level in range(depth):
        meaning = top if level == 0 else inner if level == depth - 1 else f"level {level}"
        opening.append(
            _ANATOMIC_REGION_SQ + b"\xff\xff\xff\xff" + _ITEM
            + element(0x00080100, b"SH", "T-D0050")
            + element(0x00080102, b"SH", "SCT")
            + element(0x00080104, b"LO", meaning)
        )  # fmt: skip
    closing = (_ITEM_END + _SEQUENCE_END) * depth
    return b"".join(opening) + closing


def _splice_deep(encoded: bytes, deep: bytes) -> bytes:
    """Replace the (one-item, flat) AnatomicRegionSequence of an encoded file with *deep*."""
    start = encoded.find(_ANATOMIC_REGION_SQ)
    if start < 0:
        raise ValueError("no AnatomicRegionSequence to replace")
    (length,) = struct.unpack_from("<I", encoded, start + 8)
    if length == 0xFFFFFFFF:
        end = encoded.index(_SEQUENCE_END, start) + len(_SEQUENCE_END)
    else:
        end = start + 12 + length
    return encoded[:start] + deep + encoded[end:]


def _write_deep(ds: Dataset, path: Path, depth: int, top: str, inner: str) -> None:
    """Write *ds* with its AnatomicRegionSequence replaced by one nested *depth* levels."""
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        raise ValueError("the deep sequence is encoded explicit VR little endian")
    ds.AnatomicRegionSequence = Sequence([_code("T-D0050", "placeholder")])
    path.write_bytes(_splice_deep(_encode(ds), _deep_anatomic_region(depth, top, inner)))


def deep_sequence_file(path: Path, depth: int = DEEP_DEPTH) -> Path:
    """Write an otherwise ordinary CT image whose AnatomicRegionSequence nests *depth* levels."""
    with _lenient_pydicom():
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = _uid(depth, "deep-sop", path.name)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = _uid(depth, "deep-study", path.name)
        ds.SeriesInstanceUID = _uid(depth, "deep-series", path.name)
        ds.Modality = "CT"
        ds.PatientID = "DEEP0001"
        ds.PatientName = "DEEP^SEQUENCE"
        ds.StudyDate = "20210315"
        _pixels(ds, seed=depth, eight_bit=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_deep(ds, path, depth, "outermost level", "innermost level")
    return path


def write_hostile_corpus(folder: Path, *, seed: int = 0, deep_depth: int = DEEP_DEPTH) -> HostileCorpus:
    """Write the hostile corpus into *folder* (``h00.dcm`` ... ``h39.dcm``) and return what it holds.

    The last file is the one with the too-deep kept sequence. Every file is
    its own series, so each one's header is what a per-series document holds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"niffler-hostile-{seed}")
    mark = _Minter(rng)
    uids: set[str] = set()
    entries: list[HostileFile] = []
    with _lenient_pydicom():
        patients = _patients(rng, mark, uids)
        for index in range(_FILES):
            path = folder / f"h{index:02d}.dcm"
            mark.file = path.name
            patient = patients[index * _PATIENTS // _FILES]
            study = (index % (_FILES // _PATIENTS)) * 2 // (_FILES // _PATIENTS)
            ds, entry = _dataset(index, patient, study, mark, uids, rng)
            deep = index == _FILES - 1
            if deep:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                top = mark(f"AnatomicRegionSequence level 0 of {deep_depth}, CodeMeaning")
                inner = mark(f"AnatomicRegionSequence level {deep_depth - 1}, CodeMeaning")
                _write_deep(ds, path, deep_depth, top, inner)
            else:
                ds.save_as(path, enforce_file_format=True)
            entries.append(replace(entry, path=path, expected_to_fail=deep, transfer_syntax=str(
                ds.file_meta.TransferSyntaxUID)))  # fmt: skip
    markers = set(mark.where)
    ids = {p.mrn for p in patients} | {p.patient_id for p in patients}
    ids |= {a for p in patients for a in p.accessions}
    where = dict(mark.where)
    for p, patient in enumerate(patients):
        where.setdefault(patient.mrn, f"patient {p} MRN (PatientID or inside UIDs)")
        where[patient.birth_date] = f"patient {p} PatientBirthDate"
        where[patient.birth_time] = f"patient {p} PatientBirthTime"
    for entry in entries:
        where.setdefault(entry.study_uid, f"{entry.path.name} StudyInstanceUID")
        where.setdefault(entry.series_uid, f"{entry.path.name} SeriesInstanceUID")
        where.setdefault(entry.sop_uid, f"{entry.path.name} SOPInstanceUID")
    for uid in uids:
        where.setdefault(uid, "a UID (unlisted UID attribute, nested reference or private)")
    return HostileCorpus(
        files=[e.path for e in entries],
        markers=markers,
        uids=uids,
        patient_ids=ids,
        birth_dates={p.birth_date for p in patients} | {p.birth_time for p in patients},
        failing={e.path for e in entries if e.expected_to_fail},
        entries=entries,
        where=where,
    )
