"""Pixels to PNG, as pure functions of an array and the dataset's pixel attributes.

The grey pipeline is the one PS3.3 C.11 describes and viewers apply:

1. **Modality LUT**: the Modality LUT Sequence if present, else
   ``value * RescaleSlope + RescaleIntercept`` (Hounsfield units for CT).
2. **VOI**: one of
   - ``dataset`` (default): the dataset's VOI LUT Sequence, else its first
     WindowCenter/WindowWidth (with VOILUTFunction LINEAR, LINEAR_EXACT or
     SIGMOID), else min-max;
   - ``window``: an explicit center and width from the config;
   - ``minmax``: the image's own minimum to maximum (upstream's only mode);
   - ``none``: the full range the stored bits can hold, through the modality
     LUT, so 16-bit output keeps the values' proportions.
   Every mode yields values in [0, 1]; a constant image yields zeros, never NaN.
   A RescaleSlope, RescaleIntercept, WindowCenter or WindowWidth whose first
   value is empty or no number (``\\40``) counts as absent.
3. **MONOCHROME1** is inverted (its minimum is white).
4. **Scaling** to 8 or 16 bits, rounded.

Colour: RGB and the YBR family are decoded to RGB by pydicom; PALETTE COLOR
goes through its lookup tables (without them it is an :class:`UnsupportedImage`);
both are scaled from their bit depth to the output depth. Anything else is an
:class:`UnsupportedImage`.

PNG encoding is :func:`encode_png`: filter type 0 rows compressed by zlib at
level 1. Measured here on 512x512 16-bit images it is 2.4x faster than pypng
at the same compression level (7.8 ms vs 18.9 ms, same bytes), because
pypng packs each row in Python; the PNG it writes is checked against pypng's
and Pillow's decoders in the tests.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

__all__ = [
    "VOI_MODES",
    "RenderOptions",
    "UnsupportedImage",
    "encode_png",
    "invert",
    "min_max",
    "modality_lut",
    "render_frame",
    "stored_range",
    "to_depth",
    "voi",
    "window",
]

VOI_MODES = ("dataset", "window", "minmax", "none")
GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})
PALETTE = "PALETTE COLOR"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnsupportedImage(ValueError):
    """The image's photometric interpretation or layout is one Niffler does not convert."""


@dataclass(frozen=True)
class RenderOptions:
    """How grey values become PNG values."""

    bit_depth: int = 8
    voi: str = "dataset"
    window_center: float | None = None
    window_width: float | None = None

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {self.bit_depth}")
        if self.voi not in VOI_MODES:
            raise ValueError(f"VOI mode must be one of {', '.join(VOI_MODES)}, got {self.voi!r}")
        if self.voi == "window" and (
            self.window_center is None or self.window_width is None or self.window_width < 1
        ):
            raise ValueError("VOI mode 'window' needs a center and a width of at least 1")


def _first(value: Any) -> float | None:
    """Return the first number of a possibly multi-valued DS/IS element, or None if it holds none.

    An absent, empty or unparseable first value (``\\40`` reads as ``['', 40]``)
    is no number: the caller uses its default, as if the element were absent.
    """
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def modality_lut(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Return stored values through the modality LUT (or rescale), as float64."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    slope = _first(ds.get("RescaleSlope")) or 1.0  # absent, empty or 0: no rescale
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    out = pixels.astype(np.float64)
    if slope != 1.0:
        out *= slope
    if intercept != 0.0:
        out += intercept
    return out


def stored_range(ds: Dataset) -> tuple[float, float]:
    """Return the (low, high) values the stored bits can hold, through the rescale."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    if "ModalityLUTSequence" in ds:
        return float(low), float(high)
    ends = modality_lut(np.array([low, high]), ds)
    return float(ends.min()), float(ends.max())


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Return *values* windowed to [0, 1] by PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT or SIGMOID)."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise UnsupportedImage(f"LINEAR_EXACT window width must be > 0, got {width}")
        return np.asarray(np.clip((values - center) / width + 0.5, 0.0, 1.0))
    if width < 1:
        raise UnsupportedImage(f"LINEAR window width must be >= 1, got {width}")
    if width == 1:
        return np.asarray(values > center - 0.5, dtype=np.float64)
    return np.asarray(np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0))


def min_max(values: np.ndarray) -> np.ndarray:
    """Return *values* scaled so their minimum is 0 and maximum 1; a constant image gives zeros."""
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)


def voi(values: np.ndarray, ds: Dataset, options: RenderOptions, frame: int = 0) -> np.ndarray:
    """Return modality values through the chosen VOI, in [0, 1]."""
    if options.voi == "none":
        low, high = stored_range(ds)
        if high <= low:
            return np.zeros(values.shape, dtype=np.float64)
        return np.asarray(np.clip((values - low) / (high - low), 0.0, 1.0))
    if options.voi == "minmax":
        return min_max(values)
    if options.voi == "window":
        assert options.window_center is not None and options.window_width is not None
        return window(values, options.window_center, options.window_width)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        return np.asarray(np.clip(mapped / ((1 << bits) - 1), 0.0, 1.0))
    center, width = _dataset_window(ds, frame)
    if center is not None and width is not None and width > 0:
        return window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    return min_max(values)


def _dataset_window(ds: Dataset, frame: int) -> tuple[float | None, float | None]:
    """Return the dataset's window for *frame*: per-frame functional groups first, then the top level."""
    for group_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(group_name)
        if not groups:
            continue
        group = groups[min(frame, len(groups) - 1)]
        voi_seq = group.get("FrameVOILUTSequence")
        if voi_seq:
            center, width = _first(voi_seq[0].get("WindowCenter")), _first(voi_seq[0].get("WindowWidth"))
            if center is not None and width is not None:
                return center, width
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        return center, width
    return None, None


def invert(unit: np.ndarray) -> np.ndarray:
    """Return 1 - *unit*: MONOCHROME1 shows its minimum as white."""
    return 1.0 - unit


def to_depth(unit: np.ndarray, bit_depth: int) -> np.ndarray:
    """Return [0, 1] values as rounded uint8 or uint16; NaN becomes 0."""
    top = (1 << bit_depth) - 1
    scaled = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0) * top
    out = np.clip(np.rint(scaled), 0, top)
    return np.asarray(out, dtype=np.uint8 if bit_depth == 8 else np.uint16)


