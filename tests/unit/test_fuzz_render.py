"""Fuzzing the PNG renderer: any pixels pydicom decodes become a valid PNG image or a named refusal.

Images are generated as a file would hold them (written by pydicom, read back by pydicom, pixels
decoded by pydicom as ``niffler-png`` does): BitsAllocated 1/8/16/32, any BitsStored up to it,
signed or unsigned, MONOCHROME1/2, RGB, YBR_FULL, PALETTE COLOR (with or without its tables) and
unsupported interpretations, 1 to 3 frames, constant images, and RescaleSlope / RescaleIntercept /
WindowCenter / WindowWidth / VOILUTFunction of any DS text (NaN, inf, zero, negative, below 1,
multi-valued, an empty first value), at the top level or in the functional groups.

Properties:

- :func:`render_frame` returns a uint8 (8-bit output) or uint16 (16-bit) array of the frame's
  shape, (rows, cols) grey or (rows, cols, 3) colour, or raises :class:`UnsupportedImage`;
  never another exception (the batch would log it as "unexpected-error");
- with VOI ``minmax`` and a finite, non-zero rescale, a non-constant grey image spans the
  whole output range (MONOCHROME1 inverted);
- :func:`encode_png` of that array is a PNG that pypng decodes to the same samples;
- end to end, :meth:`Converter.convert` of such a file never raises and never fails as
  "unexpected-error": a failure is one of the named reasons.

Run: ``.venv/bin/python -m pytest tests/unit/test_fuzz_render.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import png
import pydicom
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import iter_pixels
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from niffler.common.deid import DeidSettings, Policy
from niffler.png_extraction.pipeline import Converter
from niffler.png_extraction.render import RenderOptions, UnsupportedImage, encode_png, render_frame

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
RUNS: Counter[str] = Counter()
_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

#: DS texts as a file may hold them (pydicom reads each; the renderer must cope).
NUMBERS = ["1", "0", "-1", "2.5", "0.5", "1e-30", "1e30", "1e400", "-1e400", "NaN", "inf", "-inf", "1024",
           "-1024", "40\\400", "1\\"]  # fmt: skip
#: DS texts whose first value is empty (pydicom reads "\\40" as ['', 40]): rendered as if absent.
EMPTY_FIRST = ["\\40", "\\", "\\1\\2"]
FUNCTIONS = ["LINEAR", "LINEAR_EXACT", "SIGMOID", "", "BOGUS", "sigmoid"]
GREY = ["MONOCHROME2", "MONOCHROME1"]
COLOUR = ["RGB", "YBR_FULL"]
OTHER = ["PALETTE COLOR", "", "HSV", "ARGB", "monochrome2"]
_DTYPES = {(1, 0): np.uint8, (8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16,
           (32, 0): np.uint32, (32, 1): np.int32}  # fmt: skip
DOCUMENTED_FAILURES = {
    "unsupported-photometric", "decode-error", "deidentification-error", "unreadable-header", "no-pixel-data",
    "not-dicom", "write-error",
}  # fmt: skip


@dataclass
class Image:
    """A generated image file's bytes and what was put in it."""

    data: bytes
    photometric: str
    samples: int
    frames: int
    rows: int
    cols: int
    attributes: dict[str, Any]

    def __repr__(self) -> str:
        shape = f"{self.frames}x{self.rows}x{self.cols}"
        return f"Image({self.photometric!r}, samples={self.samples}, {shape}, {self.attributes})"


def _palette(draw: st.DrawFn, ds: Dataset, attributes: dict[str, Any]) -> None:
    """The three palette tables (or, at random, none: a PALETTE COLOR image without them)."""
    if draw(st.integers(0, 3)) == 0:
        attributes["palette"] = "missing"
        return
    entries = draw(st.integers(1, 16))
    first = draw(st.integers(0, 8))
    bits = draw(st.sampled_from([8, 16]))
    attributes["palette"] = [entries, first, bits]
    for colour in ("Red", "Green", "Blue"):
        table = draw(arrays(np.uint16, entries, elements=st.integers(0, (1 << bits) - 1)))
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries, first, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())


