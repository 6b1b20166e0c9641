"""A corpus that mixes transfer syntaxes, for interoperability tests against real PACS.

Every study holds instances in every syntax below, so a retrieval that
mishandles one syntax loses instances of every study:

====================================  ======================  ========
transfer syntax                       encoder                 lossless
====================================  ======================  ========
Explicit VR Little Endian             pydicom                 yes
Implicit VR Little Endian             pydicom                 yes
Explicit VR Big Endian (retired)      pydicom (bytes swapped) yes
Deflated Explicit VR Little Endian    pydicom                 yes
JPEG 2000 (lossless only)             pylibjpeg-openjpeg      yes
JPEG-LS lossless                      pyjpegls                yes
JPEG Lossless SV1 (process 14)        GDCM                    yes
RLE Lossless                          pydicom                 yes
JPEG Baseline (process 1)             Pillow                  **no**
====================================  ======================  ========

The JPEG Baseline instances are *originals that are lossy*: 8-bit Secondary
Capture images compressed at acquisition, with LossyImageCompression "01".
All others are 16-bit CT images (12 bits stored). The manifest records,
for each instance, its identifiers, its transfer syntax and its decoded
pixels (and their hash), so a test can check that what arrived decodes to
what was sent, whatever lossless syntax it travelled in.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from niffler.testing.corpus import Instance, Scanner, make_instance

__all__ = [
    "LOSSLESS_SYNTAXES",
    "LOSSY_ORIGINAL_SYNTAXES",
    "MIXED_SYNTAXES",
    "InteropInstance",
    "InteropSpec",
    "decoded",
    "generate_interop_corpus",
    "pixel_hash",
]

#: The syntaxes of the corpus, in the order they are dealt to the instances of a study.
MIXED_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    RLELossless,
    JPEGBaseline8Bit,
)
#: Syntaxes of the corpus whose originals are lossy.
LOSSY_ORIGINAL_SYNTAXES: frozenset[str] = frozenset({JPEGBaseline8Bit})
#: Every transfer syntax that keeps pixels bit for bit (PS3.5 Table A-1 / 8-1).
LOSSLESS_SYNTAXES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless (process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 (lossless only)
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }
)


@dataclass(frozen=True)
class InteropSpec:
    """How many patients, studies, series and instances; every study gets every syntax in turn."""

    patients: int = 2
    studies_per_patient: int = 2
    series_per_study: int = 3
    instances_per_series: int = 3
    rows: int = 48
    columns: int = 40
    syntaxes: Sequence[UID] = MIXED_SYNTAXES
    start: datetime = datetime(2021, 3, 4, 8, 0, 0)
    #: Days between consecutive studies of one patient; patients start on the same day,
    #: so a StudyDate alone matches one study of every patient.
    study_spacing_days: int = 61
    seed: int = 11


@dataclass(frozen=True)
class InteropInstance:
    """One instance of the corpus: identifiers, transfer syntax and decoded pixels."""

    path: Path
    patient_id: str
    accession: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    study_date: str
    transfer_syntax: str
    #: True when the original itself is lossy (LossyImageCompression "01").
    lossy: bool
    #: :func:`pixel_hash` of the decoded pixels of the file as written.
    pixel_sha256: str
    pixels: np.ndarray[Any, Any] = field(compare=False, repr=False)


def decoded(ds: Dataset) -> np.ndarray[Any, Any]:
    """Return the decoded pixels of *ds* in native byte order (big-endian files decode as ``>u2``)."""
    arr: np.ndarray[Any, Any] = ds.pixel_array
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))


def pixel_hash(arr: np.ndarray[Any, Any]) -> str:
    """SHA-256 of the pixel values, their dtype (native order) and shape."""
    native = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))
    digest = hashlib.sha256(f"{native.dtype.str}{native.shape}".encode())
    digest.update(native.tobytes())
    return digest.hexdigest()


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["interop", str(seed), *map(str, parts)]))


def _image(rows: int, columns: int, bits: int, seed: int) -> np.ndarray[Any, Any]:
    """A smooth gradient with a disc and noise: compressible, yet every pixel matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    top = (1 << bits) - 1
    base = (x * top // max(columns - 1, 1) + y * top // max(rows - 1, 1)) // 2
    disc = (x - columns // 2) ** 2 + (y - rows // 2) ** 2 < (min(rows, columns) // 4) ** 2
    noise = rng.integers(0, max(top // 16, 2), size=(rows, columns))
    img: np.ndarray[Any, Any] = np.clip(base + disc * (top // 3) + noise, 0, top)
    return img.astype(np.uint16 if bits > 8 else np.uint8)


def _gdcm_jpeg_lossless_sv1(ds: Dataset) -> Dataset:
    """Encode *ds* as JPEG Lossless SV1 with GDCM (pydicom has no encoder for it)."""
    import gdcm  # optional codec: only this syntax needs it

    with tempfile.TemporaryDirectory(prefix="niffler-interop-") as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the generated instance")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("GDCM could not encode JPEG Lossless SV1")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the JPEG Lossless SV1 instance")
        return dcmread(dst)


def _jpeg_baseline(ds: Dataset, arr: np.ndarray[Any, Any]) -> None:
    """Make *ds* an 8-bit original compressed lossy at acquisition (JPEG Baseline, Pillow)."""
    from PIL import Image  # optional codec: only this syntax needs it

    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=85, optimize=False, progressive=False)
    frame = buffer.getvalue()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{arr.nbytes / len(frame):.2f}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def _encode(ds: Dataset, syntax: UID, arr: np.ndarray[Any, Any]) -> Dataset:
    if syntax == JPEGBaseline8Bit:
        _jpeg_baseline(ds, arr)
        return ds
    if syntax == JPEGLosslessSV1:
        return _gdcm_jpeg_lossless_sv1(ds)
    if syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless):
        ds.compress(syntax, arr, generate_instance_uid=False)
        return ds
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian and arr.dtype.itemsize > 1:
        ds.PixelData = arr.byteswap().tobytes()  # pydicom writes OW bytes as they are
    return ds


def _make(inst: Instance, syntax: UID, spec: InteropSpec, study_time: datetime, series: int, number: int,
          seed: int) -> tuple[Dataset, np.ndarray[Any, Any]]:  # fmt: skip
    lossy = syntax in LOSSY_ORIGINAL_SYNTAXES
    bits = 8 if lossy else 16
    ds = make_instance(
        inst, study_time=study_time, series_number=series, instance_number=number,
        rows=spec.rows, columns=spec.columns, bits_allocated=bits, pixel_seed=seed,
    )  # fmt: skip
    if lossy:  # the CT IOD needs 16 bits allocated: an 8-bit capture is Secondary Capture
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.ConversionType = "DI"
        del ds.RescaleIntercept, ds.RescaleSlope
    arr = _image(spec.rows, spec.columns, 8 if lossy else int(ds.BitsStored), seed)
    ds.PixelData = arr.tobytes()
    return ds, arr


def generate_interop_corpus(out_dir: str | Path, spec: InteropSpec | None = None) -> list[InteropInstance]:
    """Write the mixed-syntax corpus into *out_dir* and return its manifest.

    PatientIDs are ``0001xx`` (leading zeros), accessions ``IOPpppss``. The
    k-th instance of a study (series by series) gets ``spec.syntaxes[k %
    len]``, so with the defaults (3 series x 3 instances) every study holds
    all nine syntaxes. Each written file is read back and decoded; a lossless
    one must decode to exactly the generated pixels.
    """
    spec = spec or InteropSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest: list[InteropInstance] = []
    for p in range(spec.patients):
        patient_id = f"{100 + p + 1:06d}"
        for s in range(spec.studies_per_patient):
            study_time = spec.start + timedelta(days=s * spec.study_spacing_days, hours=p)
            accession = f"IOP{p:03d}{s:02d}"
            study_uid = _uid(spec.seed, "study", p, s)
            k = 0
            for r in range(spec.series_per_study):
                series_uid = _uid(spec.seed, "series", p, s, r)
                for i in range(spec.instances_per_series):
                    syntax = spec.syntaxes[k % len(spec.syntaxes)]
                    k += 1
                    inst = Instance(
                        path=out / f"p{p:02d}_s{s:02d}_r{r:02d}_i{i:03d}.dcm",
                        patient_id=patient_id,
                        patient_name=f"INTEROP^PATIENT{p + 1}",
                        birth_date="19700101",
                        accession=accession,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=_uid(spec.seed, "sop", p, s, r, i),
                        study_date=study_time.strftime("%Y%m%d"),
                        acquisition=study_time + timedelta(minutes=5 * r, seconds=i),
                        scanner=Scanner(),
                    )
                    seed = spec.seed * 1_000_000 + p * 10_000 + s * 100 + r * 10 + i
                    ds, arr = _make(inst, syntax, spec, study_time, r + 1, i + 1, seed)
                    ds = _encode(ds, syntax, arr)
                    ds.save_as(inst.path, enforce_file_format=True)
                    manifest.append(_verified(inst, syntax, arr))
    return manifest


def _verified(inst: Instance, syntax: UID, arr: np.ndarray[Any, Any]) -> InteropInstance:
    back = dcmread(inst.path)
    if back.file_meta.TransferSyntaxUID != syntax:
        raise RuntimeError(f"{inst.path} was written as {back.file_meta.TransferSyntaxUID}, not {syntax}")
    if back.SOPInstanceUID != inst.sop_uid or back.file_meta.MediaStorageSOPInstanceUID != inst.sop_uid:
        raise RuntimeError(f"{inst.path} ({syntax.name}) does not carry the SOPInstanceUID it was given")
    pixels = decoded(back)
    lossy = syntax in LOSSY_ORIGINAL_SYNTAXES
    if not lossy and not np.array_equal(pixels, arr):
        raise RuntimeError(f"{inst.path} ({syntax.name}) does not decode to the pixels it was given")
    return InteropInstance(
        path=inst.path,
        patient_id=inst.patient_id,
        accession=inst.accession,
        study_uid=inst.study_uid,
        series_uid=inst.series_uid,
        sop_uid=inst.sop_uid,
        sop_class_uid=str(back.SOPClassUID),
        study_date=inst.study_date,
        transfer_syntax=str(syntax),
        lossy=lossy,
        pixel_sha256=pixel_hash(pixels),
        pixels=pixels,
    )
