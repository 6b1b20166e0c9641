"""A generated, realistic stretch of a small radiology department's day, dated relative to now.

The quick start (:mod:`niffler.testing.demo`) and its integration test load
this into a local Orthanc. Everything is synthetic: no real patient.

- **Four scanners, four modalities**: a CT, an MR, a digital X-ray room (DX)
  and an ultrasound (US), each with its own manufacturer, model, station
  name and DeviceSerialNumber.
- **Nineteen exams of sixteen patients** over the last hour and a half
  before *end* (by default: now, to the minute), with the idle gaps a
  department has: a CT patient having chest and abdomen back to back (two
  studies, one encounter), long MR exams, quick X-rays, a patient seen on
  two scanners.
- **One misconfigured clock**: the X-ray room stamps every date and time
  three hours behind the real time (:data:`MISCONFIGURED`), the way a
  device never set after a power cut, or set to the wrong zone, does.

Why the last hour and a half and not a whole working day: niffler-meta's
clock-skew report compares each study's arrival with its acquisition time,
and the quick start streams every exam in at once, now. A healthy
scanner's skew is then how long ago its exam ended (in a department whose
PACS forwards each study on completion it is minutes). A whole day would
flag every scanner; in the last hour and a half, the schedule keeps each
healthy scanner's median skew under 45 minutes, below the report's 1-hour
threshold, and only the misconfigured clock is flagged.
Run between midnight and about 01:40, the stretch starts the day before,
and before about 04:30 the X-ray room's stamps fall on the day before:
the quick start's utilization report then covers both days.

Identifiers are fixed (PatientIDs with leading zeros, AccessionNumbers,
UIDs derived from them), so ``configs/sample-studies.csv`` names studies
that exist whatever day it is; only dates and times follow the clock.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from niffler.app_layer.clock import site_timezone
from niffler.testing.corpus import Instance, Scanner, make_instance

__all__ = [
    "EXAMS",
    "MISCONFIGURED",
    "PATIENTS",
    "SCANNERS",
    "Department",
    "DepartmentScanner",
    "Exam",
    "Patient",
    "ScheduledStudy",
    "generate_department",
]


@dataclass(frozen=True)
class DepartmentScanner:
    """A scanner of the department: how it identifies itself, what it stores, and how wrong its clock is."""

    scanner: Scanner
    sop_class: UID
    #: Instances per series.
    instances: int
    #: Stored bits per pixel (8 or 16 allocated).
    bits_allocated: int = 16
    #: Hours the scanner's clock is off: it stamps ``real time + clock_offset_hours``.
    clock_offset_hours: float = 0.0
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")

    @property
    def serial(self) -> str:
        return self.scanner.serial


@dataclass(frozen=True)
class Patient:
    """A synthetic patient."""

    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class Exam:
    """One study on the schedule. Times are minutes before the end of the stretch, real time."""

    patient: int
    station: str
    accession: str
    description: str
    body_part: str
    start_minutes_before_end: float
    #: Series descriptions, one series each.
    series: tuple[str, ...]
    #: Minutes between the starts of consecutive series.
    series_spacing_minutes: float


SCANNERS: tuple[DepartmentScanner, ...] = (
    DepartmentScanner(
        Scanner(serial="CT7A2291", station="CT01", institution="Springfield General Hospital",
                manufacturer="Northwind Medical", model="Helix 128", modality="CT"),
        CTImageStorage, instances=8, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    ),
    DepartmentScanner(
        Scanner(serial="MR31F0047", station="MR01", institution="Springfield General Hospital",
                manufacturer="Northwind Medical", model="Aurora 1.5T", modality="MR"),
        MRImageStorage, instances=6, image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
    ),
    DepartmentScanner(
        Scanner(serial="DX5K1183", station="XRAY2", institution="Springfield General Hospital",
                manufacturer="Meridian Imaging", model="Clarity DR", modality="DX"),
        DigitalXRayImageStorageForPresentation, instances=1, clock_offset_hours=-3.0,
    ),
    DepartmentScanner(
        Scanner(serial="US9C0450", station="US01", institution="Springfield General Hospital",
                manufacturer="Meridian Imaging", model="Sonora 9", modality="US"),
        UltrasoundImageStorage, instances=3, bits_allocated=8,
    ),
)  # fmt: skip
#: The DeviceSerialNumber of the scanner whose clock is wrong (and the only one the skew report flags).
MISCONFIGURED = next(s.serial for s in SCANNERS if s.clock_offset_hours)

PATIENTS: tuple[Patient, ...] = (
    Patient("0072301", "HOLLOWAY^MARGARET", "19480312", "F"),
    Patient("0072302", "OKAFOR^DANIEL", "19790824", "M"),
    Patient("0072303", "LINDQVIST^ASTRID", "19610105", "F"),
    Patient("0072304", "BRENNAN^PATRICK", "19920417", "M"),
    Patient("0072305", "NAKAMURA^YUKI", "19850930", "F"),
    Patient("0072306", "ADEYEMI^SAMUEL", "19731118", "M"),
    Patient("0072307", "COSTA^BEATRIZ", "19560602", "F"),
    Patient("0072308", "WALSH^CONOR", "20010221", "M"),
    Patient("0072309", "PETROVA^IRINA", "19440729", "F"),
    Patient("0072310", "GARCIA^LUIS", "19680313", "M"),
    Patient("0072311", "MBEKI^THANDIWE", "19990808", "F"),
    Patient("0072312", "KOWALSKI^JAN", "19520114", "M"),
    Patient("0072313", "HASSAN^LAYLA", "19870526", "F"),
    Patient("0072314", "MEYER^FELIX", "20120903", "M"),
    Patient("0072315", "SORENSEN^INGRID", "19760411", "F"),
    Patient("0072316", "ODUYA^GRACE", "19640220", "F"),
)

_CT2 = ("SCOUT", "AXIAL 1.25MM")
_XR2 = ("PA", "LATERAL")
_US3 = ("TRANSVERSE", "SAGITTAL", "DOPPLER")
EXAMS: tuple[Exam, ...] = (
    # CT01: head, a chest-abdomen pair for one patient (one encounter), then three short exams.
    Exam(0, "CT01", "RA24071001", "CT HEAD WO CONTRAST", "HEAD", 74, _CT2, 3),
    Exam(1, "CT01", "RA24071002", "CT CHEST W CONTRAST", "CHEST", 60, _CT2, 4),
    Exam(1, "CT01", "RA24071003", "CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN", 53, _CT2, 4),
    Exam(2, "CT01", "RA24071004", "CT HEAD WO CONTRAST", "HEAD", 36, _CT2, 3),
    Exam(3, "CT01", "RA24071005", "CT CERVICAL SPINE WO CONTRAST", "CSPINE", 22, _CT2, 3),
    Exam(4, "CT01", "RA24071006", "CT CHEST WO CONTRAST", "CHEST", 10, _CT2, 4),
    # MR01: three long exams with short changeovers.
    Exam(5, "MR01", "RA24071007", "MR KNEE WO CONTRAST", "KNEE", 95,
         ("LOC", "PD FS COR", "T1 SAG", "PD FS AX"), 8),
    Exam(6, "MR01", "RA24071008", "MR BRAIN W WO CONTRAST", "HEAD", 62,
         ("LOC", "T2 AX", "FLAIR AX", "DWI", "T1 POST AX"), 7),
    Exam(7, "MR01", "RA24071009", "MR LUMBAR SPINE WO CONTRAST", "LSPINE", 27,
         ("LOC", "T2 SAG", "T1 SAG", "T2 AX"), 6),
    # XRAY2 (clock three hours behind): quick two-view X-rays; patient 0 comes over from the CT.
    Exam(8, "XRAY2", "RA24071010", "XR CHEST 2 VIEWS", "CHEST", 88, _XR2, 1),
    Exam(9, "XRAY2", "RA24071011", "XR CHEST 2 VIEWS", "CHEST", 79, _XR2, 1),
    Exam(0, "XRAY2", "RA24071012", "XR CHEST 2 VIEWS", "CHEST", 65, _XR2, 1),
    Exam(10, "XRAY2", "RA24071013", "XR KNEE 2 VIEWS", "KNEE", 51, ("AP", "LATERAL"), 1),
    Exam(11, "XRAY2", "RA24071014", "XR HAND 3 VIEWS", "HAND", 43, ("PA", "OBLIQUE", "LATERAL"), 1),
    Exam(12, "XRAY2", "RA24071015", "XR CHEST 2 VIEWS", "CHEST", 24, _XR2, 1),
    Exam(13, "XRAY2", "RA24071016", "XR ANKLE 2 VIEWS", "ANKLE", 12, ("AP", "LATERAL"), 1),
    # US01
    Exam(14, "US01", "RA24071017", "US ABDOMEN COMPLETE", "ABDOMEN", 82, _US3, 4),
    Exam(15, "US01", "RA24071018", "US THYROID", "NECK", 50, _US3, 4),
    Exam(9, "US01", "RA24071019", "US RENAL", "KIDNEY", 28, _US3, 4),
)  # fmt: skip
_BY_STATION = {s.scanner.station: s for s in SCANNERS}
_NAMESPACE = "niffler-quickstart-department"


@dataclass(frozen=True)
class ScheduledStudy:
    """An exam as generated: its UID, its real start and end, and what the scanner stamped."""

    exam: Exam
    scanner: DepartmentScanner
    patient: Patient
    study_uid: str
    #: Real wall-clock times (site time zone) of its first and last acquisition.
    started: datetime
    ended: datetime
    #: The same, as the scanner's clock stamped them.
    stamped_start: datetime
    stamped_end: datetime
    instances: tuple[Instance, ...]

    @property
    def study_date(self) -> str:
        return self.stamped_start.strftime("%Y%m%d")


@dataclass(frozen=True)
class Department:
    """The generated stretch: its studies in schedule order and every instance written."""

    end: datetime
    studies: tuple[ScheduledStudy, ...]

    @property
    def instances(self) -> list[Instance]:
        return [i for s in self.studies for i in s.instances]

    @property
    def patients(self) -> set[str]:
        return {s.patient.patient_id for s in self.studies}

    @property
    def series(self) -> set[str]:
        return {i.series_uid for i in self.instances}

    @property
    def study_dates(self) -> list[str]:
        """The StudyDates the scanners stamped, sorted (one day, or two around midnight)."""
        return sorted({s.study_date for s in self.studies})

    def forwarding_order(self) -> list[ScheduledStudy]:
        """The studies in the order they were completed: the order a PACS forwards them in."""
        return sorted(self.studies, key=lambda s: (s.ended, s.exam.accession))

    def write_schedule(self, path: Path) -> None:
        """Write the schedule as CSV: one row per study, real and stamped times (synthetic data only)."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([
                "PatientID", "PatientName", "AccessionNumber", "StudyDescription", "Modality", "StationName",
                "DeviceSerialNumber", "real_start", "real_end", "stamped_start", "stamped_end", "series",
                "instances",
            ])  # fmt: skip
            for s in sorted(self.studies, key=lambda s: (s.scanner.scanner.station, s.started)):
                writer.writerow([
                    s.patient.patient_id, s.patient.name, s.exam.accession, s.exam.description,
                    s.scanner.scanner.modality, s.scanner.scanner.station, s.scanner.serial,
                    f"{s.started:%Y-%m-%d %H:%M:%S}", f"{s.ended:%Y-%m-%d %H:%M:%S}",
                    f"{s.stamped_start:%Y-%m-%d %H:%M:%S}", f"{s.stamped_end:%Y-%m-%d %H:%M:%S}",
                    len(s.exam.series), len(s.instances),
                ])  # fmt: skip


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[_NAMESPACE, *map(str, parts)]))


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode("ascii"))