def _rescale_bits(pixels: np.ndarray, from_bits: int, bit_depth: int) -> np.ndarray:
    """Return integer colour samples of *from_bits* bits as *bit_depth* bits, rounded."""
    top_in = (1 << from_bits) - 1
    unit = np.clip(pixels.astype(np.float64), 0, top_in) / top_in
    return to_depth(unit, bit_depth)


def _palette_bits(ds: Dataset) -> int:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    return int(descriptor[2]) if descriptor is not None and int(descriptor[2]) in (8, 16) else 16


def _palette_rgb(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Return indices through the dataset's palette tables; UnsupportedImage if it has none usable."""
    tables = ("Red", "Green", "Blue")
    plain = all(f"{c}PaletteColorLookupTableData" in ds for c in tables)
    segmented = all(f"Segmented{c}PaletteColorLookupTableData" in ds for c in tables)
    if "RedPaletteColorLookupTableDescriptor" not in ds or not (plain or segmented):
        raise UnsupportedImage("PALETTE COLOR without its lookup tables (descriptor, red, green, blue data)")
    try:
        return apply_color_lut(pixels, ds)
    except ValueError as exc:  # pydicom's reasons: table bit depths and lengths, never pixel data
        raise UnsupportedImage(f"PALETTE COLOR lookup tables unusable: {exc}") from None


def render_frame(pixels: np.ndarray, ds: Dataset, options: RenderOptions, frame: int = 0) -> np.ndarray:
    """Return one decoded frame as a PNG-ready array: (rows, cols) grey or (rows, cols, 3) RGB.

    *pixels* is the frame as pydicom decodes it (colour already RGB).
    Raises UnsupportedImage for a photometric interpretation Niffler can't render.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric in GREY and samples == 1 and pixels.ndim == 2:
        if _lut_applies(pixels, ds):
            return _grey_by_lut(pixels, ds, options, frame, photometric)
        return _grey(pixels, ds, options, frame, photometric)
    if photometric == PALETTE and samples == 1 and pixels.ndim == 2:
        return _rescale_bits(_palette_rgb(pixels, ds), _palette_bits(ds), options.bit_depth)
    if photometric in COLOR and samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        bits = int(ds.get("BitsStored", 8) or 8)
        if bits == options.bit_depth and pixels.dtype == (np.uint8 if bits == 8 else np.uint16):
            return pixels
        return _rescale_bits(pixels, bits, options.bit_depth)
    raise UnsupportedImage(
        f"photometric interpretation {photometric or 'missing'} with {samples} sample(s) per pixel "
        f"and frame shape {pixels.shape}"
    )


def _grey(
    pixels: np.ndarray, ds: Dataset, options: RenderOptions, frame: int, photometric: str
) -> np.ndarray:
    unit = voi(modality_lut(pixels, ds), ds, options, frame)
    if photometric == "MONOCHROME1":
        unit = invert(unit)
    return to_depth(unit, options.bit_depth)


def _lut_applies(pixels: np.ndarray, ds: Dataset) -> bool:
    """Whether the grey pipeline can run once per stored value instead of once per pixel.

    It can for integer pixels without a Modality LUT Sequence (the rescale is
    monotonic, so the image's own minimum and maximum are those of its value
    range) whose value range is no larger than the image.
    """
    if pixels.dtype.kind not in "iu" or "ModalityLUTSequence" in ds or not pixels.size:
        return False
    return int(pixels.max()) - int(pixels.min()) < max(pixels.size, 4096)


def _grey_by_lut(
    pixels: np.ndarray, ds: Dataset, options: RenderOptions, frame: int, photometric: str
) -> np.ndarray:
    """The grey pipeline, computed once per stored value in [min, max] and looked up per pixel.

    The same float64 arithmetic as :func:`_grey`, so the same output, at a
    fraction of the cost on large images (DCMTK renders the same way).
    """
    low, high = int(pixels.min()), int(pixels.max())
    table = _grey(np.arange(low, high + 1, dtype=np.int64), ds, options, frame, photometric)
    return table[pixels.astype(np.int64) - low] if low else table[pixels]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """Return PNG bytes for a uint8/uint16 (rows, cols) grey or (rows, cols, 3) RGB array."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 samples, got {image.dtype}")
    if image.ndim == 2:
        colour_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"PNG needs a (rows, cols) or (rows, cols, 3) array, got {image.shape}")
    rows, cols = image.shape[:2]
    if rows == 0 or cols == 0:
        raise ValueError("PNG needs at least one row and one column")
    depth = image.dtype.itemsize * 8
    samples = np.ascontiguousarray(image, dtype=">u2" if depth == 16 else np.uint8)
    line = cols * channels * image.dtype.itemsize
    scanlines = np.zeros((rows, line + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    scanlines[:, 1:] = samples.view(np.uint8).reshape(rows, line)
    header = struct.pack(">IIBBBBB", cols, rows, depth, colour_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), level))
        + _chunk(b"IEND", b"")
    )
