"""A generated corpus of at-risk images with identifiers drawn into their pixels, plus clean controls.

Used by the burned-in text tests and ``bench/png_scrub_throughput.py`` to
measure how well niffler-png finds and redacts text. Everything is
generated from a seed: nothing is real patient data, and the same seed gives
the same files.

At-risk images (about 60 by default), each a DICOM file:

- ``us-grey``: an ultrasound-like frame (speckle inside a sector fan with a
  bright rim, a cyst, depth ticks and a grey bar), MONOCHROME2, 8 bits;
- ``us-rgb``: the same with a colour Doppler patch, RGB;
- ``us-multi``: multi-frame ultrasound (three frames, speckle that moves);
- ``sc``: secondary captures of a screen (title bar, panels, a plot, an
  embedded image), grey or RGB;
- ``xa``: an angiography-like frame (vessels in a round field), 8 bits;
- ``es``: an endoscopy-like colour frame;
- ``ct-marked``: a CT slice whose BurnedInAnnotation is YES, with text drawn
  at the top of its value range (what the auto policy must catch by that
  attribute alone).

Each carries identifier strings (names, MRNs, birth dates, accession
numbers, institutions), drawn in one of several fonts at 10 to 24 px, in
banners, in corners and over the anatomy, light-on-dark, dark-on-light and
grey. BurnedInAnnotation is YES on some and absent on others. The controls
(``ct-control``, ``mr-control``) are 16-bit CT and MR slices with no text
and no BurnedInAnnotation.

Every :class:`DrawnText` records the box of its ink, so a judge can look
for it exactly where it was drawn, and a test can tell the pixels of drawn
text from the rest. Fonts: DejaVu from Debian's ``fonts-dejavu-core`` when
present, and Pillow's own bundled font always (so the corpus can be made
anywhere Pillow is).

:class:`TesseractJudge` is the independent reader (Tesseract, another engine
than niffler-png's detector), and :func:`evaluate_scrub` compares two
niffler-png outputs of the corpus, scrubbing off and on, into a
:class:`ScrubReport`: which strings the judge reads before, which it still
reads after, and how many pixels outside the drawn text changed.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from difflib import SequenceMatcher
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VLEndoscopicImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

__all__ = [
    "AT_RISK_KINDS",
    "CONTROL_KINDS",
    "FONT_FOLDER",
    "BurnedInCase",
    "DrawnText",
    "ScrubReport",
    "TesseractJudge",
    "evaluate_scrub",
    "generate_burnedin_corpus",
    "similarity",
]

FONT_FOLDER = Path("/usr/share/fonts/truetype/dejavu")
_DEJAVU = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
)
#: How many of each at-risk kind a corpus of 60 holds (scaled for other sizes).
AT_RISK_KINDS = {"us-grey": 16, "us-rgb": 12, "us-multi": 8, "sc": 12, "xa": 4, "es": 4, "ct-marked": 4}
CONTROL_KINDS = ("ct-control", "mr-control")
_MULTI_FRAMES = 3

_FIRST = ["JOHN", "MARIA", "WEI", "FATIMA", "OLIVER", "PRIYA", "LUCAS", "ANNA", "KENJI", "SOFIA",
          "DAVID", "AMARA", "IVAN", "CHLOE", "RAFAEL", "GRACE"]  # fmt: skip
_LAST = ["SMITH", "GARCIA", "NGUYEN", "OKAFOR", "JOHANSSON", "PATEL", "MULLER", "KOWALSKI",
         "TANAKA", "ROSSI", "BROWN", "HASSAN", "PETROV", "DUBOIS", "SILVA", "OBRIEN"]  # fmt: skip
_INSTITUTIONS = ["ST MARY MEDICAL CENTER", "NORTHSIDE GENERAL", "RIVERVIEW CLINIC",
                 "MERCY HOSPITAL", "CITY HEART INSTITUTE", "LAKESIDE IMAGING"]  # fmt: skip
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


@dataclass(frozen=True)
class DrawnText:
    """One identifier string drawn into an image: what, where (its ink's box) and in which frames."""

    text: str
    #: What the string identifies: name, mrn, birth-date, accession or institution.
    kind: str
    #: The ink's box in pixels: (left, top, right, bottom), right and bottom exclusive.
    box: tuple[int, int, int, int]
    font: str
    size: int
    #: light-on-dark, dark-on-light or grey.
    style: str
    #: banner, corner or anatomy.
    place: str
    frames: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class BurnedInCase:
    """One generated file: where it is, what kind of image, and the text drawn into it."""

    path: Path
    name: str
    kind: str
    modality: str
    rows: int
    columns: int
    frames: int
    burned_in_annotation: str | None
    texts: tuple[DrawnText, ...]

    @property
    def control(self) -> bool:
        """Whether this is a CT/MR control with no text."""
        return self.kind in CONTROL_KINDS


# --- fonts and strings -------------------------------------------------------------------------


def _fonts() -> list[tuple[str, Callable[[int], Any]]]:
    """Return (name, size -> font) for DejaVu faces found on this machine and Pillow's bundled face."""
    fonts: list[tuple[str, Callable[[int], Any]]] = []
    for name in _DEJAVU:
        path = FONT_FOLDER / name
        if path.is_file():
            fonts.append((path.stem, partial(ImageFont.truetype, str(path))))
    fonts.append(("pillow-default", ImageFont.load_default))
    return fonts


def _date_text(rng: random.Random, day: date) -> str:
    style = rng.randrange(4)
    if style == 0:
        return day.strftime("%Y-%m-%d")
    if style == 1:
        return day.strftime("%m/%d/%Y")
    if style == 2:
        return day.strftime("%d.%m.%Y")
    return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}"