@st.composite
def images(draw: st.DrawFn) -> Image:
    """An image file, as a file may hold it (the inputs of the fixed failures below included)."""
    kind = draw(st.sampled_from(["grey", "grey", "grey", "colour", "other"]))
    photometric = draw(st.sampled_from(GREY if kind == "grey" else COLOUR if kind == "colour" else OTHER))
    samples = 3 if kind == "colour" else 1
    if draw(st.integers(0, 19)) == 0:
        samples = 4 - samples  # a samples-per-pixel that does not match the interpretation
    allocated = draw(st.sampled_from([8, 16, 32, 1] if samples == 1 and kind == "grey" else [8, 16]))
    stored = allocated if allocated == 1 else draw(st.integers(1, allocated))
    signed = 0 if samples == 3 or allocated == 1 else draw(st.integers(0, 1))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if allocated == 1:
        cols = 8  # whole bytes per frame, as pydicom packs them
    frames = draw(st.integers(1, 3))
    dtype = _DTYPES[(allocated, signed)]
    shape = (frames, rows, cols, 3) if samples == 3 else (frames, rows, cols)
    if allocated == 1:
        pixels = draw(arrays(np.uint8, shape, elements=st.integers(0, 1)))
    elif draw(st.integers(0, 4)) == 0:
        pixels = np.full(shape, draw(st.integers(0, 100)), dtype)  # a constant image
    else:
        low, high = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
        pixels = draw(
            arrays(dtype, shape, elements=st.integers(max(low, -(1 << 31)), min(high, (1 << 32) - 1)))
        )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "1.2.3", "1.2.3.4", "FUZZ"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = signed
    ds.Rows, ds.Columns = rows, cols
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1 or draw(st.booleans()):
        ds.NumberOfFrames = frames
    attributes: dict[str, Any] = {
        "BitsAllocated": allocated,
        "BitsStored": stored,
        "PixelRepresentation": signed,
    }
    numbers = NUMBERS + EMPTY_FIRST
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if draw(st.booleans()):
            attributes[keyword] = draw(st.sampled_from(numbers))
            setattr(ds, keyword, attributes[keyword])
    if draw(st.booleans()):
        attributes["VOILUTFunction"] = draw(st.sampled_from(FUNCTIONS))
        ds.VOILUTFunction = attributes["VOILUTFunction"]
    if draw(st.integers(0, 4)) == 0:  # a window in the functional groups, as enhanced images have it
        group_name = draw(
            st.sampled_from(["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
        )
        voi = Dataset()
        voi.WindowCenter = draw(st.sampled_from(numbers))
        voi.WindowWidth = draw(st.sampled_from(numbers))
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        setattr(ds, group_name, Sequence([group]))
        attributes[group_name] = (voi.WindowCenter, voi.WindowWidth)
    if photometric == "PALETTE COLOR":
        _palette(draw, ds, attributes)
    if allocated == 1:
        ds.PixelData = np.packbits(pixels.reshape(-1), bitorder="little").tobytes()
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Image(buffer.getvalue(), photometric, samples, frames, rows, cols, attributes)


def _decoded_frames(ds: Dataset) -> list[np.ndarray]:
    """The frames as niffler-png decodes them (pipeline._frames), or raise what pydicom raises."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = ds.pixel_array
        return [pixels[0] if pixels.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1 else pixels]
    return list(iter_pixels(ds))


@pytest.fixture(scope="module", autouse=True)
def _as_the_clis_do() -> Iterator[None]:
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield
    pydicom_config.settings.reading_validation_mode = mode


options = st.one_of(
    st.builds(
        RenderOptions, bit_depth=st.sampled_from([8, 16]), voi=st.sampled_from(["dataset", "minmax", "none"])
    ),
    st.builds(
        RenderOptions,
        bit_depth=st.sampled_from([8, 16]),
        voi=st.just("window"),
        window_center=st.floats(-1e6, 1e6),
        window_width=st.floats(1, 1e6),
    ),
)


def _check_image(image: np.ndarray, frame: np.ndarray, item: Image, option: RenderOptions) -> None:
    expected = np.uint8 if option.bit_depth == 8 else np.uint16
    assert isinstance(image, np.ndarray) and image.dtype == expected, image.dtype
    assert image.shape in ((item.rows, item.cols), (item.rows, item.cols, 3)), image.shape
    if frame.ndim == 2:
        assert image.shape[:2] == frame.shape
    decoded = png.Reader(bytes=encode_png(image)).read_flat()
    width, height, samples, info = decoded
    assert (height, width) == image.shape[:2] and info["bitdepth"] == option.bit_depth
    assert np.array_equal(np.asarray(samples).reshape(image.shape), image), "the PNG does not hold the image"


def _full_range_expected(ds: Dataset, frame: np.ndarray, option: RenderOptions) -> bool:
    """Minmax VOI of a grey image whose modality values are finite and not all equal: black to white."""
    if option.voi != "minmax" or frame.ndim != 2 or "ModalityLUTSequence" in ds:
        return False
    # Grey as render_frame reads it (a PALETTE COLOR frame is 2-D too, but its colours are its tables').
    if str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper() not in GREY:
        return False
    try:
        slope = float(str(ds.get("RescaleSlope", "1")).split("\\")[0] or 1)
        intercept = float(str(ds.get("RescaleIntercept", "0")).split("\\")[0] or 0)
    except ValueError:
        return False
    values = frame.astype(np.float64) * slope + intercept
    return bool(np.isfinite(values).all() and values.min() < values.max())


@settings(max_examples=500, **_SETTINGS)
@given(item=images(), option=options)
def test_render_frame_gives_a_valid_image_or_unsupported_image(item: Image, option: RenderOptions) -> None:
    RUNS["render_frame"] += 1
    ds = pydicom.dcmread(BytesIO(item.data))
    try:
        frames = _decoded_frames(ds)
    except Exception as exc:  # pydicom can not decode it: niffler-png reports "decode-error"
        event(f"pydicom refuses to decode: {type(exc).__name__}")
        return
    for index, frame in enumerate(frames):
        try:
            image = render_frame(frame, ds, option, index)
        except UnsupportedImage as exc:
            assert str(exc)
            event("UnsupportedImage")
            return
        event(f"rendered {item.photometric or 'no photometric'} {option.voi}")
        _check_image(image, frame, item, option)
        if _full_range_expected(ds, frame, option):
            top = (1 << option.bit_depth) - 1
            assert {int(image.min()), int(image.max())} == {0, top}, (image.min(), image.max())


@settings(max_examples=120, **_SETTINGS)
@given(item=images(), option=options)
def test_converting_a_file_never_fails_unexpectedly(item: Image, option: RenderOptions) -> None:
    """End to end: Converter.convert names every failure; nothing is an "unexpected-error"."""
    RUNS["Converter.convert"] += 1
    _convert_and_check(item, option)


def _convert_and_check(item: Image, option: RenderOptions) -> None:
    home = Path(tempfile.mkdtemp(prefix="fuzz-png-"))
    try:
        (home / "in").mkdir()
        (home / "in" / "x.dcm").write_bytes(item.data)
        converter = Converter(home / "in", home / "out", Policy(DeidSettings(), b"k" * 32), option)
        result = converter.convert("x.dcm")
        event(f"result: {result.reason or 'ok'} {(result.error or '')[:50]}")
        assert result.reason != "unexpected-error", f"{result.cause}: {result.error}"
        if result.ok:
            for name in result.pngs:
                width, height, _, _ = png.Reader(filename=str(home / "out" / name)).read()
                assert (height, width) == (item.rows, item.cols)
        else:
            assert result.reason in DOCUMENTED_FAILURES and result.error, result
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- failures found (now fixed): each keeps its own test and its example ------------------------------


@settings(max_examples=60, **_SETTINGS)
@given(
    keyword=st.sampled_from(["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]),
    value=st.sampled_from(EMPTY_FIRST),
    option=options,
)
# Found by this test: a DS whose first value is empty ("\\40": pydicom reads ['', 40]) makes
# render._first raise ValueError (float('')), which niffler-png reports as "unexpected-error".
@example(keyword="RescaleIntercept", value="\\40", option=RenderOptions())
def test_a_ds_with_an_empty_first_value_is_rendered_or_unsupported(
    keyword: str, value: str, option: RenderOptions
) -> None:
    RUNS["render_frame: DS with an empty first value"] += 1
    item = _explicit(Image(b"", "MONOCHROME2", 1, 1, 1, 2, {keyword: value, "WindowWidth": "400"}))
    ds = pydicom.dcmread(BytesIO(item.data))
    (frame,) = _decoded_frames(ds)
    try:
        image = render_frame(frame, ds, option)
    except UnsupportedImage:
        return
    _check_image(image, frame, item, option)


@settings(max_examples=40, **_SETTINGS)
@given(item=images(), option=options)
# Found by this test: a PALETTE COLOR image without its lookup tables fails in pydicom's apply_color_lut
# (ValueError "No suitable Palette Color Lookup Table Module found"), not as UnsupportedImage: niffler-png
# reports it as "unexpected-error".
@example(item=Image(b"", "PALETTE COLOR", 1, 1, 1, 2, {"palette": "missing"}), option=RenderOptions())
def test_known_failures_end_to_end(item: Image, option: RenderOptions) -> None:
    """Converter.convert on the generated files including the known failures' inputs."""
    RUNS["Converter.convert with the known failures"] += 1
    if not item.data:
        item = _explicit(item)
    _convert_and_check(item, option)


def _explicit(item: Image) -> Image:
    """The file of an explicit example: a 1x2 image of 16-bit values with the given attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "1.2.3", "1.2.3.4", "FUZZ"
    ds.PhotometricInterpretation = item.photometric
    ds.SamplesPerPixel, ds.Rows, ds.Columns = 1, item.rows, item.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in item.attributes.items():
        if keyword != "palette":
            setattr(ds, keyword, value)
    ds.PixelData = np.array([[0, 100]], "<u2").tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Image(buffer.getvalue(), item.photometric, 1, 1, item.rows, item.cols, item.attributes)