def _age(birth: str, on: date) -> str:
    born = datetime.strptime(birth, "%Y%m%d").date()
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{years:03d}Y"


def _phantom(modality: str, rows: int, columns: int, index: int, seed: int) -> np.ndarray:
    """A small synthetic image that looks like its modality at a glance (never a real image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    ny, nx = (y - cy) / (rows / 2), (x - cx) / (columns / 2)
    if modality == "US":
        # A fan-shaped sector of speckle with a dark round structure.
        radius = np.hypot(nx, ny + 1.0)
        angle = np.abs(np.arctan2(nx, ny + 1.0))
        sector = (radius < 1.9) & (angle < 0.6)
        image = rng.gamma(2.0, 40.0, size=(rows, columns)) * sector
        image[np.hypot(nx - 0.1, ny - 0.2) < 0.2] *= 0.15
        return np.asarray(np.clip(image, 0, 255), dtype=np.uint8)
    body = (nx / 0.85) ** 2 + (ny / 0.7) ** 2 < 1
    if modality == "DX":
        lungs = ((np.abs(nx) - 0.38) / 0.28) ** 2 + (ny / 0.55) ** 2 < 1
        image = 900 + 2200 * body - 1300 * lungs + 400 * (np.abs(nx) < 0.06) * body
    else:
        wobble = 0.08 * np.sin(index / 2.0)
        inner = ((nx - wobble) / 0.35) ** 2 + (ny / 0.3) ** 2 < 1
        ring = (np.hypot(nx, ny) > 0.62) & (np.hypot(nx, ny) < 0.68)
        if modality == "CT":  # stored = HU + 1024: fat, soft tissue, a vessel, a bony ring
            image = 0 + body * (1024 - 90) + inner * 150 + ring * body * 800
        else:  # MR: arbitrary intensities
            image = body * 500 + inner * 600 + ring * body * 250
    noise = rng.normal(0, 12, size=(rows, columns))
    return np.asarray(np.clip(image + noise, 0, 4095), dtype=np.uint16)


def _dataset(
    instance: Instance,
    scanner: DepartmentScanner,
    exam: Exam,
    patient: Patient,
    *,
    stamped_start: datetime,
    series_number: int,
    instance_number: int,
    rows: int,
    columns: int,
) -> Dataset:
    seed = _seed(instance.sop_uid)
    ds = make_instance(
        instance,
        study_time=stamped_start,
        series_number=series_number,
        instance_number=instance_number,
        rows=rows,
        columns=columns,
        bits_allocated=scanner.bits_allocated,
        pixel_seed=seed & 0xFFFF,
    )
    modality = scanner.scanner.modality
    ds.file_meta.MediaStorageSOPClassUID = scanner.sop_class
    ds.SOPClassUID = scanner.sop_class
    ds.ImageType = list(scanner.image_type)
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, stamped_start.date())
    ds.StudyDescription = exam.description
    ds.SeriesDescription = exam.series[series_number - 1]
    ds.ProtocolName = exam.description
    ds.BodyPartExamined = exam.body_part
    ds.InstitutionalDepartmentName = "Radiology"
    pixels = _phantom(modality, rows, columns, instance_number, seed)
    ds.PixelData = pixels.tobytes()
    if modality == "CT":
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        del ds.RescaleIntercept, ds.RescaleSlope, ds.SliceThickness
        center, width = {"MR": ("600", "1200"), "DX": ("1800", "3600"), "US": ("128", "256")}[modality]
        ds.WindowCenter, ds.WindowWidth = center, width
    return ds


def generate_department(
    out_dir: str | Path,
    end: datetime | None = None,
    *,
    rows: int = 96,
    columns: int = 96,
) -> Department:
    """Write the department's studies under *out_dir* and return them.

    *end* is the real (site local, naive) time the stretch ends at; by
    default now in the site time zone (the one the scanner reports read
    times in), to the minute. Every exam ended at least 3 minutes before it.
    Files are ``<station>/<accession>/<series>_<instance>.dcm``.
    """
    out = Path(out_dir)
    end = end or datetime.now(site_timezone()).replace(tzinfo=None, second=0, microsecond=0)
    studies = []
    for exam in EXAMS:
        scanner = _BY_STATION[exam.station]
        patient = PATIENTS[exam.patient]
        offset = timedelta(hours=scanner.clock_offset_hours)
        started = end - timedelta(minutes=exam.start_minutes_before_end)
        stamped_start = started + offset
        study_uid = _uid("study", exam.accession)
        folder = out / exam.station / exam.accession
        folder.mkdir(parents=True, exist_ok=True)
        instances: list[Instance] = []
        last = started
        for r in range(len(exam.series)):
            series_uid = _uid("series", exam.accession, r)
            series_start = started + timedelta(minutes=r * exam.series_spacing_minutes)
            for i in range(scanner.instances):
                real = series_start + timedelta(seconds=2 * i)
                last = max(last, real)
                instance = Instance(
                    path=folder / f"{r + 1:02d}_{i + 1:04d}.dcm",
                    patient_id=patient.patient_id,
                    patient_name=patient.name,
                    birth_date=patient.birth_date,
                    accession=exam.accession,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=_uid("sop", exam.accession, r, i),
                    study_date=stamped_start.strftime("%Y%m%d"),
                    acquisition=real + offset,
                    scanner=scanner.scanner,
                )
                ds = _dataset(
                    instance, scanner, exam, patient,
                    stamped_start=stamped_start, series_number=r + 1, instance_number=i + 1,
                    rows=rows, columns=columns,
                )  # fmt: skip
                ds.save_as(instance.path, enforce_file_format=True)
                instances.append(instance)
        studies.append(
            ScheduledStudy(
                exam=exam,
                scanner=scanner,
                patient=patient,
                study_uid=study_uid,
                started=started,
                ended=last,
                stamped_start=stamped_start,
                stamped_end=last + offset,
                instances=tuple(instances),
            )
        )
    return Department(end=end, studies=tuple(studies))