def _identifiers(rng: random.Random) -> list[tuple[str, str]]:
    """Return one patient's identifier strings as (kind, text), in the styles devices print them."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    name = rng.choice([f"{last}, {first}", f"{last}^{first}", f"{first} {last}", f"{last} {first[0]}"])
    mrn = f"{rng.randrange(10**7):08d}"
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 85))
    accession = rng.choice(["A", "E", "RAD", "US"]) + f"{rng.randrange(10**7, 10**8)}"
    return [
        ("name", name),
        ("mrn", rng.choice([f"MRN {mrn}", f"ID: {mrn}", mrn])),
        ("birth-date", rng.choice(["DOB ", "DOB: ", ""]) + _date_text(rng, birth)),
        ("accession", rng.choice(["ACC ", "Acc#: ", ""]) + accession),
        ("institution", rng.choice(_INSTITUTIONS)),
    ]


# --- backgrounds -------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, rows: int, columns: int, cell: int) -> np.ndarray:
    """Return a smooth random field in [0, 1] (coarse noise, bilinearly upsampled)."""
    coarse = rng.random((rows // cell + 2, columns // cell + 2)).astype(np.float32)
    image = Image.fromarray(coarse).resize((columns, rows), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _fan(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the sector fan's mask, its depth (0..1) and a mask of its bright rim."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    apex_x, apex_y = columns / 2.0, rows * 0.08
    radius = np.hypot(xx - apex_x, yy - apex_y)
    angle = np.arctan2(xx - apex_x, yy - apex_y)
    near, far, half = rows * 0.05, rows * 0.88, np.deg2rad(36)
    inside = (radius >= near) & (radius <= far) & (np.abs(angle) <= half)
    rim = inside & ((far - radius < 3) | (half - np.abs(angle) < 0.006))
    depth = np.clip((radius - near) / (far - near), 0, 1)
    return inside, depth, rim


def _ultrasound(rng: np.random.Generator, rows: int, columns: int, phase: int = 0) -> np.ndarray:
    """Return an ultrasound-like grey frame in 0..255 (float): speckle in a fan, bright rim, a cyst."""
    inside, depth, rim = _fan(rows, columns)
    tissue = 0.35 + 0.65 * _smooth(rng, rows, columns, 48)
    speckle = rng.rayleigh(0.5, size=(rows, columns)).astype(np.float32)
    image = 150.0 * tissue * speckle * (1.0 - 0.55 * depth)
    yy, xx = np.mgrid[0:rows, 0:columns]
    cy, cx = rows * (0.45 + 0.02 * phase), columns * (0.45 + 0.03 * rng.random())
    cyst = ((yy - cy) / (rows * 0.09)) ** 2 + ((xx - cx) / (columns * 0.07)) ** 2 < 1
    image[cyst] *= 0.12
    image = np.where(inside, image, 0.0)
    image[rim] = 235.0
    for tick in range(8):  # depth ticks down the right of the fan
        y = int(rows * (0.12 + tick * 0.1))
        image[y : y + 2, int(columns * 0.86) : int(columns * 0.86) + 5] = 200.0
    bar_top, bar_left = int(rows * 0.3), int(columns * 0.93)
    bar = np.linspace(255, 0, int(rows * 0.4))[:, None]
    image[bar_top : bar_top + bar.shape[0], bar_left : bar_left + 8] = bar
    return np.clip(image, 0, 255)


def _doppler(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """Return RGB: *grey* with a red/blue colour Doppler patch inside the fan."""
    rows, columns = grey.shape
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    inside, _, _ = _fan(rows, columns)
    top, left = int(rows * 0.35), int(columns * 0.4)
    flow = _smooth(rng, rows, columns, 24)
    patch = np.zeros((rows, columns), dtype=bool)
    patch[top : top + rows // 5, left : left + columns // 5] = True
    patch &= inside
    towards = patch & (flow > 0.55)
    away = patch & (flow < 0.45)
    rgb[towards] = np.stack([200 + 55 * flow[towards], 40 * flow[towards], 20 + 0 * flow[towards]], axis=1)
    rgb[away] = np.stack([10 + 0 * flow[away], 60 * flow[away], 150 + 100 * (1 - flow[away])], axis=1)
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.float32)


def _screen(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Return a screen-capture-like grey frame: light UI, dark title bar, panels, a plot, an image."""
    image = np.full((rows, columns), 205.0, dtype=np.float32)
    image[: int(rows * 0.07)] = 45.0
    image[int(rows * 0.1) : int(rows * 0.55), int(columns * 0.04) : int(columns * 0.48)] = 245.0
    top, left = int(rows * 0.6), int(columns * 0.04)
    height, width = int(rows * 0.3), int(columns * 0.44)
    image[top : top + height, left : left + width] = 250.0
    xs = np.arange(width)
    ys = (height / 2 + height / 3 * np.sin(xs / width * 6.0 + rng.random() * 3)).astype(int)
    for dy in (0, 1):
        image[np.clip(top + ys + dy, top, top + height - 1), left + xs] = 30.0
    inner_top, inner_left = int(rows * 0.12), int(columns * 0.55)
    inner = _ultrasound(rng, int(rows * 0.55), int(columns * 0.4))
    image[inner_top : inner_top + inner.shape[0], inner_left : inner_left + inner.shape[1]] = inner
    return image


def _angiography(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Return an angiography-like grey frame: a round field, noise and dark branching vessels."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    field = np.hypot(yy - rows / 2, xx - columns / 2) < min(rows, columns) * 0.46
    image = 150 + 50 * _smooth(rng, rows, columns, 64) + rng.normal(0, 6, (rows, columns))
    for _ in range(7):
        x0, y0 = rng.uniform(0.3, 0.7) * columns, rng.uniform(0.2, 0.4) * rows
        angle, width = rng.uniform(0.3, 2.8), rng.uniform(2, 6)
        for step in range(int(rows * 0.5)):
            angle += rng.normal(0, 0.05)
            x0, y0 = x0 + np.cos(angle), y0 + np.sin(angle)
            ya, xa = int(y0), int(x0)
            if not (0 <= ya < rows and 0 <= xa < columns):
                break
            r = max(1, int(width * (1 - step / rows)))
            image[max(0, ya - r) : ya + r, max(0, xa - r) : xa + r] = 60
    return np.clip(np.where(field, image, 0.0), 0, 255)


def _endoscopy(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """Return an endoscopy-like RGB frame: a pink, shaded round view on black."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    radius = np.hypot(yy - rows / 2, xx - columns * 0.55) / (rows * 0.47)
    shade = np.clip(1.1 - radius, 0, 1) * (0.6 + 0.4 * _smooth(rng, rows, columns, 40))
    rgb = np.stack([235 * shade, 120 * shade, 115 * shade], axis=2)
    rgb[radius > 1] = 0
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.float32)


def _ct_slice(rng: np.random.Generator, size: int, mr: bool) -> np.ndarray:
    """Return a body-like slice in stored values (CT: HU + 1024; MR: arbitrary units)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    body = ((yy - size / 2) / (size * 0.36)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    across = (np.abs(xx - size / 2) - size * 0.18) / (size * 0.12)
    lungs = ((yy - size * 0.48) / (size * 0.2)) ** 2 + across**2 < 1
    if mr:
        image = np.where(body, 600 + 300 * _smooth(rng, size, size, 32), 5.0)
        image = np.where(lungs, 40.0, image) + rng.normal(0, 12, (size, size))
        return np.asarray(np.clip(image, 0, 4095), dtype=np.float32)
    hu = np.where(body, 40 + 30 * _smooth(rng, size, size, 32), -1000.0)
    hu = np.where(lungs, -850.0, hu) + rng.normal(0, 15, (size, size))
    return np.asarray(np.clip(hu + 1024, 0, 4095), dtype=np.float32)


# --- drawing -----------------------------------------------------------------------------------


@dataclass
class _Canvas:
    """A frame being drawn on (float, grey or RGB) and the boxes already taken."""

    pixels: np.ndarray
    taken: list[tuple[int, int, int, int]]

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap
        for o in others
    )


def _ink_box(font: Any, text: str, x: int, y: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((x, y), text, font=font)
    return int(left), int(top), int(right), int(bottom)


def _place(
    rng: random.Random, canvas: _Canvas, font: Any, text: str, place: str
) -> tuple[int, int, tuple[int, int, int, int]] | None:
    """Return (x, y, ink box) for *text* at a free spot of kind *place*, or None if none is free."""
    width, height = _ink_box(font, text, 0, 0)[2:]
    rows, columns = canvas.rows, canvas.columns
    for _ in range(60):
        if place == "banner":
            x, y = rng.randrange(4, max(5, columns - width - 4)), rng.randrange(2, max(3, int(rows * 0.1)))
        elif place == "corner":
            left = rng.random() < 0.5
            top = rng.random() < 0.6
            x = rng.randrange(3, 20) if left else columns - width - rng.randrange(12, 30)
            y = (
                rng.randrange(int(rows * 0.1), int(rows * 0.3))
                if top
                else rng.randrange(int(rows * 0.8), max(int(rows * 0.8) + 1, rows - height - 4))
            )
        else:  # over the anatomy, in the middle of the image
            x = rng.randrange(int(columns * 0.25), max(int(columns * 0.25) + 1, int(columns * 0.75) - width))
            y = rng.randrange(int(rows * 0.35), int(rows * 0.7))
        box = _ink_box(font, text, x, y)
        if box[0] < 1 or box[1] < 1 or box[2] >= columns - 1 or box[3] >= rows - 1:
            continue
        if not _overlaps(box, canvas.taken, 6):
            return x, y, box
    return None


def _colours(
    rng: random.Random, style: str, colour: bool
) -> tuple[float | tuple[float, ...], float | tuple[float, ...] | None]:
    """Return (text colour, backdrop colour or None) of a style, grey values or RGB triples."""
    if style == "light-on-dark":
        ink: Any = rng.choice([255.0, 235.0])
        if colour:
            ink = rng.choice([(255.0, 255.0, 255.0), (255.0, 230.0, 0.0), (0.0, 235.0, 235.0),
                              (120.0, 255.0, 120.0)])  # fmt: skip
        return ink, (0.0, 0.0, 0.0) if colour else 0.0
    if style == "dark-on-light":
        return ((0.0, 0.0, 0.0) if colour else 0.0), ((225.0, 225.0, 225.0) if colour else 225.0)
    grey = rng.choice([140.0, 165.0])
    return ((grey, grey, grey) if colour else grey), None


def _draw_texts(
    rng: random.Random, canvases: list[_Canvas], fonts: list[tuple[str, Callable[[int], Any]]],
    identifiers: list[tuple[str, str]], count: int, colour: bool, top_value: float = 255.0,
) -> list[DrawnText]:  # fmt: skip
    """Draw *count* of *identifiers* into every canvas (the same place in each); return what was drawn."""
    drawn: list[DrawnText] = []
    first = canvases[0]
    places = ["banner", "corner", "corner", "anatomy"]
    band = rng.choice([None, "light-on-dark", "dark-on-light"])
    if band is not None:  # a full-width banner across the top, as ultrasound and capture screens have
        _, band_colour = _colours(rng, band, colour)
        for canvas in canvases:
            canvas.pixels[: int(canvas.rows * 0.1) + 30] = np.asarray(band_colour, dtype=np.float32) * (
                top_value / 255.0
            )
    for kind, text in rng.sample(identifiers, count):
        font_name, make_font = rng.choice(fonts)
        size = rng.choice([10, 12, 13, 14, 16, 18, 20, 24])
        font = make_font(size)
        place = rng.choice(places)
        style = rng.choice(["light-on-dark", "light-on-dark", "dark-on-light", "grey"])
        spot = _place(rng, first, font, text, place)
        if spot is None:
            continue
        x, y, box = spot
        if place == "banner" and band is not None:
            style = band
            ink, _ = _colours(rng, style, colour)
            backdrop = None
        else:
            ink, backdrop = _colours(rng, style, colour)
        if top_value != 255.0:  # grey values of a deeper image: the same shades, scaled
            ink = float(np.max(ink)) * top_value / 255.0
            backdrop = None if backdrop is None else float(np.max(backdrop)) * top_value / 255.0
        for canvas in canvases:
            _stamp(canvas, font, text, x, y, box, ink, backdrop)
        first.taken.append(box)
        drawn.append(DrawnText(text, kind, box, font_name, size, style, place, tuple(range(len(canvases)))))
    return drawn


def _stamp(
    canvas: _Canvas, font: Any, text: str, x: int, y: int, box: tuple[int, int, int, int],
    ink: Any, backdrop: Any,
) -> None:  # fmt: skip
    """Draw *text* anti-aliased into the float canvas, on a flat backdrop (a label box) if given."""
    if backdrop is not None:
        pad = 3
        canvas.pixels[max(0, box[1] - pad) : box[3] + pad, max(0, box[0] - pad) : box[2] + pad] = backdrop
    alpha_image = Image.new("L", (canvas.columns, canvas.rows), 0)
    ImageDraw.Draw(alpha_image).text((x, y), text, fill=255, font=font)
    alpha = np.asarray(alpha_image, dtype=np.float32) / 255.0
    if canvas.pixels.ndim == 3:
        alpha = alpha[:, :, None]
    canvas.pixels[:] = canvas.pixels * (1 - alpha) + np.asarray(ink, dtype=np.float32) * alpha


# --- DICOM -------------------------------------------------------------------------------------


def _dataset(sop_class: str, modality: str, identifiers: dict[str, str], seed: int, index: int) -> Dataset:
    """Return a dataset with file meta and PHI-bearing headers that match the drawn identifiers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_uid = generate_uid(entropy_srcs=["burnedin", str(seed), str(index)])
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["burnedin-study", str(seed), str(index // 4)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["burnedin-series", str(seed), str(index // 2)])
    ds.StudyDate = "20240117"
    ds.StudyTime = "101500"
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = {"US": "Sono 5", "XA": "Angio 3", "ES": "Scope 2"}.get(modality, "Imager 9000")
    ds.InstitutionName = identifiers.get("institution", "GENERAL HOSPITAL")
    ds.PatientName = identifiers.get("name", "DOE^JANE").replace(", ", "^").replace(" ", "^")
    ds.PatientID = "".join(ch for ch in identifiers.get("mrn", "0") if ch.isdigit())
    ds.PatientBirthDate = "19610314"
    ds.AccessionNumber = identifiers.get("accession", "A0")[-16:].split(" ")[-1]
    ds.SeriesNumber = 1 + index // 2
    ds.InstanceNumber = 1 + index
    return ds


def _set_pixels(ds: Dataset, frames: list[np.ndarray], bits: int = 8) -> None:
    first = frames[0]
    ds.Rows, ds.Columns = int(first.shape[0]), int(first.shape[1])
    ds.BitsAllocated = bits
    ds.BitsStored = 8 if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if first.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    dtype = np.uint8 if bits == 8 else np.uint16
    stack = np.stack([np.clip(np.rint(f), 0, (1 << int(ds.BitsStored)) - 1).astype(dtype) for f in frames])
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
        ds.FrameTime = "33.3"
        ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.PixelData = stack.tobytes()


def _kind_plan(at_risk: int) -> list[str]:
    """Return the kinds of *at_risk* images, in the proportions of :data:`AT_RISK_KINDS`."""
    total = sum(AT_RISK_KINDS.values())
    plan: list[str] = []
    for kind, share in AT_RISK_KINDS.items():
        plan += [kind] * max(1, round(at_risk * share / total))
    return plan[:at_risk] if len(plan) >= at_risk else plan + ["us-grey"] * (at_risk - len(plan))


def generate_burnedin_corpus(
    folder: str | Path, *, at_risk: int = 60, controls: int = 6, seed: int = 19
) -> list[BurnedInCase]:
    """Write *at_risk* images with burned-in identifiers and *controls* CT/MR slices into *folder*.

    Returns one :class:`BurnedInCase` per file, in the order written; the same
    *seed* gives the same files.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    fonts = _fonts()
    cases: list[BurnedInCase] = []
    plan = _kind_plan(at_risk) + [CONTROL_KINDS[i % 2] for i in range(controls)]
    for index, kind in enumerate(plan):
        pixel_rng = np.random.default_rng([seed, index])
        identifiers = _identifiers(rng)
        case_name = f"{kind}-{index:03d}"
        marked = rng.random() < 0.5
        texts: list[DrawnText] = []
        bits = 8
        colour = kind in ("us-rgb", "es") or (kind == "sc" and rng.random() < 0.5)
        count = rng.randint(3, 5)
        if kind in ("us-grey", "us-rgb", "us-multi"):
            rows, columns = rng.choice([(480, 640), (600, 800), (480, 640)])
            frames = _MULTI_FRAMES if kind == "us-multi" else 1
            sop = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
            modality = "US"
            greys = [_ultrasound(pixel_rng, rows, columns, phase) for phase in range(frames)]
            images = [_doppler(pixel_rng, g) for g in greys] if colour else greys
        elif kind == "sc":
            rows, columns, frames, sop, modality = 600, 800, 1, SecondaryCaptureImageStorage, "OT"
            grey = _screen(pixel_rng, rows, columns)
            images = [np.repeat(grey[:, :, None], 3, axis=2) if colour else grey]
        elif kind == "xa":
            rows, columns, frames, sop, modality = 512, 512, 1, XRayAngiographicImageStorage, "XA"
            images = [_angiography(pixel_rng, rows, columns)]
        elif kind == "es":
            rows, columns, frames, sop, modality = 480, 640, 1, VLEndoscopicImageStorage, "ES"
            images = [_endoscopy(pixel_rng, rows, columns)]
        else:  # CT/MR, with text (ct-marked) or without (controls)
            rows = columns = 512
            frames, bits, marked = 1, 16, kind == "ct-marked"
            mr = kind == "mr-control"
            sop, modality = (MRImageStorage, "MR") if mr else (CTImageStorage, "CT")
            images = [_ct_slice(pixel_rng, rows, mr)]
            count = rng.randint(3, 4) if kind == "ct-marked" else 0
        canvases = [_Canvas(image.astype(np.float32), []) for image in images]
        if count:
            top_value = 4095.0 if bits == 16 else 255.0
            texts = _draw_texts(rng, canvases, fonts, identifiers, count, colour, top_value)
        ds = _dataset(sop, modality, dict(identifiers), seed, index)
        if marked:
            ds.BurnedInAnnotation = "YES"
        if bits == 16:
            ds.RescaleIntercept = "-1024" if modality == "CT" else "0"
            ds.RescaleSlope = "1"
            ds.WindowCenter = "40" if modality == "CT" else "700"
            ds.WindowWidth = "400" if modality == "CT" else "1200"
            if kind == "ct-marked":
                ds.WindowCenter, ds.WindowWidth = "1000", "3000"
        _set_pixels(ds, [c.pixels for c in canvases], bits)
        path = out / f"{case_name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        cases.append(
            BurnedInCase(
                path, case_name, kind, modality, rows, columns, frames,
                "YES" if marked else None, tuple(texts),
            )
        )  # fmt: skip
    return cases


# --- the judge ---------------------------------------------------------------------------------

_TESSDATA = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata")


def _normal(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def similarity(expected: str, read: str) -> float:
    """Return how well *read* contains *expected* (0..1): the best ratio over windows of *read*.

    Both are compared upper-case, letters and digits only, so "SMITH, JOHN"
    read as "SMITH JOHN" is a perfect match.
    """
    want, got = _normal(expected), _normal(read)
    if not want or not got:
        return 0.0
    best = 0.0
    for width in range(max(1, len(want) - 2), len(want) + 3):
        for start in range(max(1, len(got) - width + 1)):
            best = max(best, SequenceMatcher(None, want, got[start : start + width]).ratio())
    return best


class TesseractJudge:
    """An independent reader of drawn strings: Tesseract's LSTM engine, one text line at a time.

    Independent of niffler-png's detector (another engine, another model):
    it reads the region where a string was drawn, upscaled so the text is
    about 40 pixels high, in several views (two crop margins, as drawn and
    inverted, and binarised at its Otsu threshold: Tesseract's line mode
    reads a string in one and returns nothing in another), and says whether
    the string is in what it read. A string is *readable* when the whole of
    it matches at :data:`READABLE` or better, or (with *words*, for outputs,
    where a partial leak counts) any of its words of four or more characters
    is read exactly. Needs ``tesserocr`` and Debian's ``tesseract-ocr-eng``.
    """

    READABLE = 0.8

    def __init__(self, tessdata: str | None = None) -> None:
        import tesserocr

        folder = (
            tessdata
            or os.environ.get("TESSDATA_PREFIX")
            or next((p for p in _TESSDATA if Path(p, "eng.traineddata").is_file()), _TESSDATA[0])
        )
        self._api = tesserocr.PyTessBaseAPI(path=folder.rstrip("/") + "/", lang="eng",
                                            psm=tesserocr.PSM.SINGLE_LINE)  # fmt: skip

    def views(self, image: np.ndarray, box: tuple[int, int, int, int]) -> Iterator[Image.Image]:
        """Yield the pictures of *box* in a rendered frame that the judge reads, one at a time."""
        grey = image if image.ndim == 2 else (image[:, :, :3].astype(np.float32) @ [0.299, 0.587, 0.114])
        grey = np.asarray(grey, dtype=np.float32)
        if image.dtype == np.uint16:
            grey = grey / 257.0
        left, top, right, bottom = box
        height = max(1, bottom - top)
        scale = max(1.0, 40.0 / height)
        for pad in (3 + height // 6, 4 + height // 2):
            crop = grey[max(0, top - pad) : bottom + pad, max(0, left - pad) : right + pad]
            picture = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8))
            if scale > 1:
                size = (round(picture.width * scale), round(picture.height * scale))
                picture = picture.resize(size, Image.Resampling.LANCZOS)
            pixels = np.asarray(picture)
            yield picture
            yield Image.fromarray(255 - pixels)
            binary = (pixels > _otsu(pixels)).astype(np.uint8) * 255
            yield Image.fromarray(binary if binary.mean() > 127 else 255 - binary)

    def read(self, image: np.ndarray, box: tuple[int, int, int, int]) -> Iterator[str]:
        """Yield what Tesseract reads in each view of *box*."""
        for picture in self.views(image, box):
            self._api.SetImage(picture)
            yield self._api.GetUTF8Text().strip()

    def page_words(self, image: np.ndarray) -> set[str]:
        """Return the words (4+ letters and digits, one a letter, upper-case) read anywhere in *image*.

        Tesseract's sparse-text mode over the whole frame at twice its size, as
        drawn and inverted: for images whose text was not drawn by the corpus.
        """
        import tesserocr

        grey = image if image.ndim == 2 else (image[:, :, :3].astype(np.float32) @ [0.299, 0.587, 0.114])
        grey = np.asarray(grey, dtype=np.float32) / (257.0 if image.dtype == np.uint16 else 1.0)
        picture = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
        picture = picture.resize((picture.width * 2, picture.height * 2), Image.Resampling.LANCZOS)
        words: set[str] = set()
        self._api.SetPageSegMode(tesserocr.PSM.SPARSE_TEXT)
        try:
            for candidate in (picture, Image.fromarray(255 - np.asarray(picture))):
                self._api.SetImage(candidate)
                for word in self._api.GetUTF8Text().split():
                    token = _normal(word)
                    if len(token) >= 4 and any(ch.isalpha() for ch in token):
                        words.add(token)
        finally:
            self._api.SetPageSegMode(tesserocr.PSM.SINGLE_LINE)
        return words

    def reads(self, image: np.ndarray, drawn: DrawnText, *, words: bool = False) -> bool:
        """Whether the judge reads *drawn* in *image*; with *words*, any word of 4+ characters counts."""
        tokens = [_normal(t) for t in drawn.text.replace("^", " ").replace(",", " ").split()]
        tokens = [t for t in tokens if len(t) >= 4] if words else []
        for text in self.read(image, drawn.box):
            if similarity(drawn.text, text) >= self.READABLE or any(t in _normal(text) for t in tokens):
                return True
        return False


def _otsu(pixels: np.ndarray) -> float:
    """Return the Otsu threshold of 8-bit *pixels* (the split that best separates two classes)."""
    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    weights = np.cumsum(counts)
    means = np.cumsum(counts * np.arange(256))
    total, grand = weights[-1], means[-1]
    between = (grand * weights - means * total) ** 2 / np.maximum(weights * (total - weights), 1e-9)
    return float(np.argmax(between))


# --- measuring a run ---------------------------------------------------------------------------


@dataclass
class ScrubReport:
    """How niffler-png's scrubbed output compares with its output with scrubbing off, by the judge."""

    #: (string, frame) pairs drawn into at-risk images.
    strings: int = 0
    #: Of those, the ones the judge reads in the original (scrubbing off) PNG: the denominator.
    readable: int = 0
    #: Readable in the original and no longer readable (nor any word of it) in the scrubbed PNG.
    unreadable_after: int = 0
    #: What the judge could not read in the original: (case, kind, size, style, place), no text.
    excluded: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    #: What the judge still reads after scrubbing: (case, kind, size, style, place).
    leaks: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    #: Pixels outside the drawn text's boxes: changed by scrubbing, and in all (at-risk images).
    changed_outside: int = 0
    pixels_outside: int = 0
    #: Per at-risk PNG: the share of its pixels outside the drawn text that changed.
    changed_shares: list[float] = field(default_factory=list)
    #: Controls whose scrubbed PNGs differ from the unscrubbed ones (should be none in auto).
    controls_changed: list[str] = field(default_factory=list)
    controls: int = 0

    @property
    def recall(self) -> float:
        """Share of the strings readable in the originals that are unreadable in the outputs."""
        return self.unreadable_after / self.readable if self.readable else 0.0

    @property
    def changed_share(self) -> float:
        """Share of the pixels outside the drawn text that scrubbing changed, over all at-risk PNGs."""
        return self.changed_outside / self.pixels_outside if self.pixels_outside else 0.0

    def describe(self) -> str:
        """Return the figures as a few lines."""
        shares = sorted(self.changed_shares) or [0.0]
        return "\n".join([
            f"strings drawn (string x frame): {self.strings}; readable by the judge in the originals: "
            f"{self.readable}; not readable there (excluded): {len(self.excluded)}",
            f"unreadable after scrubbing: {self.unreadable_after} of {self.readable} = {self.recall:.2%}"
            f" ({len(self.leaks)} still readable)",
            f"pixels outside the drawn text changed: {self.changed_share:.2%} over all at-risk images "
            f"(per image: median {shares[len(shares) // 2]:.2%}, max {shares[-1]:.2%})",
        ] + ([
            f"controls (CT/MR) pixel-identical to scrubbing off: {self.controls - len(self.controls_changed)}"
            f" of {self.controls}"
        ] if self.controls else []))  # fmt: skip


def _pngs_by_name(output: Path) -> dict[str, list[Path]]:
    """Return each converted file's PNGs (frame order), by the DICOM file's name, from mapping.csv."""
    found: dict[str, list[Path]] = {}
    with open(output / "mapping.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["png_path"]:
                found.setdefault(Path(row["dicom_path"]).name, []).append(output / row["png_path"])
    return found


def evaluate_scrub(
    cases: Sequence[BurnedInCase], unscrubbed: Path, scrubbed: Path, judge: TesseractJudge
) -> ScrubReport:
    """Compare two niffler-png outputs of the corpus (scrubbing off, and on) string by string."""
    report = ScrubReport()
    before_pngs, after_pngs = _pngs_by_name(unscrubbed), _pngs_by_name(scrubbed)
    for case in cases:
        before_list, after_list = before_pngs[case.path.name], after_pngs[case.path.name]
        if not len(before_list) == len(after_list) == case.frames:
            counts = f"{len(before_list)} and {len(after_list)} PNG(s)"
            raise ValueError(f"{case.name}: {case.frames} frame(s) but {counts}")
        for frame, (before_png, after_png) in enumerate(zip(before_list, after_list, strict=True)):
            before, after = np.asarray(Image.open(before_png)), np.asarray(Image.open(after_png))
            changed = before != after
            if changed.ndim == 3:
                changed = changed.any(axis=2)
            if case.control:
                report.controls += frame == 0
                if changed.any() and case.name not in report.controls_changed:
                    report.controls_changed.append(case.name)
                continue
            drawn = np.zeros(changed.shape, dtype=bool)
            for text in case.texts:
                left, top, right, bottom = text.box
                drawn[top:bottom, left:right] = True
            outside = int((~drawn).sum())
            report.changed_outside += int((changed & ~drawn).sum())
            report.pixels_outside += outside
            report.changed_shares.append(float((changed & ~drawn).sum()) / max(1, outside))
            for text in case.texts:
                if frame not in text.frames:
                    continue
                report.strings += 1
                label = (case.name, text.kind, text.size, text.style, text.place)
                if not judge.reads(before, text):
                    report.excluded.append(label)
                elif judge.reads(after, text, words=True):
                    report.readable += 1
                    report.leaks.append(label)
                else:
                    report.readable += 1
                    report.unreadable_after += 1
    return report
